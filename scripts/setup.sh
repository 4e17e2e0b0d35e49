#!/usr/bin/env bash
# One set-up script for the README's commands and CI. Idempotent and quick when nothing changed.
#  - system packages from Debian: redis-server, postgresql, prometheus (tests start their own
#    instances on free 127.0.0.1 ports; nothing is started here), gcc (the CPU kernels are built
#    with it on first use; without it the torch reference ops run)
#  - .venv at the repo root with `pip install -e .[dev]` (re-run only when pyproject.toml changes)
#  - with --cluster-tools: the Go-built control-plane tools, cached under ~/.cache/minimax-m1
set -euo pipefail
cd "$(dirname "$0")/.."
want_cluster_tools=0
for arg in "$@"; do [ "$arg" = "--cluster-tools" ] && want_cluster_tools=1; done

log() { echo "[setup] $*" >&2; }

# --- system packages -------------------------------------------------------------------------
missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
command -v prometheus >/dev/null || missing+=(prometheus)
command -v cc >/dev/null || missing+=(gcc libc6-dev)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    # Debian starts the default cluster/daemons on install; the tests start their own.
    (service redis-server stop; service postgresql stop; service prometheus stop) >/dev/null 2>&1 || true
  else
    log "not root or no apt-get: missing ${missing[*]}; the tests that need them will skip"
  fi
fi

# --- python environment ----------------------------------------------------------------------
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  log "creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
# Wheels are kept in a wheelhouse outside the repo, so a fresh clone (CI) installs offline from it
# instead of downloading torch again.
wheelhouse="${MINIMAX_M1_WHEELHOUSE:-$HOME/.cache/minimax-m1/wheelhouse}"
stamp=.venv/.minimax-m1-installed
want="$(cat pyproject.toml | sha256sum | cut -c1-16)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  mkdir -p "$wheelhouse"
  if ! .venv/bin/python -m pip install -q --no-index --find-links "$wheelhouse" -e ".[dev]" 2>/dev/null; then
    log "downloading dependencies into $wheelhouse (first time: about 4 GB, mostly torch)"
    .venv/bin/python -m pip download -q -d "$wheelhouse" --find-links "$wheelhouse" ".[dev]" "setuptools>=68" wheel
    rm -f "$wheelhouse"/minimax_m1-* "$wheelhouse"/minimax-m1-*
    .venv/bin/python -m pip install -q --no-index --find-links "$wheelhouse" -e ".[dev]"
  fi
  echo "$want" > "$stamp"
fi

# --- control-plane tools (slow suites only) ----------------------------------------------------
if [ "$want_cluster_tools" = 1 ] && [ -x scripts/build_cluster_tools.sh ]; then
  scripts/build_cluster_tools.sh || log "cluster tools could not be built; cluster tests will skip"
fi
