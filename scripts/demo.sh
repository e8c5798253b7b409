#!/usr/bin/env bash
# Set up, then run the main job on the embedded Fashion-MNIST example; results land in out/fashion-mnist/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
repfx-deploy compress examples/fashion-mnist/model.pt \
    --recipe examples/fashion-mnist/recipe.toml --target host -o out/fashion-mnist --force "$@"
