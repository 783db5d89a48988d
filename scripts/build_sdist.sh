#!/usr/bin/env bash
# Builds the source distribution into target/wheels/ and checks that it holds what
# `pip install rlhf_fast-<version>.tar.gz` needs to build anywhere Rust is
# installed: both crates, Cargo.lock (the tested dependency versions), the Python
# package with its data files, and the version Cargo.toml gives.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv-wheels
[ -x "$venv/bin/maturin" ] || { echo "error: $venv is missing; run 'make sdist'" >&2; exit 1; }
mkdir -p target/wheels
rm -f target/wheels/rlhf_fast-*.tar.gz
"$venv/bin/maturin" sdist --out target/wheels 2>&1 |
    { grep -v -e '^warning: manifest has no documentation' -e '^  |$' -e '^  = note: see https://doc.rust-lang.org/cargo/reference/manifest.html' || true; }
version=$(cargo metadata --no-deps --format-version 1 | "$venv/bin/python" -c \
    'import json, sys; print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"] == "rlhf_fast_python"))')
"$venv/bin/python" - "$version" <<'PY'
import re
import subprocess
import sys
import tarfile
from pathlib import Path

from packaging.version import Version

version = Version(sys.argv[1])
sdists = sorted(Path("target/wheels").glob("rlhf_fast-*.tar.gz"))
if len(sdists) != 1:
    sys.exit(f"error: expected one sdist in target/wheels, found {[s.name for s in sdists]}")
sdist = sdists[0]
with tarfile.open(sdist) as tar:
    names = set(tar.getnames())
    top = sdist.name[: -len(".tar.gz")]
    pkg_info = tar.extractfile(f"{top}/PKG-INFO").read().decode()
found = Version(re.search(r"^Version: (\S+)$", pkg_info, re.M)[1])
errors = []
if found != version or sdist.name != f"rlhf_fast-{version}.tar.gz":
    errors.append(f"{sdist.name}: PKG-INFO version {found}, Cargo.toml's {version}")
tracked = subprocess.run(
    ["git", "ls-files", "rust", "python/rlhf_fast"], capture_output=True, text=True, check=True
).stdout.split()
wanted = ["Cargo.toml", "Cargo.lock", "pyproject.toml", "README.md"]
wanted += [p for p in tracked if not p.endswith((".so", ".pyc"))]
missing = [p for p in wanted if f"{top}/{p}" not in names]
if missing:
    errors.append(f"{sdist.name} lacks {missing}")
if errors:
    print("\n".join(f"error: {e}" for e in errors), file=sys.stderr)
    sdist.unlink()
    sys.exit(f"error: {sdist} was refused and deleted")
print(f"{sdist}: OK (version {version}, {len(names)} files; `pip install {sdist}` builds it with cargo)")
PY
