#!/usr/bin/env bash
# Set up, then run the test suite (tests needing ../shared/assets skip cleanly when it is absent).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The aarch64 emulator (qemu-user + an aarch64 Python with TVM, ~50 s the first time, cached after) runs the
# cross-compiled artifacts in tests/measure/test_rpc.py. As root (CI) it must work; otherwise those tests
# skip, saying how to fix it.
if [ "$(id -u)" = 0 ]; then
    bash scripts/setup_aarch64_emulator.sh
else
    bash scripts/setup_aarch64_emulator.sh \
        || echo "warning: no aarch64 emulator; the emulated-device tests will skip (run scripts/setup_aarch64_emulator.sh as root)" >&2
fi
PY="${PYTHON:-python3}"
# Lint, format and types of the package (settings in pyproject.toml), before the tests: each fails fast.
"$PY" -m ruff check repfx_deploy
"$PY" -m ruff format --check repfx_deploy
"$PY" -m mypy
exec "$PY" -m pytest -q "$@"
