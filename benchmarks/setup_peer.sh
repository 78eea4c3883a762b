#!/usr/bin/env bash
# Create (or reuse) a Python 3.12 virtual environment holding the peer package heterodyne==2.0.1,
# used by benchmarks/peer_kernel.py for same-run speed comparisons with hetmpi.
# Location: $HETMPI_PEER_VENV (default /work/venv-peer). Safe to run repeatedly.
set -euo pipefail

venv="${HETMPI_PEER_VENV:-/work/venv-peer}"
peer="heterodyne==2.0.1"

is_python312() {
    "$1" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' >/dev/null 2>&1
}

# Candidates are run, not just located: a pyenv shim on PATH may exist yet fail to execute.
find_python312() {
    local candidate
    for candidate in "$(command -v python3.12 || true)" "$HOME"/.pyenv/versions/3.12*/bin/python3.12; do
        if [[ -n "$candidate" && -x "$candidate" ]] && is_python312 "$candidate"; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}

if [[ -x "$venv/bin/python" ]] && "$venv/bin/python" -c 'import heterodyne' 2>/dev/null \
    && [[ "$("$venv/bin/python" -m pip show heterodyne 2>/dev/null | sed -n 's/^Version: //p')" == "2.0.1" ]]; then
    echo "setup_peer: $venv already has $peer"
    exit 0
fi

if ! python312="$(find_python312)"; then
    echo "setup_peer: Python 3.12 not found (looked for python3.12 on PATH and" \
        "under ~/.pyenv/versions/3.12*/bin/); install Python 3.12 and retry" >&2
    exit 1
fi

if [[ ! -x "$venv/bin/python" ]]; then
    "$python312" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet "$peer"
echo "setup_peer: installed $peer into $venv ($("$venv/bin/python" --version))"
