"""Runs the peers' own unit tests for the functions rlhf_fast.integrations replaces, once
as shipped and once with our drop-ins swapped in, and reports the pass counts.

- OpenRLHF 0.11.2: its wheel installs its tests as a top-level ``tests`` package next to
  ``openrlhf``. ``tests/test_kl_estimator_gradient.py`` covers ``compute_approx_kl``;
  ``tests/test_reward_shaping.py`` runs ``RemoteExperienceMaker.compute_advantages_and_returns``,
  which calls ``compute_reward`` and ``get_advantages_and_returns`` (``gae``) or
  ``get_cumulative_returns`` (the REINFORCE family). With ``--use ours`` the first
  file's ``compute_approx_kl`` is ours, and every experience maker module the second
  file loads goes through ``rlhf_fast.integrations.openrlhf.patch``. Calls into our
  functions are counted, so a pass cannot come from OpenRLHF's own code.
  ``openrlhf/models/utils.py`` imports deepspeed at module level (used only by
  ``set_z3_leaf_modules``); when deepspeed is missing an empty module stands in.
- TRL 1.12.0 ships no tests in its wheel or its sdist, so none are run here (see the
  README, "Inside other stacks").

Run in .venv-bench::

    nice -n 10 .venv-bench/bin/python benches/integrations_peer_tests.py [--json PATH]
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import types
from pathlib import Path

OPENRLHF_FILES = ("test_kl_estimator_gradient.py", "test_reward_shaping.py")


class _Counts:
    """pytest plugin: outcome counts per file."""

    def __init__(self) -> None:
        self.outcomes: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)

    def pytest_runtest_logreport(self, report) -> None:  # noqa: ANN001
        name = report.nodeid.split("::")[0].rsplit("/", 1)[-1]
        if report.when == "call" or (report.when == "setup" and not report.passed):
            self.outcomes[name][report.outcome] += 1


class _OpenRLHFDropIns:
    """pytest plugin: OpenRLHF's tests see rlhf_fast's functions."""

    def __init__(self) -> None:
        import rlhf_fast.integrations.openrlhf as ro

        self.ro = ro
        self.calls: collections.Counter = collections.Counter()
        for name in (
            "compute_approx_kl",
            "compute_reward",
            "get_advantages_and_returns",
            "get_cumulative_returns",
        ):
            setattr(ro, name, self._counted(name, getattr(ro, name)))

    def _counted(self, name, fn):  # noqa: ANN001, ANN202
        def counted(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            self.calls[name] += 1
            return fn(*args, **kwargs)

        return counted

    def pytest_collection_modifyitems(self, session, config, items) -> None:  # noqa: ANN001
        for item in items:
            module = item.module
            if hasattr(module, "compute_approx_kl"):  # test_kl_estimator_gradient binds it
                module.compute_approx_kl = self.ro.compute_approx_kl

    @__import__("pytest").hookimpl(wrapper=True)
    def pytest_fixture_setup(self, fixturedef, request):  # noqa: ANN001, ANN201
        result = yield
        if fixturedef.argname == "maker_module":  # test_reward_shaping's experience maker
            self.ro.patch(result)
        return result


def _run_openrlhf(use: str) -> dict:
    import pytest

    spec = importlib.util.find_spec("openrlhf")
    if spec is None or spec.origin is None:
        return {"skipped": "openrlhf is not installed (bash scripts/setup_bench_env.sh)"}
    site = Path(spec.origin).parent.parent
    tests = site / "tests"
    if importlib.util.find_spec("deepspeed") is None:
        sys.modules["deepspeed"] = types.ModuleType("deepspeed")
    counts = _Counts()
    plugins: list = [counts]
    dropins = None
    if use == "ours":
        dropins = _OpenRLHFDropIns()
        plugins.append(dropins)
    with tempfile.TemporaryDirectory() as tmp:
        ini = Path(tmp) / "pytest.ini"
        ini.write_text("[pytest]\n")  # not this repository's settings
        os.chdir(site)
        code = pytest.main(
            ["-q", "-p", "no:cacheprovider", "-c", str(ini), "--rootdir", str(site)]
            + [str(tests / f) for f in OPENRLHF_FILES],
            plugins=plugins,
        )
    out = {
        "files": {k: dict(v) for k, v in counts.outcomes.items()},
        "exit_code": int(code),
    }
    if dropins is not None:
        out["calls_into_rlhf_fast"] = dict(dropins.calls)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--use", choices=["peer", "ours"], help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if args.use:  # one run, in its own process (each run loads the peer's modules afresh)
        print("RESULT " + json.dumps(_run_openrlhf(args.use)))
        return
    from importlib.metadata import version

    results: dict = {"openrlhf": {"version": version("openrlhf")}}
    for use in ("peer", "ours"):
        proc = subprocess.run(
            [sys.executable, __file__, "--use", use], capture_output=True, text=True, check=False
        )
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            sys.stderr.write(proc.stdout + proc.stderr)
            raise SystemExit(f"the {use} run reported nothing")
        results["openrlhf"][use] = json.loads(line[len("RESULT ") :])
    results["trl"] = {
        "version": version("trl"),
        "skipped": "TRL's wheel and sdist ship no tests",
    }
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
