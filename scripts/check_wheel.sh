#!/usr/bin/env bash
# Installs a built distribution into a throw-away venv, as a user would, and runs
# scripts/smoke_wheel.py against it: import, versions, package data, then the
# kernel smoke set of tests/.
#
#   bash scripts/check_wheel.sh [DIST]
#
# DIST: a wheel or an sdist (an sdist is compiled by pip, so it needs cargo);
# default: the manylinux2014 wheel for this machine in target/wheels/.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
dist=${1:-}
if [ -z "$dist" ]; then
    dist=$(ls target/wheels/rlhf_fast-*-cp39-abi3-*manylinux_2_17_"$(uname -m)".whl 2>/dev/null | head -n 1 || true)
    [ -n "$dist" ] || { echo "error: no manylinux2014 $(uname -m) wheel in target/wheels; run 'make wheel'" >&2; exit 1; }
fi
dist=$(realpath "$dist")
version=$(cargo metadata --no-deps --format-version 1 --manifest-path "$root/Cargo.toml" | python3 -c \
    'import json, sys; print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"] == "rlhf_fast_python"))')
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "== installing $(basename "$dist") into a fresh venv"
python3 -m venv "$tmp/venv"
"$tmp/venv/bin/python" -m pip install --quiet --upgrade pip
"$tmp/venv/bin/python" -m pip install --quiet "$dist" "pytest>=8" "hypothesis>=6.100"
cd "$tmp"
"$tmp/venv/bin/python" "$root/scripts/smoke_wheel.py" "$version"
echo "$(basename "$dist"): smoke set passed"
