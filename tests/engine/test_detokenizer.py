"""Incremental detokenisation: never half a UTF-8 character, stop strings across deltas."""
from __future__ import annotations

import pytest

from minimax_m1.engine.detokenizer import IncrementalDetokenizer

TEXT = "héllo wörld — 世界 🙂 ok"


def stream(tokenizer, ids, stop=()):
    detok = IncrementalDetokenizer(tokenizer.backend, [], stop)
    deltas = []
    for t in ids:
        deltas.append(detok.push(t))
        if detok.stopped:
            break
    else:
        deltas.append(detok.flush())
    return deltas, detok.stopped


def test_multibyte_characters_are_never_split(tokenizer):
    ids = tokenizer.encode(TEXT)
    assert len(ids) > len(TEXT), "the byte-level tokenizer must split characters for this test to mean anything"
    deltas, _ = stream(tokenizer, ids)
    assert "".join(deltas) == TEXT
    for d in deltas:
        assert "\ufffd" not in d
        d.encode("utf-8", errors="strict")
    assert sum(1 for d in deltas if d == "") >= 3, "bytes of a multi-byte character wait for the rest"


def test_an_incomplete_character_at_the_end_is_flushed_as_replacement(tokenizer):
    ids = tokenizer.encode("ok 世")[:-1]  # drop the last byte of the three-byte character
    deltas, _ = stream(tokenizer, ids)
    assert "".join(deltas) == "ok \ufffd"


@pytest.mark.parametrize("stop", ["wörld", "界", "o", " 🙂 o"])
def test_stop_string_ends_the_text_before_it(tokenizer, stop):
    deltas, stopped = stream(tokenizer, tokenizer.encode(TEXT), stop=("zzz", stop))
    assert stopped
    assert "".join(deltas) == TEXT[:TEXT.index(stop)]


def test_partial_stop_match_is_released_when_it_does_not_complete(tokenizer):
    deltas, stopped = stream(tokenizer, tokenizer.encode("abcabd"), stop=("abd!",))
    assert not stopped and "".join(deltas) == "abcabd"
