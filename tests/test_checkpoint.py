"""Checkpoints: round trip, RNG restore, atomicity, pruning, tied weights."""

from __future__ import annotations

import json
import os
import random

import numpy as np
import pytest
import torch
from torch import nn

from rlhf_fast.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from rlhf_fast.errors import InvalidArgumentError


class TiedLM(nn.Module):
    """Embedding and output projection share one weight, as in GPT-2."""

    def __init__(self, vocab: int = 11, width: int = 6) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.hidden = nn.Linear(width, width)
        self.head = nn.Linear(width, vocab, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # [B, T] int64 -> [B, T, V]
        return self.head(torch.tanh(self.hidden(self.embed(tokens))))


def make_training_state(seed: int):
    torch.manual_seed(seed)
    model = TiedLM()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1 + step))
    return model, optimizer, scheduler


def train_steps(model, optimizer, scheduler, n: int) -> None:
    for _ in range(n):
        tokens = torch.randint(0, 11, (3, 5))
        loss = nn.functional.cross_entropy(model(tokens).flatten(0, 1), tokens.flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()


def draw_randoms():
    return random.random(), float(np.random.rand()), float(torch.rand(()))  # noqa: NPY002


def test_round_trip_restores_weights_optimizer_scheduler_rng_and_extra(tmp_path):
    model, optimizer, scheduler = make_training_state(seed=0)
    train_steps(model, optimizer, scheduler, 3)
    path = save_checkpoint(
        tmp_path,
        step=3,
        modules={"policy": model},
        optimizers={"policy": optimizer},
        schedulers={"policy": scheduler},
        extra={"kl_coef": 0.07, "cursor": [1, 2]},
    )
    assert path == tmp_path / "step_00000003"
    expected_randoms = draw_randoms()
    train_steps(model, optimizer, scheduler, 2)  # the uninterrupted run continues
    expected_weights = {k: v.clone() for k, v in model.state_dict().items()}

    other, other_optimizer, other_scheduler = make_training_state(seed=1)
    assert not torch.equal(other.embed.weight, model.embed.weight)
    random.seed(5), np.random.seed(5), torch.manual_seed(5)  # noqa: NPY002
    info = load_checkpoint(
        tmp_path,  # a run directory resolves to its latest checkpoint
        modules={"policy": other},
        optimizers={"policy": other_optimizer},
        schedulers={"policy": other_scheduler},
    )
    assert info["step"] == 3 and info["extra"] == {"kl_coef": 0.07, "cursor": [1, 2]}
    assert info["path"] == path
    assert draw_randoms() == expected_randoms
    assert other_scheduler.last_epoch == 3
    assert other_optimizer.state_dict()["state"][0]["step"] == 3
    train_steps(other, other_optimizer, other_scheduler, 2)  # the resumed run
    for key, value in other.state_dict().items():
        torch.testing.assert_close(value, expected_weights[key], rtol=0, atol=0)
    assert other.head.weight is other.embed.weight  # still tied after loading


def test_files_are_loaded_with_weights_only(tmp_path, monkeypatch):
    model, optimizer, scheduler = make_training_state(seed=0)
    save_checkpoint(tmp_path, step=0, modules={"m": model}, optimizers={"m": optimizer})
    calls = []
    real_load = torch.load

    def recording_load(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    load_checkpoint(tmp_path / "step_00000000", modules={"m": model}, optimizers={"m": optimizer})
    assert calls == [True, True]  # optimizer + rng


def test_crashed_save_is_ignored_and_cleaned_up(tmp_path, monkeypatch):
    model, optimizer, _ = make_training_state(seed=0)
    save_checkpoint(tmp_path, step=1, modules={"m": model})

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path, step=2, modules={"m": model}, optimizers={"m": optimizer})
    monkeypatch.undo()
    assert latest_checkpoint(tmp_path) == tmp_path / "step_00000001"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000001"]

    # A process killed mid-save leaves a hidden temporary dir, and a copied dir may lack
    # state.json: neither counts, and the next save removes the temporary one.
    half = tmp_path / ".tmp-step_00000005-abcd"
    half.mkdir()
    (half / "model.m.safetensors").write_bytes(b"partial")
    (tmp_path / "step_00000009").mkdir()
    assert latest_checkpoint(tmp_path) == tmp_path / "step_00000001"
    save_checkpoint(tmp_path, step=3, modules={"m": model}, keep_last=None)
    assert not half.exists()
    assert latest_checkpoint(tmp_path) == tmp_path / "step_00000003"
    with pytest.raises(CheckpointError, match="neither a complete checkpoint"):
        load_checkpoint(tmp_path / "step_00000009", modules={"m": model})


def test_pruning_keeps_the_last_n_and_resave_replaces(tmp_path):
    model, _, _ = make_training_state(seed=0)
    for step in (10, 20, 30, 40):
        save_checkpoint(tmp_path, step=step, modules={"m": model}, keep_last=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000030", "step_00000040"]
    with torch.no_grad():
        model.hidden.bias.fill_(3.0)
    save_checkpoint(tmp_path, step=40, modules={"m": model}, extra={"again": True})
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000030", "step_00000040"]
    fresh, _, _ = make_training_state(seed=1)
    assert load_checkpoint(tmp_path, modules={"m": fresh})["extra"] == {"again": True}
    assert torch.all(fresh.hidden.bias == 3.0)
    # Saving an older step never deletes the checkpoint just written.
    save_checkpoint(tmp_path, step=5, modules={"m": model}, keep_last=1)
    assert (tmp_path / "step_00000005").is_dir()
    assert not any(name.startswith(".tmp") for name in os.listdir(tmp_path))


def test_state_json_is_readable(tmp_path):
    model, optimizer, scheduler = make_training_state(seed=0)
    path = save_checkpoint(
        tmp_path,
        step=7,
        modules={"policy": model, "value": nn.Linear(2, 1)},
        schedulers={"s": scheduler},
    )
    state = json.loads((path / "state.json").read_text())
    assert state["step"] == 7 and state["modules"] == ["policy", "value"]
    assert state["schedulers"] == ["s"] and state["optimizers"] == []
    assert sorted(p.name for p in path.iterdir()) == [
        "model.policy.safetensors",
        "model.value.safetensors",
        "rng.pt",
        "scheduler.s.pt",
        "state.json",
    ]


def test_gpt2_tied_embeddings_round_trip(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(
        n_layer=1,
        n_head=2,
        n_embd=16,
        vocab_size=40,
        n_positions=16,
        bos_token_id=0,
        eos_token_id=0,
    )
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config)
    save_checkpoint(tmp_path, step=1, modules={"policy": model})
    torch.manual_seed(1)
    restored = transformers.GPT2LMHeadModel(config)
    load_checkpoint(tmp_path, modules={"policy": restored}, restore_rng=False)
    assert restored.lm_head.weight is restored.transformer.wte.weight
    tokens = torch.tensor([[1, 5, 7, 2]])
    model.eval(), restored.eval()  # no dropout
    torch.testing.assert_close(restored(tokens).logits, model(tokens).logits, rtol=0, atol=0)


def test_errors_name_what_is_wrong(tmp_path):
    model, optimizer, _ = make_training_state(seed=0)
    with pytest.raises(InvalidArgumentError, match="step: expected an int >= 0, got -1"):
        save_checkpoint(tmp_path, step=-1, modules={"m": model})
    with pytest.raises(InvalidArgumentError, match="keep_last"):
        save_checkpoint(tmp_path, step=0, modules={"m": model}, keep_last=0)
    with pytest.raises(InvalidArgumentError, match="names must match"):
        save_checkpoint(tmp_path, step=0, modules={"a/b": model})
    with pytest.raises(InvalidArgumentError, match="extra: must be JSON-serialisable"):
        save_checkpoint(tmp_path, step=0, modules={"m": model}, extra={"t": torch.zeros(1)})
    assert latest_checkpoint(tmp_path) is None and latest_checkpoint(tmp_path / "nope") is None
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope", modules={"m": model})
    save_checkpoint(tmp_path, step=0, modules={"m": model})
    with pytest.raises(CheckpointError, match=r"has no optimizers named \['m'\]"):
        load_checkpoint(tmp_path, modules={"m": model}, optimizers={"m": optimizer})
    with pytest.raises(CheckpointError, match="cannot load .* into module 'm'"):
        load_checkpoint(tmp_path, modules={"m": nn.Linear(3, 3)})
