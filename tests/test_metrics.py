"""Metrics: JSONL lines, resume truncation, PNG curves, TensorBoard event files."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rlhf_fast.errors import InvalidArgumentError
from rlhf_fast.metrics import MetricsLogger, plot_curves, read_jsonl

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def tensorboard_scalars(directory) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(directory))
    accumulator.Reload()
    return {
        tag: [(event.step, event.value) for event in accumulator.Scalars(tag)]
        for tag in accumulator.Tags()["scalars"]
    }


def test_jsonl_tensorboard_and_png(tmp_path):
    with MetricsLogger(tmp_path, "ppo") as logger:
        for step in range(3):
            logger.log(
                step,
                {
                    "objective/kl": 0.1 * step,
                    "loss/policy_avg": torch.tensor(1.5 - step),
                    "objective/scores": np.float32(2.0),
                },
            )
            # Flushed at once: readable while the run goes on.
            assert len(read_jsonl(tmp_path / "metrics" / "ppo.jsonl")) == step + 1
    records = read_jsonl(tmp_path / "metrics" / "ppo.jsonl")
    assert [r["step"] for r in records] == [0, 1, 2]
    assert [r["loss/policy_avg"] for r in records] == [1.5, 0.5, -0.5]
    assert math.isclose(records[2]["objective/kl"], 0.2)
    assert all(isinstance(r["time"], float) for r in records)

    png = tmp_path / "plots" / "ppo.png"
    assert png.read_bytes()[:8] == PNG_MAGIC

    event_files = list((tmp_path / "tensorboard" / "ppo").glob("events.out.tfevents.*"))
    assert len(event_files) == 1
    scalars = tensorboard_scalars(tmp_path / "tensorboard" / "ppo")
    assert sorted(scalars) == ["loss/policy_avg", "objective/kl", "objective/scores"]
    assert [s for s, _ in scalars["loss/policy_avg"]] == [0, 1, 2]
    assert scalars["loss/policy_avg"][1][1] == pytest.approx(0.5)


def test_resume_drops_lines_after_the_checkpoint(tmp_path):
    logger = MetricsLogger(tmp_path, "sft", tensorboard=False)
    for step in range(6):
        logger.log(step, {"loss": float(step)})
    logger._file.write('{"step": 6, "lo')  # a process killed mid-line
    logger._file.flush()
    logger._file.close()

    with MetricsLogger(tmp_path, "sft", tensorboard=False, resume_step=3) as resumed:
        assert [r["step"] for r in resumed.records] == [0, 1, 2, 3]
        for step in range(4, 8):
            resumed.log(step, {"loss": 10.0 + step})
    records = read_jsonl(tmp_path / "metrics" / "sft.jsonl")
    assert [r["step"] for r in records] == list(range(8))  # no duplicates, no gaps
    assert [r["loss"] for r in records[3:5]] == [3.0, 14.0]

    # Starting without resume_step begins the stage afresh.
    with MetricsLogger(tmp_path, "sft", tensorboard=False) as fresh:
        fresh.log(0, {"loss": 1.0})
    assert len(read_jsonl(tmp_path / "metrics" / "sft.jsonl")) == 1


def test_resume_purges_tensorboard_steps(tmp_path):
    with MetricsLogger(tmp_path, "reward") as logger:
        for step in range(4):
            logger.log(step, {"loss": float(step)})
    with MetricsLogger(tmp_path, "reward", resume_step=1) as logger:
        logger.log(2, {"loss": 20.0})
    assert tensorboard_scalars(tmp_path / "tensorboard" / "reward")["loss"] == [
        (0, 0.0),
        (1, 1.0),
        (2, 20.0),
    ]


def test_non_finite_values_and_bad_input(tmp_path):
    with MetricsLogger(tmp_path, "ppo", tensorboard=False) as logger:
        logger.log(0, {"loss": float("nan"), "kl": 0.5})
        logger.log(1, {"loss": 1.0, "kl": float("inf")})
        with pytest.raises(
            InvalidArgumentError, match=r"metrics\['x'\]: expected a number, got 'a'"
        ):
            logger.log(2, {"x": "a"})
        with pytest.raises(InvalidArgumentError, match="one-element tensor"):
            logger.log(2, {"x": torch.zeros(2)})
        with pytest.raises(InvalidArgumentError, match="'step' is reserved"):
            logger.log(2, {"step": 1.0})
        with pytest.raises(InvalidArgumentError, match="step: expected an int"):
            logger.log(2.0, {"x": 1.0})
    records = read_jsonl(tmp_path / "metrics" / "ppo.jsonl")
    assert records[0]["loss"] is None and records[1]["kl"] is None
    assert (tmp_path / "plots" / "ppo.png").exists()  # the finite points still plot
    with pytest.raises(InvalidArgumentError, match="is closed"):
        logger.log(3, {"x": 1.0})
    with pytest.raises(InvalidArgumentError, match="stage"):
        MetricsLogger(tmp_path, "a/b")


def test_disabled_logger_writes_nothing(tmp_path):
    with MetricsLogger(tmp_path, "ppo", enabled=False) as logger:
        logger.log(0, {"x": 1.0})
    assert list(tmp_path.iterdir()) == []


def test_plot_curves_against_another_key(tmp_path):
    records = [
        {"step": i, "objective/kl": 0.1 * i, "score": i**0.5, "gold": None} for i in range(5)
    ]
    path = plot_curves(
        records, ["score", "gold"], tmp_path / "out" / "kl.png", x_key="objective/kl"
    )
    assert path is not None and path.read_bytes()[:8] == PNG_MAGIC
    assert plot_curves(records, ["gold"], tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()


def test_read_jsonl_errors(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"step": 0}\n[1]\n')
    with pytest.raises(InvalidArgumentError, match="line 2: expected a JSON object"):
        read_jsonl(path)
    path.write_text('{"step": 0}\n{"step"\n{"step": 2}\n')
    with pytest.raises(InvalidArgumentError, match="line 2: invalid JSON"):
        read_jsonl(path, allow_partial_last_line=True)  # only an unterminated last line is forgiven
