"""Data-parallel training on 2 CPU ranks (gloo): the trainers as ``torchrun`` would start them.

One pair of spawned processes runs SFT (then resumes it), the reward model on the SFT
model, and PPO on both, as ``rlhf-fast pipeline`` would; each rank saves what it ended
with, and the tests compare the ranks.
"""

from __future__ import annotations

import math
import os
import shutil
import socket
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from rlhf_fast.checkpoint import latest_checkpoint
from rlhf_fast.data import PreferencePair, SFTExample
from rlhf_fast.errors import InvalidArgumentError
from rlhf_fast.metrics import read_jsonl
from rlhf_fast.trainers import distributed as dist

WORLD = 2
PROMPT = "review the lamp :"
STAGES = ("sft", "reward", "ppo")
QUIET = {"device": "cpu", "tensorboard": False, "progress": False}
PRODUCTS = ["kettle", "lamp", "tent", "toaster"]
GOOD, BAD = ["great", "lovely", "sturdy", "perfect"], ["awful", "broken", "flimsy", "useless"]


def pairs(n: int, seed: int) -> list[PreferencePair]:
    g = torch.Generator().manual_seed(seed)
    pick = lambda xs: xs[int(torch.randint(len(xs), (1,), generator=g))]  # noqa: E731
    out = []
    for _ in range(n):
        product = pick(PRODUCTS)
        out.append(
            PreferencePair(
                f"review the {product} :",
                f"the {product} is {pick(GOOD)} .",
                f"it is {pick(BAD)} .",
            )
        )
    return out


def sft_config(out: Path, **overrides):
    from rlhf_fast.trainers.sft import SFTConfig

    kw = dict(
        output_dir=str(out),
        model="tiny-gpt2",
        tokenizer="demo-words",
        max_steps=3,
        batch_size=8,
        warmup_steps=1,
        log_every=1,
        save_every=3,
        **QUIET,
    )
    return SFTConfig(**{**kw, **overrides})


def reward_config(out: Path, model: Path):
    from rlhf_fast.trainers.reward import RewardConfig

    return RewardConfig(
        output_dir=str(out),
        model=str(model),
        max_steps=3,
        batch_size=8,
        learning_rate=1e-3,
        warmup_steps=1,
        log_every=1,
        save_every=3,
        **QUIET,
    )


def ppo_config(out: Path, policy: Path, reward_model: Path):
    from rlhf_fast.trainers.ppo import PPOConfig

    return PPOConfig(
        output_dir=str(out),
        policy=str(policy),
        reward_model=str(reward_model),
        max_steps=2,
        rollout_batch_size=8,
        minibatch_size=4,
        ppo_epochs=2,
        max_new_tokens=6,
        learning_rate=1e-3,
        target_kl=0.01,  # adaptive: the coefficient moves with the (all-reduced) KL
        save_every=1,
        **QUIET,
    )


def _record_writes_under(root: Path) -> list[str]:
    """Paths under ``root`` this process opens for writing, creates, renames or removes."""
    written: list[str] = []
    prefix = str(root)
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def hook(event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = args
            writes = (
                any(c in mode for c in "wax+") if isinstance(mode, str) else flags & write_flags
            )
            paths = [path] if writes else []
        elif event in ("os.mkdir", "os.remove", "os.rmdir", "shutil.rmtree", "os.truncate"):
            paths = [args[0]]
        elif event in ("os.rename", "os.replace"):
            paths = list(args[:2])
        else:
            return
        for path in paths:
            if isinstance(path, (str, os.PathLike)) and str(path).startswith(prefix):
                written.append(str(path))

    sys.addaudithook(hook)
    return written


def _weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def _worker(rank: int, port: int, root: Path) -> None:
    """One rank: the stages of a pipeline on tiny models; saves ``root/rank{rank}.pt``."""
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(WORLD),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    from rlhf_fast.metrics import MetricsLogger

    MetricsLogger.plot = lambda self, *args, **kwargs: None  # PNGs cost seconds, tested elsewhere
    out = root / "out"
    written = _record_writes_under(out)
    found: dict = {}
    if "sft" in STAGES:
        from rlhf_fast.trainers.sft import SFTTrainer

        batches = found["sft_batches"] = []  # the example indices each update step used
        loss_on = SFTTrainer.loss_on

        def recording_loss_on(self, indices, model=None):
            if model is not None:
                batches.append(list(indices))
            return loss_on(self, indices, model)

        SFTTrainer.loss_on = recording_loss_on
        examples = [SFTExample(p.prompt, p.chosen) for p in pairs(32, 0)]
        trainer = SFTTrainer(sft_config(out / "sft"), examples=examples)
        found["sft"] = {"result": trainer.train(), "weights": _weights(trainer.model)}
        resumed = SFTTrainer(sft_config(out / "sft", resume=True, max_steps=4), examples=examples)
        found["sft_resumed"] = {"result": resumed.train(), "weights": _weights(resumed.model)}
    if "reward" in STAGES:
        from rlhf_fast.trainers.reward import RewardTrainer

        trainer = RewardTrainer(
            reward_config(out / "reward", out / "sft" / "model"),
            pairs=pairs(32, 1),
            eval_pairs=pairs(8, 2),
        )
        found["reward"] = {"result": trainer.train(), "weights": _weights(trainer.model)}
    if "ppo" in STAGES:
        from rlhf_fast.trainers.ppo import PPOTrainer

        samples = found["ppo_samples"] = []

        def sample_metrics(prompts: list[str], responses: list[str]) -> dict[str, float]:
            samples.append((prompts, responses))
            return {"test/rank": float(rank)}  # logged as the mean over ranks

        # One prompt for all: the ranks' samples differ only if their seeds do.
        config = ppo_config(out / "ppo", out / "sft" / "model", out / "reward" / "model")
        trainer = PPOTrainer(config, prompts=[PROMPT] * 8, sample_metrics=sample_metrics)
        found["ppo"] = {
            "result": trainer.train(),
            "weights": _weights(trainer.model),
            "kl_coef": trainer.kl_controller.value,
        }
        if rank == 0:  # as if stopped after iteration 1
            shutil.rmtree(latest_checkpoint(out / "ppo" / "checkpoints"))
        config.resume = True
        resumed = PPOTrainer(
            config, prompts=[PROMPT] * 8, sample_metrics=lambda p, r: {"test/rank": float(rank)}
        )
        resumed.train()
        found["ppo_resumed"] = {"weights": _weights(resumed.model)}
    found["written"] = list(written)
    torch.save(found, root / f"rank{rank}.pt")
    torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> tuple[Path, list[dict]]:
    """Run the 2-rank job once for the module; ``(root, [rank 0's record, rank 1's])``."""
    root = tmp_path_factory.mktemp("ddp")
    context = mp.spawn(_worker, args=(_free_port(), root), nprocs=WORLD, join=False)
    deadline = time.monotonic() + 300
    while not context.join(timeout=5):  # raises with the rank's traceback if one fails
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("the 2-rank job did not finish within 300 s")
    return root, [torch.load(root / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


# ----------------------------------------------------------------------- single process
def test_single_process_helpers_are_no_ops(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    module = torch.nn.Linear(2, 2)
    assert dist.init_distributed(torch.device("cpu")) == torch.device("cpu")
    assert not torch.distributed.is_initialized()
    assert (dist.world_size(), dist.rank(), dist.is_main_process()) == (1, 0, True)
    assert dist.shard([3, 1, 2]) == [3, 1, 2]
    assert dist.all_reduce_mean({"a": 1.5}) == {"a": 1.5}
    assert dist.wrap_ddp(module, torch.device("cpu")) is module
    assert dist.per_rank("batch_size", 5) == 5
    dist.barrier()


def test_shards_split_a_batch_disjointly(monkeypatch):
    items = list(range(10))
    shards = []
    for r in range(WORLD):
        monkeypatch.setattr(dist, "rank", lambda r=r: r)
        monkeypatch.setattr(dist, "world_size", lambda: WORLD)
        shards.append(dist.shard(items))
    assert shards == [[0, 2, 4, 6, 8], [1, 3, 5, 7, 9]]
    with pytest.raises(InvalidArgumentError, match="batch_size: expected a multiple"):
        dist.per_rank("batch_size", 7)


# ----------------------------------------------------------------------- two ranks
def test_sft_ranks_end_with_the_same_weights(ranks):
    _, (rank0, rank1) = ranks
    assert len(rank0["sft_batches"]) == 3 + 1  # 3 steps, then 1 after the resume
    for a, b in zip(rank0["sft_batches"], rank1["sft_batches"]):
        assert len(a) == len(b) == 4 and len(set(a) | set(b)) == 8  # disjoint halves of 8
    for stage in ("sft", "sft_resumed"):
        assert_same_weights(rank0[stage]["weights"], rank1[stage]["weights"])
        assert math.isfinite(rank0[stage]["result"]["final_loss"])
        assert rank0[stage]["result"] == rank1[stage]["result"]  # logged values are rank means
    assert rank0["sft_resumed"]["result"]["steps"] == 4
    # the resumed run continued from the checkpoint: its weights moved one more step
    moved = rank0["sft_resumed"]["weights"]["transformer.wte.weight"]
    assert not torch.equal(moved, rank0["sft"]["weights"]["transformer.wte.weight"])


def test_reward_ranks_end_with_the_same_weights_as_one_process(ranks, tmp_path):
    from rlhf_fast.trainers.reward import RewardTrainer

    root, (rank0, rank1) = ranks
    assert_same_weights(rank0["reward"]["weights"], rank1["reward"]["weights"])
    assert rank0["reward"]["result"] == rank1["reward"]["result"]
    assert math.isfinite(rank0["reward"]["result"]["eval_loss"])
    # A global batch split over 2 ranks and averaged gradients: the same steps as one process.
    torch.set_num_threads(1)
    single = RewardTrainer(
        reward_config(tmp_path, root / "out" / "sft" / "model"),
        pairs=pairs(32, 1),
        eval_pairs=pairs(8, 2),
    )
    result = single.train()
    assert rank0["reward"]["result"]["eval_loss"] == pytest.approx(result["eval_loss"], rel=1e-5)
    # The loss is blind to a shift of all scores (head bias, final layer-norm bias): their
    # gradients are rounding noise, which Adam scales up to learning-rate-sized steps.
    shift = ("head.bias", "backbone.ln_f.bias")
    for k, v in single.model.state_dict().items():
        if k not in shift:
            torch.testing.assert_close(
                rank0["reward"]["weights"][k], v, rtol=1e-4, atol=1e-6, msg=k
            )
    rewards = read_jsonl(tmp_path / "metrics" / "reward.jsonl")
    logged = read_jsonl(root / "out" / "reward" / "metrics" / "reward.jsonl")
    for one, two in zip(rewards, logged):  # rank means of per-shard values = full-batch values
        assert two["train/loss"] == pytest.approx(one["train/loss"], rel=1e-4)


def test_ppo_ranks_end_with_the_same_policy_and_kl_coef(ranks):
    root, (rank0, rank1) = ranks
    assert_same_weights(rank0["ppo"]["weights"], rank1["ppo"]["weights"])
    assert rank0["ppo"]["kl_coef"] == rank1["ppo"]["kl_coef"] != 0.05  # moved, in step
    assert rank0["ppo"]["result"] == rank1["ppo"]["result"]
    assert rank0["ppo"]["result"]["steps"] == 2
    # each rank sampled its half of the rollout, with its own seed
    for (prompts0, responses0), (prompts1, responses1) in zip(
        rank0["ppo_samples"], rank1["ppo_samples"]
    ):
        assert prompts0 == prompts1 == [PROMPT] * 4
        assert responses0 != responses1
    logged = read_jsonl(root / "out" / "ppo" / "metrics" / "ppo.jsonl")
    assert [r["test/rank"] for r in logged] == [0.5, 0.5]  # mean of rank 0 and rank 1
    assert logged[0]["objective/kl"] == pytest.approx(0.0, abs=1e-5)  # policy = reference
    for key in ("objective/kl", "loss/policy_avg", "loss/value_avg", "val/explained_variance"):
        assert all(r[key] is not None and math.isfinite(r[key]) for r in logged), key
    assert logged[-1]["objective/kl_coef"] == pytest.approx(rank0["ppo"]["kl_coef"])


def test_ppo_ranks_resume_from_the_same_checkpoint_as_if_never_stopped(ranks):
    _, (rank0, rank1) = ranks
    assert_same_weights(rank0["ppo_resumed"]["weights"], rank1["ppo_resumed"]["weights"])
    assert_same_weights(rank0["ppo_resumed"]["weights"], rank0["ppo"]["weights"])


def test_only_rank_zero_writes_files(ranks):
    root, (rank0, rank1) = ranks
    assert rank1["written"] == []
    assert any("checkpoints" in p for p in rank0["written"])  # the audit does see writes
    sft = root / "out" / "sft"
    assert (sft / "model" / "config.json").is_file()
    assert (root / "out" / "reward" / "model" / "model.safetensors").is_file()
    assert (root / "out" / "ppo" / "policy" / "config.json").is_file()
    steps = [r["step"] for r in read_jsonl(sft / "metrics" / "sft.jsonl")]
    assert steps == [1, 2, 3, 4]  # one line per step, from one rank, resumed lines appended
