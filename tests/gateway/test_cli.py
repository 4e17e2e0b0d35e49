"""`minimax-m1 keys` and `minimax-m1 usage` against the gateway's real database."""
from __future__ import annotations

import asyncio
import json


from minimax_m1.cli.main import main
from tests.gateway.conftest import Client


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


async def acli(capsys, *argv: str) -> tuple[int, str, str]:
    """The CLI runs its own event loop, so next to a live gateway it runs in a thread."""
    return await asyncio.to_thread(cli, capsys, *argv)


async def test_keys_create_list_revoke_through_a_live_gateway(gateway, capsys, tmp_path):
    db = ["--database", f"sqlite:///{tmp_path / 'gateway.sqlite3'}"]  # the gateway fixture's database
    code, out, err = await acli(capsys, "keys", *db, "create", "--tenant", "acme", "--name", "ci", "--json")
    assert code == 0
    created = json.loads(out)
    assert created["key"].startswith("mm1_")
    resp = await Client(gateway.port, created["key"]).generate(input="hi", max_output_tokens=2)
    assert resp.usage.output_tokens == 2

    code, out, _ = await acli(capsys, "keys", *db, "list", "--json")
    listed = {k["key_id"]: k for k in json.loads(out)}
    assert listed[created["key_id"]]["tenant"] == "acme" and listed[created["key_id"]]["revoked_at"] is None
    assert created["key"] not in out  # the secret is never shown again
    code, out, _ = await acli(capsys, "keys", *db, "list")
    assert created["key_id"] in out and "acme" in out

    assert (await acli(capsys, "keys", *db, "revoke", created["key_id"]))[0] == 0
    code, _, err = await acli(capsys, "keys", *db, "revoke", created["key_id"])
    assert code == 1 and "no active key" in err
    # The database holds only the hash.
    raw = (tmp_path / "gateway.sqlite3").read_bytes() + (tmp_path / "gateway.sqlite3-wal").read_bytes()
    assert created["key"].encode() not in raw

    code, out, _ = await acli(capsys, "usage", *db, "--json")
    (row,) = json.loads(out)
    assert (row["tenant"], row["requests"], row["input_tokens"], row["output_tokens"]) == ("acme", 1, 1, 2)
    code, out, _ = await acli(capsys, "usage", *db, "--records", "--tenant", "acme")
    assert code == 0 and "OK" in out
    code, out, _ = await acli(capsys, "usage", *db, "--since", "2000-01-01", "--until", "2000-02-01", "--json")
    assert json.loads(out) == []


def test_cli_errors_are_one_line(capsys, tmp_path):
    db = ["--database", f"sqlite:///{tmp_path / 'x.sqlite3'}"]
    code, _, err = cli(capsys, "keys", *db, "create", "--tenant", " ")
    assert code == 2 and err.startswith("error: tenant:")
    code, _, err = cli(capsys, "usage", *db, "--since", "yesterday")
    assert code == 2 and "--since: expected YYYY-MM-DD" in err
    code, _, err = cli(capsys, "keys", "--database", "mysql://x", "list")
    assert code == 1 and "cannot open database" in err
    code, _, err = cli(capsys, "keys", *db)
    assert code == 2 and "choose an action" in err


def test_keys_default_to_the_data_dir(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("MINIMAX_M1_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("MINIMAX_M1_GATEWAY_DATABASE", raising=False)
    assert cli(capsys, "keys", "create", "--tenant", "t")[0] == 0
    assert (tmp_path / "gateway.sqlite3").is_file()
