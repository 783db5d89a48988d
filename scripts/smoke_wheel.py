"""Uses an installed rlhf_fast as a user would, then runs the kernel smoke set against it.

    PYTHON scripts/smoke_wheel.py VERSION [pytest options]

PYTHON is the interpreter of the environment the wheel (or sdist) was installed into,
with numpy, pytest and hypothesis beside it; VERSION is the one Cargo.toml gives.
Checked: the package imports from that environment and not from this checkout; its
``__version__``, the installed metadata and VERSION agree; the labelling page's files
are in it; then the property tests of every kernel family (GAE, KL shaping,
whitening, group advantages, batching, bad input) run against it under the project's
pytest settings (warnings are errors).
"""

from __future__ import annotations

import importlib.metadata
import os
import sys
import tempfile
from importlib import resources
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SMOKE_SET = [
    "tests/test_gae.py",
    "tests/test_kl.py",
    "tests/test_whiten.py",
    "tests/test_group_advantages.py",
    "tests/test_batching.py",
    "tests/test_bad_input.py",
]


def main() -> int:
    expected, pytest_args = sys.argv[1], sys.argv[2:]
    sys.path = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "python"]

    import numpy as np
    import pytest
    from packaging.version import Version

    import rlhf_fast
    from rlhf_fast import _native

    where = Path(rlhf_fast.__file__).resolve()
    if ROOT / "python" in where.parents:
        sys.exit(f"error: rlhf_fast was imported from the checkout ({where}), not the installed package")
    installed = importlib.metadata.version("rlhf_fast")
    if not Version(rlhf_fast.__version__) == Version(installed) == Version(expected):
        sys.exit(
            f"error: versions disagree: rlhf_fast.__version__ {rlhf_fast.__version__}, "
            f"installed metadata {installed}, Cargo.toml {expected}"
        )
    page = resources.files("rlhf_fast.label") / "static"
    for name in ("index.html", "stats.html", "app.js", "stats.js", "style.css"):
        if not (page / name).is_file():
            sys.exit(f"error: rlhf_fast/label/static/{name} is missing from the installed package")
    rewards = np.array([[0.0, 1.0]], dtype=np.float32)
    adv, _ = rlhf_fast.gae(rewards, np.zeros_like(rewards), np.ones((1, 2), dtype=bool), gamma=1.0, lam=1.0)
    assert np.allclose(adv, [[1.0, 1.0]]), adv
    print(f"rlhf_fast {rlhf_fast.__version__} ({_native.__file__}) imports; running the smoke set", flush=True)

    # Run from an empty directory so nothing but the tests and conftest.py is importable
    # from the checkout; the project's pytest settings come from pyproject.toml.
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        return pytest.main(
            ["-c", str(ROOT / "pyproject.toml"), "--rootdir", str(ROOT), "-p", "no:cacheprovider", "-q",
             *pytest_args, *(str(ROOT / t) for t in SMOKE_SET)]
        )


if __name__ == "__main__":
    sys.exit(main())
