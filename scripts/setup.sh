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
# hf (transformers, gguf: pure Python wheels, no torch) lets the slicegpt and Hugging Face folder tests run.
"$PY" -m pip install --quiet --disable-pip-version-check --no-input -e ".[dev,hf]"
# Cross linkers for the aarch64 and armv7 Linux device profiles (Debian packages). Not fatal: without them only
# those profiles' compiles fail, with a message naming the package, and their tests skip.
if ! command -v aarch64-linux-gnu-g++ >/dev/null || ! command -v arm-linux-gnueabihf-g++ >/dev/null; then
    if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
            g++-aarch64-linux-gnu g++-arm-linux-gnueabihf >/dev/null; } \
            || echo "warning: could not install the ARM cross compilers; ARM Linux targets will not link" >&2
    else
        echo "note: install g++-aarch64-linux-gnu and g++-arm-linux-gnueabihf to link models for ARM boards" >&2
    fi
fi
