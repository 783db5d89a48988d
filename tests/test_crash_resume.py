"""Crash safety: SIGKILL a CLI training run at random points (one kill inside a checkpoint
write), resume it with ``--resume``, and check that it ends bit-identical to a run never
stopped: the same final weights, and a metrics JSONL with every step exactly once and
the same values.

The kill points are drawn from a seeded RNG: a number of logged steps to wait for, then
a short extra delay, so each kill lands mid-run whatever the machine's speed.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlhf_fast.cli import main
from rlhf_fast.models import RewardModel, load_causal_lm
from rlhf_fast.tokenizer import load_tokenizer

CLI = [sys.executable, "-m", "rlhf_fast.cli"]
# One thread everywhere: the in-process reference and the killed subprocesses must run
# the same kernels to be compared bit for bit.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
COMMON = ["--device", "cpu", "--no-tensorboard", "--no-progress", "--log-every", "1"]
PRODUCTS = ["kettle", "lamp", "tent", "toaster"]


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    from rlhf_fast.metrics import MetricsLogger

    # PNG curves cost seconds and are not compared; the subprocesses still write theirs.
    monkeypatch.setattr(MetricsLogger, "plot", lambda self, *args, **kwargs: None)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Tiny SFT, preference and prompt files, an SFT-model and a reward-model directory."""
    root = tmp_path_factory.mktemp("crash-data")
    with (root / "sft.jsonl").open("w") as sft, (root / "pairs.jsonl").open("w") as pairs:
        for i in range(48):
            product = PRODUCTS[i % 4]
            prompt = f"review the {product} :"
            sft.write(json.dumps({"prompt": prompt, "response": f"the {product} is great ."}))
            pairs.write(
                json.dumps(
                    {
                        "prompt": prompt,
                        "chosen": f"the {product} is {['great', 'lovely'][i % 2]} .",
                        "rejected": f"the {product} is {['awful', 'broken'][i % 2]} .",
                    }
                )
            )
            sft.write("\n"), pairs.write("\n")
    (root / "prompts.jsonl").write_text(
        "".join(json.dumps({"prompt": f"review the {p} :"}) + "\n" for p in PRODUCTS * 4)
    )
    tok = load_tokenizer("demo-words")
    load_causal_lm("tiny-gpt2", tok, seed=0).save_pretrained(root / "sft")
    tok.save_pretrained(root / "sft")
    RewardModel.from_causal_lm(load_causal_lm("tiny-gpt2", tok, seed=1)).save_pretrained(
        root / "rm"
    )
    tok.save_pretrained(root / "rm")
    return root


def stage_argv(stage: str, root: Path, out: Path) -> list[str]:
    if stage == "sft":
        args = ["sft", "--model", "tiny-gpt2", "--tokenizer", "demo-words"]
        args += ["--data", str(root / "sft.jsonl"), "--batch-size", "4", "--max-length", "24"]
        args += ["--max-steps", "24", "--warmup-steps", "4", "--save-every", "3"]
    elif stage == "reward":
        args = ["train-reward", "--model", str(root / "sft"), "--data", str(root / "pairs.jsonl")]
        args += ["--batch-size", "4", "--max-length", "24", "--eval-every", "5"]
        args += ["--max-steps", "24", "--warmup-steps", "4", "--save-every", "3"]
    elif stage in ("grpo", "rloo"):
        args = [stage, "--policy", str(root / "sft"), "--reward-model", str(root / "rm")]
        args += ["--prompts", str(root / "prompts.jsonl"), "--group-size", "2"]
        args += ["--prompts-per-step", "2", "--minibatch-size", "2", "--max-new-tokens", "4"]
        args += ["--max-steps", "14", "--save-every", "3"]
    elif stage == "dpo":
        args = ["dpo", "--policy", str(root / "sft"), "--data", str(root / "pairs.jsonl")]
        args += ["--batch-size", "4", "--max-length", "24", "--eval-every", "5"]
        args += ["--max-steps", "24", "--warmup-steps", "4", "--save-every", "3"]
    else:
        args = ["ppo", "--policy", str(root / "sft"), "--reward-model", str(root / "rm")]
        args += ["--prompts", str(root / "prompts.jsonl"), "--rollout-batch-size", "4"]
        args += ["--minibatch-size", "2", "--ppo-epochs", "1", "--max-new-tokens", "4"]
        args += ["--max-steps", "14", "--save-every", "3", "--target-kl", "0.1"]
    return [*args, *COMMON, "--output-dir", str(out)]


def logged_steps(out: Path, stage: str) -> int:
    path = out / "metrics" / f"{stage}.jsonl"
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def temporaries(out: Path) -> set[str]:
    try:
        return {p.name for p in (out / "checkpoints").iterdir() if p.name.startswith(".tmp-")}
    except FileNotFoundError:
        return set()


def run_and_kill(argv: list[str], out: Path, stage: str, *, after_steps: int, jitter: float):
    """Start the CLI and SIGKILL it once ``after_steps`` more steps are logged: ``jitter``
    seconds later, or with ``jitter=None`` as soon as a new checkpoint temporary directory
    appears (inside the write). Returns whether the kill landed before the run finished."""
    start_steps, stale = logged_steps(out, stage), temporaries(out)
    log = out.with_name(out.name + ".stderr")
    with log.open("wb") as stderr:
        proc = subprocess.Popen([*CLI, *argv], env=ENV, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        while proc.poll() is None and logged_steps(out, stage) - start_steps < after_steps:
            time.sleep(0.002)
        if jitter is None:
            while proc.poll() is None and not temporaries(out) - stale:
                time.sleep(0.0002)
        else:
            time.sleep(jitter)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode in (0, -signal.SIGKILL), log.read_text()
    return proc.returncode == -signal.SIGKILL


def finished_state(out: Path, stage: str) -> tuple[dict, list[dict]]:
    model_dir = out / ("model" if stage in ("sft", "reward") else "policy")
    weights = load_file(model_dir / "model.safetensors")
    records = [json.loads(x) for x in (out / "metrics" / f"{stage}.jsonl").read_text().splitlines()]
    # Wall-clock values differ between any two runs; everything else must not.
    kept = [
        {k: v for k, v in r.items() if k != "time" and not k.startswith("perf/")} for r in records
    ]
    return weights, kept


def check_kills_then_resume(stage: str, root: Path, tmp_path: Path, kills: int) -> None:
    """``kills`` runs killed at seeded random points, the first inside a checkpoint write,
    then a resume that finishes; compared with an uninterrupted in-process run."""
    rng = random.Random(f"crash-{stage}-{kills}")
    reference, crashed = tmp_path / "reference", tmp_path / "crashed"
    assert main(stage_argv(stage, root, reference)) == 0
    argv = stage_argv(stage, root, crashed)
    for i in range(kills):
        jitter = None if i == 0 else rng.uniform(0, 0.05)
        landed = run_and_kill(
            [*argv, "--resume"] if i else argv,
            crashed,
            stage,
            after_steps=rng.randint(1, 5),
            jitter=jitter,
        )
        assert landed or i > 0, "the first kill must land mid-run"
    done = subprocess.run(
        [*CLI, *argv, "--resume"], env=ENV, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr

    want_weights, want_records = finished_state(reference, stage)
    got_weights, got_records = finished_state(crashed, stage)
    assert [r["step"] for r in got_records] == [r["step"] for r in want_records]
    assert got_records == want_records
    assert got_weights.keys() == want_weights.keys()
    for name, tensor in want_weights.items():
        assert torch.equal(got_weights[name], tensor), name
    assert not temporaries(crashed)  # the next save cleaned up the interrupted one


@pytest.mark.parametrize("stage", ["sft", "reward", "ppo", "grpo", "rloo", "dpo"])
def test_killed_inside_a_checkpoint_then_resumed_ends_bit_identical(stage, data, tmp_path):
    check_kills_then_resume(stage, data, tmp_path, kills=1)


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["sft", "reward", "ppo", "grpo", "rloo", "dpo"])
def test_killed_many_times_then_resumed_ends_bit_identical(stage, data, tmp_path):
    check_kills_then_resume(stage, data, tmp_path, kills=4)
