"""``--fsdp`` on 2 CPU ranks (gloo): the trainers shard their model with FSDP2.

One pair of spawned processes runs SFT (then resumes it from its next-to-last
checkpoint), samples from the sharded SFT model, trains the reward model on it and runs
PPO and GRPO on both (PPO resumed too), each under ``fsdp=True``. Rank 0 records full
weights (gathered, as a checkpoint is), every rank what its shards look like; the tests
compare them with uninterrupted runs, a single process and the saved models loaded
without FSDP.
"""

from __future__ import annotations

import math
import os
import shutil
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from rlhf_fast.checkpoint import latest_checkpoint, list_checkpoints
from rlhf_fast.data import SFTExample
from rlhf_fast.trainers import distributed as dist

sys.path.insert(0, str(Path(__file__).parent))
from test_distributed import (  # noqa: E402 (the same tiny runs as the DDP tests)
    PROMPT,
    QUIET,
    WORLD,
    _free_port,
    assert_same_weights,
    pairs,
    ppo_config,
    reward_config,
    sft_config,
)

SAMPLE_SEED = 11


def grpo_config(out: Path, policy: Path, reward_model: Path, **overrides):
    from rlhf_fast.trainers.grpo import GRPOConfig

    kw = dict(
        output_dir=str(out),
        policy=str(policy),
        reward_model=str(reward_model),
        max_steps=2,
        prompts_per_step=2,
        group_size=4,
        minibatch_size=4,
        epochs=1,
        max_new_tokens=6,
        learning_rate=1e-3,
        save_every=1,
        fsdp=True,
        **QUIET,
    )
    return GRPOConfig(**{**kw, **overrides})


def sft_examples() -> list[SFTExample]:
    return [SFTExample(p.prompt, p.chosen) for p in pairs(32, 0)]


def query(tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    from rlhf_fast.models import pad_rows
    from rlhf_fast.tokenizer import encode_text

    prompts = [PROMPT, "review the kettle :", "review the tent :"]
    rows = [encode_text(tokenizer, p) for p in prompts]
    return pad_rows(rows, tokenizer.pad_token_id, side="left")


def sample(model: torch.nn.Module, tokenizer) -> torch.Tensor:
    """Seeded sampling with the KV-cached loop: the tokens."""
    from rlhf_fast.sampling import sample_responses
    from rlhf_fast.trainers.runtime import seed_everything

    ids, mask = query(tokenizer)
    seed_everything(SAMPLE_SEED)
    with torch.no_grad():
        return sample_responses(
            model,
            ids,
            mask,
            max_new_tokens=8,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ).tokens


def _full_weights(module: torch.nn.Module) -> dict[str, torch.Tensor] | None:
    """Every rank must call it (a gather); rank 0 gets the weights."""
    plain = dist.full_model(module)
    return None if plain is None else {k: v.clone() for k, v in plain.state_dict().items()}


def _worker(rank: int, port: int, root: Path) -> None:
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(WORLD),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    from rlhf_fast.metrics import MetricsLogger
    from rlhf_fast.trainers.grpo import GRPOTrainer
    from rlhf_fast.trainers.ppo import PPOTrainer
    from rlhf_fast.trainers.reward import RewardTrainer
    from rlhf_fast.trainers.sft import SFTTrainer

    MetricsLogger.plot = lambda self, *args, **kwargs: None  # PNGs cost seconds
    out, found = root / "out", {}

    def stop_after_next_to_last(stage: str) -> None:
        if rank == 0:  # as if the run had stopped before its last checkpoint
            shutil.rmtree(latest_checkpoint(out / stage / "checkpoints"))

    # SFT: 3 steps (checkpoints at 2 and 3), then from step 2 again
    config = sft_config(out / "sft", fsdp=True, save_every=2)
    trainer = SFTTrainer(config, examples=sft_examples())
    wte = trainer.model.transformer.wte.weight
    found["sft_shard"] = (type(wte).__name__, tuple(wte.to_local().shape), tuple(wte.shape))
    found["sft"] = {"result": trainer.train(), "weights": _full_weights(trainer.model)}
    found["sft_sharded_after_training"] = type(trainer.model.transformer.wte.weight).__name__
    with dist.full_params(trainer.model):
        found["samples"] = sample(trainer.model, trainer.tokenizer)
    stop_after_next_to_last("sft")
    config.resume = True
    resumed = SFTTrainer(config, examples=sft_examples())
    found["sft_resumed"] = {"result": resumed.train(), "weights": _full_weights(resumed.model)}

    config = reward_config(out / "reward", out / "sft" / "model")
    config.fsdp = True
    trainer = RewardTrainer(config, pairs=pairs(32, 1), eval_pairs=pairs(8, 2))
    found["reward"] = {"result": trainer.train(), "score_std": trainer.model.score_std}

    config = ppo_config(out / "ppo", out / "sft" / "model", out / "reward" / "model")
    config.fsdp = True
    trainer = PPOTrainer(config, prompts=[PROMPT] * 8)
    found["ppo"] = {"result": trainer.train(), "weights": _full_weights(trainer.model)}
    stop_after_next_to_last("ppo")
    config.resume = True
    resumed = PPOTrainer(config, prompts=[PROMPT] * 8)
    found["ppo_resumed"] = {"result": resumed.train(), "weights": _full_weights(resumed.model)}

    trainer = GRPOTrainer(
        grpo_config(out / "grpo", out / "sft" / "model", out / "reward" / "model"),
        prompts=[PROMPT, "review the tent :"],
    )
    found["grpo"] = {"result": trainer.train()}
    torch.save(found, root / f"rank{rank}.pt")
    torch.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> tuple[Path, list[dict]]:
    """Run the 2-rank job once for the module; ``(root, [rank 0's record, rank 1's])``."""
    root = tmp_path_factory.mktemp("fsdp")
    context = mp.spawn(_worker, args=(_free_port(), root), nprocs=WORLD, join=False)
    deadline = time.monotonic() + 300
    while not context.join(timeout=5):  # raises with the rank's traceback if one fails
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("the 2-rank FSDP job did not finish within 300 s")
    return root, [torch.load(root / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    from rlhf_fast.metrics import MetricsLogger

    monkeypatch.setattr(MetricsLogger, "plot", lambda self, *args, **kwargs: None)
    torch.set_num_threads(1)


# ----------------------------------------------------------------------- two ranks
def test_each_rank_holds_half_of_each_weight(ranks):
    _, records = ranks
    for record in records:
        kind, local, full = record["sft_shard"]
        assert kind == "DTensor" and local[0] == full[0] // WORLD and local[1:] == full[1:]
        assert record["sft_sharded_after_training"] == "DTensor"  # the save gathered a copy


def test_sft_under_fsdp_takes_the_steps_of_one_process(ranks, tmp_path):
    from rlhf_fast.trainers.sft import SFTTrainer

    _, (rank0, rank1) = ranks
    assert rank0["sft"]["result"] == rank1["sft"]["result"]  # logged values are rank means
    assert math.isfinite(rank0["sft"]["result"]["final_loss"])
    assert rank1["sft"]["weights"] is None  # gathered onto rank 0 only
    torch.set_num_threads(1)
    single = SFTTrainer(sft_config(tmp_path), examples=sft_examples())
    single.train()
    for k, v in single.model.state_dict().items():
        torch.testing.assert_close(rank0["sft"]["weights"][k], v, rtol=1e-4, atol=1e-5, msg=k)


def test_sft_resumed_under_fsdp_ends_where_the_uninterrupted_run_did(ranks):
    _, (rank0, _) = ranks
    assert rank0["sft_resumed"]["result"]["steps"] == 3
    assert_same_weights(rank0["sft_resumed"]["weights"], rank0["sft"]["weights"])


def test_checkpoints_and_the_saved_model_load_without_fsdp(ranks):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    root, (rank0, _) = ranks
    sft = root / "out" / "sft"
    assert [p.name for p in list_checkpoints(sft / "checkpoints")] == [
        "step_00000002",
        "step_00000003",
    ]
    saved = load_file(str(sft / "checkpoints" / "step_00000003" / "model.model.safetensors"))
    tied = ("lm_head.weight", "transformer.wte.weight")
    assert sum(name in saved for name in tied) == 1  # stored once, as without FSDP
    model = AutoModelForCausalLM.from_pretrained(sft / "model", local_files_only=True)
    assert_same_weights(_plain_weights(model), rank0["sft"]["weights"])
    optimizer = torch.load(
        sft / "checkpoints" / "step_00000003" / "optimizer.optimizer.pt", weights_only=True
    )
    n_params = len(list(model.parameters()))
    assert sorted(optimizer["state"]) == list(range(n_params))  # torch's own layout
    assert int(optimizer["state"][0]["step"]) == 3


def _plain_weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_sampling_from_the_sharded_model_matches_the_saved_model(ranks):
    from transformers import AutoModelForCausalLM

    from rlhf_fast.tokenizer import load_tokenizer

    root, (rank0, rank1) = ranks
    tokenizer = load_tokenizer(str(root / "out" / "sft" / "model"))
    model = AutoModelForCausalLM.from_pretrained(root / "out" / "sft" / "model")
    torch.set_num_threads(1)
    expected = sample(model, tokenizer)
    assert expected.shape[1] > 1
    assert torch.equal(rank0["samples"], expected)
    assert torch.equal(rank1["samples"], expected)


def test_reward_model_under_fsdp_saves_its_score_statistics(ranks):
    from rlhf_fast.models import RewardModel

    root, (rank0, rank1) = ranks
    assert rank0["reward"]["result"] == rank1["reward"]["result"]
    assert math.isfinite(rank0["reward"]["result"]["eval_loss"])
    saved = RewardModel.from_pretrained(root / "out" / "reward" / "model")
    assert saved.score_std == pytest.approx(rank0["reward"]["score_std"])
    assert saved.score_std != 1.0  # set after training, on the sharded model


def test_ppo_under_fsdp_samples_trains_and_resumes(ranks):
    root, (rank0, rank1) = ranks
    result = rank0["ppo"]["result"]
    assert result == rank1["ppo"]["result"] and result["steps"] == 2
    for key in ("objective/kl", "objective/scores", "val/explained_variance"):
        assert math.isfinite(result[key]), key
    assert (root / "out" / "ppo" / "policy" / "value_head.safetensors").is_file()
    assert_same_weights(rank0["ppo_resumed"]["weights"], rank0["ppo"]["weights"])


def test_grpo_under_fsdp_runs(ranks):
    from transformers import AutoModelForCausalLM

    root, (rank0, rank1) = ranks
    assert rank0["grpo"]["result"] == rank1["grpo"]["result"]
    assert rank0["grpo"]["result"]["steps"] == 2
    assert math.isfinite(rank0["grpo"]["result"]["objective/kl"])
    AutoModelForCausalLM.from_pretrained(root / "out" / "grpo" / "policy")


# ----------------------------------------------------------------------- one process
def test_blocks_are_found_by_class_name_or_by_layer_list():
    from rlhf_fast.models import RewardModel, load_causal_lm
    from rlhf_fast.tokenizer import load_tokenizer

    lm = load_causal_lm("tiny-gpt2", load_tokenizer("bytes"))
    assert dist.transformer_blocks(lm) == list(lm.transformer.h)  # _no_split_modules
    reward_model = RewardModel.from_causal_lm(lm)  # the blocks of a wrapped trunk too
    assert dist.transformer_blocks(reward_model) == list(lm.transformer.h)

    class Layer(torch.nn.Module):  # no transformers class: found as model.layers entries
        def __init__(self) -> None:
            super().__init__()
            self.mlp = torch.nn.ModuleList([torch.nn.Linear(2, 2)])

    toy = torch.nn.Module()
    toy.model = torch.nn.Module()
    toy.model.layers = torch.nn.ModuleList([Layer(), Layer()])
    toy.head = torch.nn.Linear(2, 2)
    assert dist.transformer_blocks(toy) == list(toy.model.layers)
    assert dist.transformer_blocks(torch.nn.Linear(2, 2)) == []


@pytest.fixture
def group_of_one(monkeypatch):
    """``--fsdp`` without torchrun joins a group of one; it is left when the test ends."""
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    yield
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def test_fsdp_in_one_process_trains_and_resumes_as_without_it(group_of_one, tmp_path):
    from rlhf_fast.trainers.sft import SFTTrainer

    torch.set_num_threads(1)
    short = dict(max_steps=2, save_every=1)
    sharded = SFTTrainer(sft_config(tmp_path / "fsdp", fsdp=True, **short), examples=sft_examples())
    assert dist.is_sharded(sharded.model) and dist.world_size() == 1
    plain = SFTTrainer(sft_config(tmp_path / "plain", **short), examples=sft_examples())
    assert sharded.train()["final_loss"] == plain.train()["final_loss"]
    assert_same_weights(_full_weights(sharded.model), _plain_weights(plain.model))
    # Either kind of checkpoint resumes the other kind of run: one more step each.
    more = dict(resume=True, max_steps=3)
    sharded_from_plain = SFTTrainer(
        sft_config(tmp_path / "plain", fsdp=True, **more), examples=sft_examples()
    )
    plain_from_sharded = SFTTrainer(sft_config(tmp_path / "fsdp", **more), examples=sft_examples())
    assert sharded_from_plain.train()["steps"] == plain_from_sharded.train()["steps"] == 3
    assert_same_weights(
        _full_weights(sharded_from_plain.model), _plain_weights(plain_from_sharded.model)
    )


def test_dpo_with_fsdp_in_one_process_matches_dpo_without_it(group_of_one, tmp_path):
    from test_dpo import config as dpo_config
    from test_dpo import pairs as dpo_pairs

    from rlhf_fast.models import load_causal_lm
    from rlhf_fast.tokenizer import load_tokenizer
    from rlhf_fast.trainers.dpo import DPOTrainer

    tokenizer = load_tokenizer("demo-words")
    load_causal_lm("tiny-gpt2", tokenizer, seed=0).save_pretrained(tmp_path / "policy")
    tokenizer.save_pretrained(tmp_path / "policy")
    short = dict(max_steps=2, eval_every=2, save_every=1)
    results = []
    for fsdp in (True, False):
        config = dpo_config(tmp_path / "policy", tmp_path / f"fsdp_{fsdp}", fsdp=fsdp, **short)
        trainer = DPOTrainer(config, dpo_pairs(8), dpo_pairs(4))
        assert dist.is_sharded(trainer.policy) == fsdp
        results.append(trainer.train())  # evaluates the (sharded) policy at its last step
    with_fsdp, without = ({k: v for k, v in r.items() if k.startswith("eval/")} for r in results)
    assert len(with_fsdp) >= 4 and with_fsdp == pytest.approx(without, rel=1e-5)


# ----------------------------------------------------------------------- bad input
def test_fsdp_with_lora_is_refused_naming_both_flags(capsys):
    from rlhf_fast.cli import main

    assert main(["ppo", "--fsdp", "--lora-r", "8", "--prompts", "p.jsonl"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--lora-r" in err and "--fsdp" in err
    # under pipeline the stage's option is named as the pipeline takes it
    assert main(["pipeline", "--fsdp", "--ppo.lora-r", "8", "--prompts", "p.jsonl"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--ppo.lora-r" in err and "--fsdp" in err


def test_help_documents_fsdp(capsys):
    from rlhf_fast.cli import main

    assert main(["sft", "--help"]) == 0
    assert "--fsdp" in capsys.readouterr().out


def test_ppo_with_a_separate_critic_under_fsdp_matches_ppo_without_it(group_of_one, tmp_path):
    from rlhf_fast.models import RewardModel, load_causal_lm
    from rlhf_fast.tokenizer import load_tokenizer
    from rlhf_fast.trainers.ppo import PPOTrainer

    tokenizer = load_tokenizer("demo-words")
    load_causal_lm("tiny-gpt2", tokenizer, seed=0).save_pretrained(tmp_path / "sft")
    tokenizer.save_pretrained(tmp_path / "sft")
    reward_model = RewardModel.from_causal_lm(load_causal_lm("tiny-gpt2", tokenizer, seed=1))
    reward_model.save_pretrained(tmp_path / "rm")
    results = []
    for fsdp in (True, False):
        config = ppo_config(tmp_path / f"fsdp_{fsdp}", tmp_path / "sft", tmp_path / "rm")
        config.fsdp, config.shared_value_trunk, config.max_steps = fsdp, False, 1
        trainer = PPOTrainer(config, prompts=[PROMPT] * 8)
        assert dist.is_sharded(trainer.model) == fsdp
        results.append(trainer.train())
    with_fsdp, without = ({k: v for k, v in r.items() if "/" in k} for r in results)
    assert len(with_fsdp) >= 10 and with_fsdp == pytest.approx(without, rel=1e-4, abs=1e-6)
    assert (tmp_path / "fsdp_True" / "policy" / "value_head.safetensors").is_file()
