#!/usr/bin/env bash
# Set up, then run the test suite (tests needing ../shared/assets skip cleanly when it is absent).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec "${PYTHON:-python3}" -m pytest -q "$@"
