"""Models: the tiny built-in GPT-2, a policy with a value head, a reward model, the reference.

Every model here wraps a Hugging Face ``transformers`` causal LM, so any local checkpoint
that ``AutoModelForCausalLM`` reads works; nothing is downloaded. The built-in names
(``BUILTIN_MODELS``) build a small GPT-2 from a ``GPT2Config`` with fresh weights.

Padding: every forward takes an ``attention_mask`` and derives ``position_ids`` from it, so
left-padded (generation) and right-padded (training) batches give the same numbers.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple, Optional

import torch
from safetensors.torch import load_model, save_model
from torch import nn

from rlhf_fast.errors import InvalidArgumentError
from rlhf_fast.tokenizer import encode_text

# name -> GPT2Config fields. Dropout is off: PPO needs the same logprobs in rollout and update.
BUILTIN_MODELS: dict[str, dict[str, int]] = {
    "tiny-gpt2": {"n_layer": 2, "n_embd": 64, "n_head": 4, "n_positions": 128},
    "tiny-gpt2-wide": {"n_layer": 2, "n_embd": 128, "n_head": 4, "n_positions": 128},
    "small-gpt2": {"n_layer": 4, "n_embd": 256, "n_head": 4, "n_positions": 256},
}
REWARD_MODEL_FILE = "reward_model.json"
VALUE_HEAD_FILE = "value_head.safetensors"


# ---------------------------------------------------------------------- building blocks
def resolve_device(device: str) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; anything else is passed to ``torch.device``."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError as exc:
        raise InvalidArgumentError(
            f"device: expected 'auto', 'cpu' or 'cuda[:N]', got {device!r}"
        ) from exc


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """``[B, T]`` int64 positions counting only attended tokens (0 on left padding)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """``log softmax(logits)[b, t, tokens[b, t]]`` -> ``[B, T]`` float32.

    ``logits``: ``[B, T, V]``; ``tokens``: ``[B, T]`` int64. Equivalent to
    ``logits.log_softmax(-1).gather(-1, tokens[..., None])[..., 0]`` without the
    ``[B, T, V]`` log-softmax tensor.
    """
    logits = logits.float()
    picked = logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of ``softmax(logits)`` per position: ``[B, T, V]`` -> ``[B, T]`` float32."""
    logits = logits.float()
    logp = logits.log_softmax(-1)
    return -(logp.exp() * logp).sum(-1)


def disable_dropout(model: nn.Module) -> None:
    """Set every dropout probability to 0 (PPO ratios need deterministic forwards)."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0


def fuse_activations(model: nn.Module) -> nn.Module:
    """Swap composed tanh-GELUs (GPT-2's ``gelu_new``) for torch's fused kernel; returns ``model``.

    Both compute ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`` (they agree to float32
    rounding), but the composed one runs five elementwise kernels forward and keeps their
    inputs for backward: about 4x the time of the fused one, and a tenth of a small
    GPT-2's training step. Weights and saved configs are untouched.
    """
    from transformers.activations import ACT2CLS, ACT2FN

    composed = ACT2CLS.get("gelu_new")
    if composed is None:
        return model
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if type(child) is composed:
                setattr(module, child_name, ACT2FN["gelu_pytorch_tanh"])
    return model


def freeze(model: nn.Module) -> nn.Module:
    """Put ``model`` in eval mode with no gradients; returns it."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def frozen_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` with no gradients: the reference policy."""
    return freeze(copy.deepcopy(model))


def load_causal_lm(spec: str, tokenizer: Any, *, seed: Optional[int] = None) -> nn.Module:
    """A causal LM from a built-in name (fresh weights) or a local directory.

    ``tokenizer`` fixes the vocabulary size and the pad/eos/bos ids of a built-in model.
    ``seed`` (built-in only) makes the fresh weights reproducible.
    """
    from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

    if spec in BUILTIN_MODELS:
        config = GPT2Config(
            vocab_size=len(tokenizer),
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            bos_token_id=getattr(tokenizer, "bos_token_id", None) or tokenizer.eos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            **BUILTIN_MODELS[spec],
        )
        if seed is not None:
            torch.manual_seed(seed)
        return GPT2LMHeadModel(config)
    path = Path(spec)
    if path.is_dir():
        model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
        if len(tokenizer) > model.get_input_embeddings().num_embeddings:
            raise InvalidArgumentError(
                f"model: {spec!r} has {model.get_input_embeddings().num_embeddings} embeddings "
                f"but the tokenizer has {len(tokenizer)} tokens"
            )
        return model
    raise InvalidArgumentError(
        f"model: expected one of {sorted(BUILTIN_MODELS)} or a local model directory, got {spec!r}"
    )


def backbone_of(causal_lm: nn.Module) -> nn.Module:
    """The transformer trunk of a causal LM (without its LM head)."""
    return causal_lm.base_model


def causal_lm_parts(causal_lm: nn.Module) -> tuple[nn.Module, nn.Module] | None:
    """``(trunk, lm_head)`` of a ``transformers`` causal LM (peft-wrapped ones too), or None.

    ``lm_head(trunk(...).last_hidden_state)`` are the model's logits for every architecture
    whose head is a plain projection. Models that scale or soft-cap their logits after the
    projection (Gemma-2's ``final_logit_softcapping``, Cohere's ``logit_scale``) give None,
    and callers fall back to the full forward.
    """
    model = causal_lm.get_base_model() if hasattr(causal_lm, "get_base_model") else causal_lm
    config = getattr(model, "config", None)
    if getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None):
        return None
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    trunk = getattr(model, "base_model", None)
    if head is None or trunk is None or trunk is model:
        return None
    return trunk, head


class TokenScores(NamedTuple):
    """Per next-token position ``s`` (it scores token ``s + 1``), each ``[B, L-1]`` float32.

    ``logprobs`` and ``entropy`` hold 0 where the position was not scored; ``entropy`` is
    None unless asked for.
    """

    logprobs: torch.Tensor
    values: torch.Tensor
    entropy: Optional[torch.Tensor]


def scored_positions(attention_mask: torch.Tensor, start: int = 0) -> torch.Tensor:
    """``[B, L-1]`` bool: next-token positions whose token (``s + 1``) is attended and ``>= start``."""
    scored = attention_mask[:, 1:].bool().clone()
    scored[:, : max(start - 1, 0)] = False
    return scored


def next_token_logprobs(
    causal_lm: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    scored: torch.Tensor,
    *,
    temperature: float = 1.0,
    entropy: bool = False,
) -> tuple[torch.Tensor, Optional[torch.Tensor], torch.Tensor]:
    """Logprob of each scored next token under ``softmax(logits / temperature)``.

    ``input_ids``, ``attention_mask``: ``[B, L]``; ``scored``: ``[B, L-1]`` bool (see
    ``scored_positions``). Returns ``(logprobs [B, L-1], entropy [B, L-1] or None, hidden
    [B, L, H])``. The LM head runs only on the ``N`` scored positions (``[N, V]`` logits
    instead of ``[B, L, V]``), which is where the time and memory go with a large vocabulary.
    Equivalent to ``token_logprobs(causal_lm(input_ids).logits[:, :-1] / temperature,
    input_ids[:, 1:]) * scored``.
    """
    kwargs = dict(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        use_cache=False,
    )
    parts = causal_lm_parts(causal_lm)
    if parts is None:  # the model post-processes its logits: take them whole
        out = causal_lm(**kwargs, output_hidden_states=True)
        hidden, logits = out.hidden_states[-1], out.logits[:, :-1][scored]
    else:
        trunk, head = parts
        hidden = trunk(**kwargs).last_hidden_state  # (B, L, H)
        logits = head(hidden[:, :-1][scored])  # (N, V)
    logits = logits.float() / temperature
    picked = token_logprobs(logits, input_ids[:, 1:][scored])  # (N,)
    logprobs = torch.zeros(scored.shape, dtype=picked.dtype, device=picked.device)
    logprobs = logprobs.masked_scatter(scored, picked)
    ent = None
    if entropy:
        ent = torch.zeros_like(logprobs).masked_scatter(scored, entropy_from_logits(logits))
    return logprobs, ent, hidden


def hidden_size_of(model: nn.Module) -> int:
    config = model.config
    for name in ("hidden_size", "n_embd", "d_model"):
        if hasattr(config, name):
            return int(getattr(config, name))
    raise InvalidArgumentError(f"model: cannot find the hidden size in {type(config).__name__}")


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of each row's last attended token, ``[B]`` int64; works for left and right padding."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (attention_mask.long() * (positions + 1)).argmax(-1)


# ---------------------------------------------------------------------- policy + value head
class PolicyWithValueHead(nn.Module):
    """A causal LM policy plus a scalar value per token.

    With ``critic=None`` the value head reads the policy's last hidden state (shared
    trunk); otherwise ``critic`` is a separate trunk (e.g. a copy of the SFT model's) and
    the head reads its hidden state.

    ``forward(input_ids [B, L], attention_mask [B, L], scored [B, L-1])`` -> ``TokenScores``
    (next-token logprobs on the scored positions, values everywhere): the LM head runs only
    where a logprob is needed.
    """

    def __init__(
        self, policy: nn.Module, critic: Optional[nn.Module] = None, value_hidden: int = 0
    ) -> None:
        super().__init__()
        self.policy = policy
        self.critic = critic
        width = hidden_size_of(critic if critic is not None else policy)
        if value_hidden > 0:  # a small MLP: more room to read values off shared features
            self.value_head: nn.Module = nn.Sequential(
                nn.Linear(width, value_hidden), nn.Tanh(), nn.Linear(value_hidden, 1)
            )
        else:
            self.value_head = nn.Linear(width, 1)
        last = (
            self.value_head[-1] if isinstance(self.value_head, nn.Sequential) else self.value_head
        )
        nn.init.zeros_(last.weight)  # values start at 0: no made-up baseline
        nn.init.zeros_(last.bias)

    @property
    def shared_trunk(self) -> bool:
        return self.critic is None

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        scored: Optional[torch.Tensor] = None,
        *,
        temperature: float = 1.0,
        entropy: bool = False,
    ) -> TokenScores:
        """Logprobs (and entropy) of the ``scored`` next tokens, values of every position.

        ``input_ids``, ``attention_mask``: ``[B, L]``; ``scored``: ``[B, L-1]`` bool,
        default every attended next token. ``values[b, s]`` estimates the return from the
        state after token ``s``. See ``next_token_logprobs`` for the logprobs.
        """
        if scored is None:
            scored = scored_positions(attention_mask)
        logprobs, ent, hidden = next_token_logprobs(
            self.policy, input_ids, attention_mask, scored, temperature=temperature, entropy=entropy
        )
        if not self.shared_trunk:
            hidden = self.critic_hidden(input_ids, attention_mask)
        return TokenScores(logprobs, self.values_from_hidden(hidden[:, :-1]), ent)

    def critic_hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The separate critic's last hidden state ``[B, L, H]``."""
        assert self.critic is not None
        return self.critic(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids_from_mask(attention_mask),
            use_cache=False,
        ).last_hidden_state

    def values_from_hidden(self, hidden: torch.Tensor) -> torch.Tensor:
        """Value head on hidden states ``[..., H]`` -> ``[...]`` float32."""
        dtype = next(self.value_head.parameters()).dtype
        return self.value_head(hidden.to(dtype)).squeeze(-1).float()

    @torch.no_grad()
    def generate(self, **kwargs: Any) -> torch.Tensor:
        """``policy.generate`` (KV cache, batched)."""
        return self.policy.generate(**kwargs)

    def save_pretrained(self, directory: str | Path) -> None:
        """Policy as a ``transformers`` directory (LoRA merged), plus the value head (and critic)."""
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        policy = self.policy
        if hasattr(policy, "merge_and_unload"):  # a peft model: write a plain model
            policy = copy.deepcopy(policy).merge_and_unload()
        policy.save_pretrained(path)
        value_parts = nn.ModuleDict({"value_head": self.value_head})
        if self.critic is not None:
            value_parts["critic"] = self.critic
        save_model(value_parts, str(path / VALUE_HEAD_FILE))


# ---------------------------------------------------------------------- reward model
class RewardModel(nn.Module):
    """A transformer trunk and a scalar head read at each row's last attended token.

    ``forward(input_ids [B, T], attention_mask [B, T])`` -> scores ``[B]`` float32, for
    left- or right-padded rows alike. ``score_mean`` / ``score_std`` are statistics of the
    scores on held-out data, recorded by the reward trainer so that PPO can normalise.
    """

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(hidden_size_of(backbone), 1)
        nn.init.normal_(self.head.weight, std=1.0 / (hidden_size_of(backbone) + 1) ** 0.5)
        nn.init.zeros_(self.head.bias)
        self.score_mean = 0.0
        self.score_std = 1.0

    @classmethod
    def from_causal_lm(cls, causal_lm: nn.Module) -> RewardModel:
        """A reward model whose trunk starts from ``causal_lm``'s (its LM head is dropped)."""
        return cls(backbone_of(causal_lm))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.backbone(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids_from_mask(attention_mask),
            use_cache=False,
        ).last_hidden_state  # (B, T, H)
        last = last_token_index(attention_mask)  # (B,)
        return self.head_on(hidden[torch.arange(hidden.shape[0], device=hidden.device), last])

    def head_on(self, last_hidden: torch.Tensor) -> torch.Tensor:
        """Scores ``[B]`` float32 from the trunk's hidden states at the last tokens ``[B, H]``."""
        return self.head(last_hidden.to(self.head.weight.dtype)).squeeze(-1).float()

    def save_pretrained(self, directory: str | Path) -> None:
        """Write the trunk config, all weights (safetensors) and the score statistics."""
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        self.backbone.config.save_pretrained(path)
        save_model(self, str(path / "model.safetensors"))
        meta = {"score_mean": self.score_mean, "score_std": self.score_std}
        (path / REWARD_MODEL_FILE).write_text(json.dumps(meta, indent=2))

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> RewardModel:
        """Read a reward model written by ``save_pretrained``."""
        from transformers import AutoConfig, AutoModel

        path = Path(directory)
        if not (path / REWARD_MODEL_FILE).is_file():
            raise InvalidArgumentError(
                f"reward_model: {str(path)!r} holds no {REWARD_MODEL_FILE}; "
                "expected a directory written by the reward trainer"
            )
        backbone = AutoModel.from_config(AutoConfig.from_pretrained(path))
        model = cls(backbone)
        load_model(model, str(path / "model.safetensors"))
        meta = json.loads((path / REWARD_MODEL_FILE).read_text())
        model.score_mean, model.score_std = float(meta["score_mean"]), float(meta["score_std"])
        return model


# ---------------------------------------------------------------------- sampling
@torch.no_grad()
def generate_responses(
    model: nn.Module,
    tokenizer: Any,
    prompts: list[str],
    *,
    max_new_tokens: int,
    batch_size: int = 256,
    temperature: float = 1.0,
    device: Optional[torch.device] = None,
) -> list[str]:
    """Sample one response per prompt (batched, left-padded prompts, KV cache, stop at EOS)."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    texts: list[str] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        ids, mask = pad_rows(
            [encode_text(tokenizer, p) for p in chunk], tokenizer.pad_token_id, side="left"
        )
        out = model.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            do_sample=True,
            temperature=temperature,
            top_k=0,
            top_p=1.0,
            max_new_tokens=max_new_tokens,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        texts.extend(tokenizer.batch_decode(out[:, ids.shape[1] :], skip_special_tokens=True))
    model.train(was_training)
    return texts


def pad_rows(
    rows: Sequence[Sequence[int]], pad_id: int, *, side: str = "right"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ragged id lists -> ``(ids [B, T] int64, mask [B, T] int64)`` padded on ``side``."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if side == "right":
            ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
            mask[i, : len(r)] = 1
        else:
            ids[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
            mask[i, width - len(r) :] = 1
    return ids, mask
