#!/usr/bin/env bash
# Creates or refreshes .venv-bench, the environment `make bench` runs in.
#
# .venv-bench is a virtual environment layered on .venv: a .pth file puts the checkout's
# python/ (with the extension `make build` compiled in place) and then .venv's site-packages
# on its path, so torch, transformers and numpy are the very builds rlhf_fast's own trainers
# use, and nothing is installed twice. The peers from benches/requirements.txt are installed
# with --no-deps into .venv-bench only, so .venv never changes.
#
# Idempotent: once the stamp matches requirements.txt and this script, it only re-checks imports.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
base_python=.venv/bin/python
bench_python=.venv-bench/bin/python
requirements=benches/requirements.txt
stamp=.venv-bench/.stamp-peers

if [[ ! -x $base_python ]]; then
    echo "error: $base_python is missing; run \`make build\` first (it creates .venv)." >&2
    exit 1
fi
if [[ ! -x $bench_python ]]; then
    python3 -m venv .venv-bench
fi

base_site=$($base_python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
bench_site=$($bench_python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
# Path lines are appended in order: our sources first, then .venv with its own .pth files.
printf '%s\nimport site; site.addsitedir(%s)\n' "$root/python" "'$base_site'" \
    > "$bench_site/_rlhf_fast_bench_layers.pth"

want=$(cat "$requirements" "$0" | sha256sum | cut -d' ' -f1)
if [[ ! -f $stamp || $(cat "$stamp") != "$want" ]]; then
    echo "installing the benchmark peers into .venv-bench (--no-deps) ..."
    $bench_python -m pip install --quiet --no-deps -r "$requirements"
    echo "$want" > "$stamp"
fi

TRL_EXPERIMENTAL_SILENCE=1 $bench_python - <<'PY'
import importlib
import pathlib

import rlhf_fast
import rlhf_fast._native  # noqa: F401  (built by `make build`)

for module in (
    "verl.trainer.ppo.core_algos",
    "torchrl.objectives.value.functional",
    "torchtune.rlhf",
    "stateset_rl_core",
    "rlox",
    "trl.experimental.ppo",
):
    importlib.import_module(module)
print(f".venv-bench ready: rlhf_fast from {pathlib.Path(rlhf_fast.__file__).parent}")
PY
