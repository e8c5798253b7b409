#!/usr/bin/env bash
# Install repfx-deploy and everything it needs into the current Python 3.11 (idempotent; fast when done).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if ! "$PY" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
    echo "error: repfx-deploy needs Python 3.11 (found $("$PY" --version 2>&1)). Set PYTHON=/path/to/python3.11." >&2
    exit 2
fi
# torch==2.13.0 resolves to the CPU wheel on this machine; pyproject pins it so no CUDA build is pulled.
"$PY" -m pip install --quiet --disable-pip-version-check --no-input -e ".[dev]"
