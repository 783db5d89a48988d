"""Refuses a wheel that would not install, or not load, where its name says it does.

    python scripts/check_wheel_platform.py WHEEL ARCH [--glibc 2.17]

ARCH is ``x86_64`` or ``aarch64``. Checked, each failure named with its fix:

- the file name: ``rlhf_fast-<version>-cp39-abi3-<tags>.whl``, the version being
  ``[workspace.package] version`` in Cargo.toml, and every platform tag one of
  ``manylinux2014_<ARCH>`` / ``manylinux_2_17_<ARCH>``; the ``WHEEL`` and ``METADATA``
  files agree with it;
- every shared object in it: a 64-bit ELF for ARCH, named ``*.abi3.so``, needing no
  ``GLIBC_x.y`` symbol version newer than ``--glibc`` (each offender is listed with
  the symbols that need it);
- ``auditwheel show``: the platform tag it finds is a manylinux tag for ARCH whose
  glibc is no newer than ``--glibc``.

Needs ``auditwheel`` (which brings ``pyelftools`` and ``packaging``): the wheel
build environment, ``.venv-wheels``, has them. Exit status 1 on any failure.
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

from elftools.elf.elffile import ELFFile
from packaging.utils import parse_wheel_filename
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
ELF_MACHINE = {"x86_64": "EM_X86_64", "aarch64": "EM_AARCH64"}


@functools.cache
def cargo_version() -> Version:
    """The version of the extension crate (Cargo.toml's ``[workspace.package] version``)."""
    meta = subprocess.run(
        ["cargo", "metadata", "--no-deps", "--format-version", "1", "--manifest-path", str(ROOT / "Cargo.toml")],
        capture_output=True, text=True, check=True,
    )
    packages = json.loads(meta.stdout)["packages"]
    return Version(next(p["version"] for p in packages if p["name"] == "rlhf_fast_python"))


def glibc_needs(elf: ELFFile) -> dict[tuple[int, int], set[str]]:
    """``{(major, minor): {symbol, ...}}`` for every GLIBC_x.y version the object needs."""
    needed: dict[int, tuple[int, int]] = {}  # version index -> (major, minor)
    verneed = elf.get_section_by_name(".gnu.version_r")
    if verneed is not None:
        for _, auxiliaries in verneed.iter_versions():
            for aux in auxiliaries:
                m = re.fullmatch(r"GLIBC_(\d+)\.(\d+)(?:\.\d+)?", aux.name)
                if m:
                    needed[aux["vna_other"]] = (int(m[1]), int(m[2]))
    out: dict[tuple[int, int], set[str]] = {v: set() for v in needed.values()}
    versym = elf.get_section_by_name(".gnu.version")
    dynsym = elf.get_section_by_name(".dynsym")
    if versym is not None and dynsym is not None:
        for i, sym in enumerate(dynsym.iter_symbols()):
            index = versym.get_symbol(i)["ndx"]
            if isinstance(index, int) and (index & 0x7FFF) in needed:
                out[needed[index & 0x7FFF]].add(sym.name)
    return out


def check(wheel: Path, arch: str, glibc: tuple[int, int]) -> list[str]:
    errors: list[str] = []
    rebuild = f"rebuild it with `make wheels` (maturin --zig --compatibility manylinux2014 --target {arch}-unknown-linux-gnu)"
    allowed = {f"manylinux2014_{arch}", f"manylinux_{glibc[0]}_{glibc[1]}_{arch}"}

    # The file name and the metadata inside.
    name, version, _, tags = parse_wheel_filename(wheel.name)
    if name != "rlhf-fast":
        errors.append(f"{wheel.name}: the distribution is {name!r}, expected 'rlhf-fast'")
    if version != cargo_version():
        errors.append(
            f"{wheel.name}: version {version}, but Cargo.toml's [workspace.package] version is "
            f"{cargo_version()}; {rebuild}"
        )
    platforms = {t.platform for t in tags}
    if {(t.interpreter, t.abi) for t in tags} != {("cp39", "abi3")}:
        errors.append(f"{wheel.name}: tags {sorted(map(str, tags))}, expected cp39-abi3 only")
    if not platforms or not platforms <= allowed:
        errors.append(
            f"{wheel.name}: platform tags {sorted(platforms)}, expected only {sorted(allowed)}; {rebuild}"
        )
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        dist_info = next((n.split("/")[0] for n in names if n.endswith(".dist-info/WHEEL")), None)
        if dist_info is None:
            return [*errors, f"{wheel.name}: no *.dist-info/WHEEL inside"]
        wheel_file = z.read(f"{dist_info}/WHEEL").decode()
        inner_tags = set(re.findall(r"^Tag: (\S+)$", wheel_file, re.M))
        outer_tags = {str(t) for t in tags}
        if inner_tags != outer_tags:
            errors.append(
                f"{wheel.name}: WHEEL says {sorted(inner_tags)}, the file name {sorted(outer_tags)}"
            )
        metadata = z.read(f"{dist_info}/METADATA").decode()
        m = re.search(r"^Version: (\S+)$", metadata, re.M)
        if m is None or Version(m[1]) != version:
            errors.append(f"{wheel.name}: METADATA version {m and m[1]} differs from the file name's {version}")
        objects = [n for n in names if re.search(r"\.so(\.|$)", n)]
        if not objects:
            errors.append(f"{wheel.name}: holds no compiled extension")
        for so in objects:
            if not so.endswith(".abi3.so"):
                errors.append(f"{wheel.name}: {so} is not an abi3 extension (*.abi3.so)")
            elf = ELFFile(io.BytesIO(z.read(so)))
            if elf["e_machine"] != ELF_MACHINE[arch] or elf.elfclass != 64:
                errors.append(
                    f"{wheel.name}: {so} is a {elf.elfclass}-bit {elf['e_machine']} object, "
                    f"expected 64-bit {ELF_MACHINE[arch]} for {arch}; {rebuild}"
                )
                continue
            for v, symbols in sorted(glibc_needs(elf).items()):
                if v > glibc:
                    errors.append(
                        f"{wheel.name}: {so} needs GLIBC_{v[0]}.{v[1]} (newer than {glibc[0]}.{glibc[1]}) "
                        f"for {', '.join(sorted(symbols)) or 'a symbol'}; {rebuild}, or avoid those calls"
                    )

    # auditwheel's own verdict.
    shown = subprocess.run(
        [sys.executable, "-m", "auditwheel", "show", str(wheel)], capture_output=True, text=True
    )
    text = " ".join(shown.stdout.split())
    m = re.search(r'consistent with the following platform tag: "manylinux_(\d+)_(\d+)_(\w+)"', text)
    if shown.returncode != 0 or m is None:
        errors.append(
            f"{wheel.name}: auditwheel show found no manylinux tag "
            f"(exit {shown.returncode}): {(shown.stdout + shown.stderr).strip()}"
        )
    else:
        found = (int(m[1]), int(m[2]))
        if m[3] != arch or found > glibc:
            errors.append(
                f"{wheel.name}: auditwheel show says manylinux_{found[0]}_{found[1]}_{m[3]}, "
                f"expected at most manylinux_{glibc[0]}_{glibc[1]}_{arch}; {rebuild}"
            )
        else:
            print(f"{wheel.name}: auditwheel show: manylinux_{found[0]}_{found[1]}_{m[3]}")
    return errors


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("wheel", type=Path)
    parser.add_argument("arch", choices=sorted(ELF_MACHINE))
    parser.add_argument("--glibc", default="2.17", help="newest glibc the wheel may need (default 2.17)")
    args = parser.parse_args()
    glibc = tuple(int(x) for x in args.glibc.split("."))
    errors = check(args.wheel, args.arch, glibc)  # type: ignore[arg-type]
    for e in errors:
        print(f"error: {e}", file=sys.stderr)
    if errors:
        print(f"REFUSED: {args.wheel} is not a manylinux {args.glibc} {args.arch} wheel", file=sys.stderr)
        return 1
    print(f"{args.wheel.name}: OK (abi3, {args.arch}, glibc <= {args.glibc}, version {cargo_version()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
