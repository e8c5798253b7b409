#!/usr/bin/env bash
# An aarch64 Python 3.11 with the TVM 0.27 runtime, run under qemu-user, so cross-compiled aarch64 artifacts
# can be executed and checked here (tests/measure/test_rpc.py, `repfx-deploy device serve --emulate aarch64`).
#
# Idempotent: a finished root is marked with .repfx-ready (naming the package set); a rerun with the same set
# only checks qemu and exits. Needs root for `apt-get install qemu-user-static`; exits non-zero with a message
# when that is impossible. The root is built in a temporary sibling and renamed into place, so an interrupted
# run leaves nothing half-made.
#
#   root:      ${REPFX_CACHE:-$HOME/.cache/repfx-deploy}/aarch64-root
#   python:    QEMU_LD_PREFIX=<root> qemu-aarch64-static <root>/usr/bin/python3.11   (<root>/python-aarch64 does this)
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE="${REPFX_CACHE:-$HOME/.cache/repfx-deploy}"
ROOT="$CACHE/aarch64-root"
PY="${PYTHON:-python3}"
# Keep these pins equal to pyproject.toml's (apache-tvm-ffi 0.1.15 crashes; see the README).
WHEELS=(apache-tvm==0.27.0.post1 apache-tvm-ffi==0.1.14.post1 cloudpickle psutil)
# Debian arm64 packages: the interpreter, its standard library, and the C/C++ runtime the TVM wheel links.
DEBS=(python3.11-minimal libpython3.11-minimal libpython3.11-stdlib libstdc++6)
# Dependencies of those that only matter to an installed system, not to running python3.11.
SKIP='^(dpkg|tar|install-info|perl|perl-base|perl-modules-.*|libperl.*|mailcap|mime-support|media-types|readline-common)$'
STAMP="debs=${DEBS[*]} wheels=${WHEELS[*]}"

die() { echo "error: $1" >&2; echo "fix: $2" >&2; exit 1; }

started=$(date +%s)
if ! command -v qemu-aarch64-static >/dev/null; then
    [ "$(id -u)" = 0 ] || die "qemu-aarch64-static is not installed and this is not root." \
        "run as root (or: sudo apt-get install qemu-user-static), then rerun $0"
    command -v apt-get >/dev/null || die "qemu-aarch64-static is missing and there is no apt-get." \
        "install QEMU's user-mode aarch64 emulator (qemu-aarch64-static) by hand, then rerun $0"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user-static >/dev/null; } \
        || die "apt-get install qemu-user-static failed." "check the network and apt sources, then rerun $0"
fi

if [ -f "$ROOT/.repfx-ready" ] && [ "$(cat "$ROOT/.repfx-ready")" = "$STAMP" ]; then
    echo "aarch64 emulator root ready: $ROOT"
    exit 0
fi

mkdir -p "$CACHE"
WORK="$(mktemp -d "$CACHE/aarch64-root.tmp.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
NEW="$WORK/root"
mkdir -p "$NEW" "$WORK/debs" "$WORK/apt/lists/partial" "$WORK/apt/cache/archives/partial"
touch "$WORK/apt/status"
# A private apt state for arm64: the host's dpkg architectures and package lists are left alone.
APT=(-o "Dir::State::Lists=$WORK/apt/lists" -o "Dir::Cache=$WORK/apt/cache" -o "Dir::State::status=$WORK/apt/status"
     -o APT::Architecture=arm64 -o APT::Architectures=arm64 -o Debug::NoLocking=1 -o APT::Sandbox::User=root)
apt-get "${APT[@]}" update -qq || die "apt-get update for arm64 failed." "check the network and apt sources, then rerun $0"
mapfile -t PKGS < <(apt-cache "${APT[@]}" depends --recurse --no-recommends --no-suggests --no-conflicts \
    --no-breaks --no-replaces --no-enhances "${DEBS[@]}" | grep -v '^ ' | grep -v '^<' | sort -u | grep -Ev "$SKIP")
(cd "$WORK/debs" && apt-get "${APT[@]}" download "${PKGS[@]/%/:arm64}" >/dev/null) \
    || die "downloading the arm64 packages failed (${PKGS[*]})." "check the network and apt sources, then rerun $0"
for deb in "$WORK"/debs/*.deb; do dpkg -x "$deb" "$NEW"; done
[ -x "$NEW/usr/bin/python3.11" ] || die "the arm64 packages did not contain usr/bin/python3.11." "report this; the Debian package layout changed"

# Wheels for the emulated interpreter, into the dist-packages folder Debian's python3.11 searches.
"$PY" -m pip install --quiet --disable-pip-version-check --no-input --no-compile --root-user-action=ignore \
    --target "$NEW/usr/lib/python3/dist-packages" --platform manylinux2014_aarch64 --platform manylinux_2_28_aarch64 \
    --python-version 3.11 --implementation cp --abi cp311 --only-binary=:all: "${WHEELS[@]}" \
    || die "pip could not fetch the aarch64 wheels (${WHEELS[*]})." "check the network and the package index, then rerun $0"

# The interpreter as a host executable: TVM's RPC server starts worker processes with sys.executable.
cat > "$NEW/python-aarch64" <<EOF
#!/bin/sh
QEMU_LD_PREFIX='$ROOT' exec qemu-aarch64-static '$ROOT/usr/bin/python3.11' "\$@"
EOF
chmod +x "$NEW/python-aarch64"
echo "$STAMP" > "$NEW/.repfx-ready"
rm -rf "$ROOT"
mv "$NEW" "$ROOT"

# Smoke test in place (the wrapper names the final path).
"$ROOT/python-aarch64" -c 'import platform, tvm; assert platform.machine() == "aarch64"; print("emulated", platform.machine(), "tvm", tvm.__version__)' \
    || { rm -f "$ROOT/.repfx-ready"; die "the emulated python cannot import tvm." "delete $ROOT and rerun $0; if it fails again, report the output above"; }
echo "aarch64 emulator root ready: $ROOT ($(( $(date +%s) - started )) s)"
