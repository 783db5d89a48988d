#!/usr/bin/env bash
# The kernels on aarch64, under qemu user-mode emulation, from an x86_64 machine:
#
# 1. the pure Rust kernel crate's tests, `cargo test -p rlhf_fast_kernels --target
#    aarch64-unknown-linux-gnu`, linked by zig (`maturin zig cc`, glibc 2.17) and run by
#    qemu against Debian's arm64 glibc;
# 2. the aarch64 manylinux2014 wheel (`scripts/build_wheels.sh aarch64`) with numpy,
#    pytest and hypothesis for aarch64, imported by Debian's arm64 Python 3.11 under qemu,
#    which then runs the kernel smoke set (scripts/smoke_wheel.py). Set AARCH64_SMOKE=0
#    to stop after step 1.
#
# Installs only qemu-user-static system-wide (apt-get). The arm64 glibc and Python are
# Debian packages unpacked into target/aarch64/sysroot by a private apt state (nothing
# else on the system changes); cargo builds into target/aarch64. Needs .venv-wheels
# (`make test-aarch64` creates it) and a Debian apt source.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
dir=$root/target/aarch64
venv=$root/.venv-wheels
triple=aarch64-unknown-linux-gnu
[ -x "$venv/bin/maturin" ] || { echo "error: $venv is missing; run 'make test-aarch64'" >&2; exit 1; }
sudo=$([ "$(id -u)" = 0 ] || echo sudo)
start=$SECONDS
mkdir -p "$dir"

# qemu
qemu=$(command -v qemu-aarch64-static || command -v qemu-aarch64 || true)
if [ -z "$qemu" ]; then
    echo "== installing qemu-user-static (apt-get)"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends qemu-user-static >/dev/null
    qemu=$(command -v qemu-aarch64-static)
fi

# An arm64 root with glibc and Python 3.11, from Debian's own packages.
sysroot=$dir/sysroot
python=$sysroot/usr/bin/python3.11
if [ ! -x "$python" ]; then
    echo "== unpacking Debian's arm64 glibc and Python 3.11 into $sysroot"
    apt_dir=$dir/apt
    mkdir -p "$apt_dir/state/lists/partial" "$apt_dir/cache/archives/partial"
    : >"$apt_dir/status"  # nothing counts as installed: apt fetches every dependency
    apt_opts=(-o APT::Architecture=arm64 -o APT::Architectures::=arm64 -o Debug::NoLocking=1
        -o Dir::State="$apt_dir/state" -o Dir::State::status="$apt_dir/status" -o Dir::Cache="$apt_dir/cache")
    apt-get "${apt_opts[@]}" update -qq
    apt-get "${apt_opts[@]}" install -qq --download-only -y --no-install-recommends \
        libc6 libgcc-s1 python3.11-minimal libpython3.11-stdlib >/dev/null
    rm -rf "$sysroot.tmp" && mkdir -p "$sysroot.tmp"
    for deb in "$apt_dir"/cache/archives/*.deb; do dpkg-deb -x "$deb" "$sysroot.tmp"; done
    rm -rf "$sysroot" && mv "$sysroot.tmp" "$sysroot"
fi
run=("$qemu" -L "$sysroot")
echo "== $("${run[@]}" "$python" -c 'import platform, sys; print(f"Python {platform.python_version()} on {platform.machine()} ({sys.executable})")') under $(basename "$qemu")"

# 1. The kernel crate's tests.
rustup target list --installed 2>/dev/null | grep -qx $triple || rustup target add $triple
linker=$dir/zig-cc
printf '#!/bin/sh\nexec "%s" zig cc -- -target aarch64-linux-gnu.2.17 "$@"\n' "$venv/bin/maturin" >"$linker"
chmod +x "$linker"
echo "== cargo test -p rlhf_fast_kernels --target $triple (under qemu)"
VIRTUAL_ENV=$venv PATH=$venv/bin:$PATH CARGO_TARGET_DIR=$dir/cargo \
    CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=$linker \
    CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="${run[*]}" \
    cargo test -p rlhf_fast_kernels --target $triple
echo "== kernel crate tests passed on aarch64 ($((SECONDS - start)) s so far)"
[ "${AARCH64_SMOKE:-1}" != 0 ] || exit 0

# 2. The aarch64 wheel in an aarch64 Python.
bash scripts/build_wheels.sh aarch64
wheel=$(ls target/wheels/rlhf_fast-*-cp39-abi3-*manylinux_2_17_aarch64.whl)
site=$dir/site
rm -rf "$site"
echo "== installing $(basename "$wheel") and the test tools for aarch64 into $site"
"$venv/bin/python" -m pip install --quiet --target "$site" --only-binary=:all: \
    --platform manylinux2014_aarch64 --python-version 3.11 --implementation cp --abi cp311 \
    "$wheel" "pytest>=8" "hypothesis>=6.100"
version=$(cargo metadata --no-deps --format-version 1 | "$venv/bin/python" -c \
    'import json, sys; print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"] == "rlhf_fast_python"))')
cd "$dir"
PYTHONPATH=$site "${run[@]}" "$python" "$root/scripts/smoke_wheel.py" "$version"
echo "== aarch64: kernel crate tests and the wheel's smoke set passed in $((SECONDS - start)) s"
