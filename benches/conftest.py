"""pytest-benchmark set-up for ``benches/``: every test here is a ``benchmark`` test.

Run, e.g.::

    .venv/bin/python -m pytest benches/test_kernels_bench.py -m benchmark -k "gae and 512x2048"

``benches/`` is outside the default ``testpaths`` and ``-m benchmark`` overrides the
default ``-m 'not slow and not benchmark'``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import rlhf_fast

_HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.benchmark)


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict) -> None:
    machine_info["rlhf_fast"] = rlhf_fast.__version__
    machine_info["rlhf_fast_threads"] = rlhf_fast.get_num_threads()
    machine_info["numpy"] = np.__version__
    try:
        import torch

        machine_info["torch"] = torch.__version__
        machine_info["torch_threads"] = torch.get_num_threads()
    except ImportError:
        pass
