#!/usr/bin/env bash
# Builds the abi3 release wheels for manylinux2014 (glibc 2.17), one per ARCH
# (x86_64, aarch64; default: both), into target/wheels/, linking with zig so one
# machine builds every target. Each wheel is then checked by
# scripts/check_wheel_platform.py (auditwheel show, ELF machine, glibc symbol
# versions, tags, version); a wheel that fails is deleted and the build fails.
#
#   bash scripts/build_wheels.sh [ARCH ...]
#
# Needs .venv-wheels (`make wheels` creates it from scripts/wheel-requirements.txt)
# and rustup, which fetches each target's standard library on first use.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
venv=$root/.venv-wheels
out=target/wheels
archs=("$@")
[ ${#archs[@]} -gt 0 ] || archs=(x86_64 aarch64)

[ -x "$venv/bin/maturin" ] || { echo "error: $venv is missing; run 'make wheels'" >&2; exit 1; }
export VIRTUAL_ENV=$venv PATH=$venv/bin:$PATH
# Apart from target/release, so a cross build never invalidates `make build`.
export CARGO_TARGET_DIR=$root/target/wheels-build
mkdir -p "$out"

for arch in "${archs[@]}"; do
    case $arch in
        x86_64 | aarch64) ;;
        *) echo "error: no wheel for '$arch'; choose x86_64 or aarch64" >&2; exit 1 ;;
    esac
    triple=$arch-unknown-linux-gnu
    if ! rustc --print sysroot >/dev/null || [ ! -d "$(rustc --print sysroot)/lib/rustlib/$triple/lib" ]; then
        if command -v rustup >/dev/null; then
            rustup target add "$triple"
        else
            echo "error: the Rust standard library for $triple is missing and there is no rustup to fetch it;" \
                "install Rust with rustup (https://rustup.rs), then run 'rustup target add $triple'" >&2
            exit 1
        fi
    fi
    rm -f "$out"/rlhf_fast-*-*"$arch".whl
    echo "== building the manylinux2014 $arch wheel"
    maturin build --release --quiet --zig --compatibility manylinux2014 --target "$triple" --out "$out"
    wheels=("$out"/rlhf_fast-*-*"$arch".whl)
    if [ ${#wheels[@]} -ne 1 ] || [ ! -f "${wheels[0]}" ]; then
        echo "error: expected one $arch wheel in $out, found: ${wheels[*]}" >&2
        exit 1
    fi
    if ! python scripts/check_wheel_platform.py "${wheels[0]}" "$arch"; then
        rm -f "${wheels[0]}"
        echo "error: ${wheels[0]} was refused and deleted (see above)" >&2
        exit 1
    fi
    # The check must also say no: the same wheel is not one for the other CPU.
    other=$([ "$arch" = x86_64 ] && echo aarch64 || echo x86_64)
    if python scripts/check_wheel_platform.py "${wheels[0]}" "$other" >/dev/null 2>&1; then
        echo "error: check_wheel_platform.py accepted the $arch wheel as an $other one; it checks nothing" >&2
        exit 1
    fi
done
ls -l "$out"/rlhf_fast-*.whl
