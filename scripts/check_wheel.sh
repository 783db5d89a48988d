#!/usr/bin/env bash
# Installs the newest abi3 wheel from target/wheels into a throw-away venv and uses it.
set -euo pipefail
wheel=$(ls -t target/wheels/rlhf_fast-*abi3*.whl | head -n 1)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m venv "$tmp/venv"
"$tmp/venv/bin/pip" install --quiet "$wheel"
cd "$tmp"
"$tmp/venv/bin/python" - <<'PY'
import numpy as np
import rlhf_fast
from rlhf_fast import _native

rewards = np.array([[0.0, 1.0]], dtype=np.float32)
values = np.zeros_like(rewards)
adv, ret = rlhf_fast.gae(rewards, values, np.ones_like(rewards, dtype=bool), gamma=1.0, lam=1.0)
assert np.allclose(adv, [[1.0, 1.0]]), adv
# The labelling page ships as package data, not code: check that it made it in.
from importlib import resources
page = resources.files("rlhf_fast.label") / "static"
for name in ("index.html", "stats.html", "app.js", "stats.js", "style.css"):
    assert (page / name).is_file(), f"rlhf_fast/label/static/{name} is missing from the wheel"
print(f"wheel OK: rlhf_fast {_native.__version__} from {rlhf_fast.__file__}")
PY
