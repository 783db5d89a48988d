"""The pairs to label: read from a JSONL file, or sampled from a policy (two answers per prompt).

A pairs file holds one object per line, ``{"prompt", "candidate_0", "candidate_1"}`` and an
optional ``"pair_id"``; without one, the id is a hash of the three texts, so it stays the same
when the file is read again. Sampled pairs are saved beside the preference file
(``prefs.pairs.jsonl`` for ``prefs.jsonl``) and read back on a restart: sampling again would
give other answers, and the choices already made would refer to pairs that no longer exist.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlhf_fast.data import DataValidationError
from rlhf_fast.errors import InvalidArgumentError

__all__ = ["Pair", "load_pairs", "pair_id_of", "sample_pairs", "save_pairs"]

# Ids travel in URLs and JSON; keep them to a plain alphabet.
PAIR_ID_PATTERN = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


@dataclass(frozen=True)
class Pair:
    """Two answers to one prompt; ``candidate_0``/``candidate_1`` in the order they were given."""

    pair_id: str
    prompt: str
    candidate_0: str
    candidate_1: str

    def to_json(self) -> dict[str, str]:
        return {
            "pair_id": self.pair_id,
            "prompt": self.prompt,
            "candidate_0": self.candidate_0,
            "candidate_1": self.candidate_1,
        }


def pair_id_of(prompt: str, candidate_0: str, candidate_1: str) -> str:
    """A stable id for a pair without one: the first 16 hex digits of a hash of its texts."""
    digest = hashlib.sha256(json.dumps([prompt, candidate_0, candidate_1]).encode("utf-8"))
    return digest.hexdigest()[:16]


def load_pairs(path: str | os.PathLike[str]) -> list[Pair]:
    """Read a pairs file; a malformed line raises :class:`DataValidationError` (file and line)."""
    path = Path(path)
    if not path.is_file():
        raise InvalidArgumentError(f"pairs: {str(path)!r}: no such file")
    pairs: list[Pair] = []
    seen: dict[str, int] = {}
    with path.open("r", encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue

            def error(field: str | None, reason: str, n: int = line_number) -> DataValidationError:
                return DataValidationError(str(path), "line", n, field, reason)

            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise error(None, f"invalid JSON: {exc.msg} (column {exc.colno})") from None
            if not isinstance(record, dict):
                raise error(None, f"expected an object, got {type(record).__name__}")
            texts = []
            for name in ("prompt", "candidate_0", "candidate_1"):
                value = record.get(name)
                if not isinstance(value, str):
                    raise error(name, "missing" if value is None else "expected a string")
                if name != "prompt" and not value.strip():
                    raise error(name, "empty text")
                texts.append(value)
            if texts[1] == texts[2]:
                raise error("candidate_1", "the same text as candidate_0: nothing to compare")
            pair_id = record.get("pair_id", pair_id_of(*texts))
            if not isinstance(pair_id, str) or not PAIR_ID_PATTERN.fullmatch(pair_id):
                raise error("pair_id", f"expected 1-64 of A-Z a-z 0-9 _ . : -, got {pair_id!r}")
            if pair_id in seen:
                raise error("pair_id", f"{pair_id!r} already used on line {seen[pair_id]}")
            seen[pair_id] = line_number
            pairs.append(Pair(pair_id, *texts))
    if not pairs:
        raise InvalidArgumentError(f"pairs: {str(path)!r} holds no pairs")
    return pairs


def save_pairs(path: str | os.PathLike[str], pairs: Sequence[Pair]) -> None:
    """Write ``pairs`` as a pairs file, atomically (a temporary file renamed into place)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        for pair in pairs:
            handle.write(json.dumps(pair.to_json(), ensure_ascii=False) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def sample_pairs(
    prompts: Sequence[str],
    policy: str,
    *,
    tokenizer: str = "",
    max_new_tokens: int = 48,
    temperature: float = 1.0,
    seed: int = 0,
    device: str = "auto",
) -> tuple[list[Pair], int]:
    """Two samples per prompt from ``policy`` (a local model directory or a built-in name).

    Returns ``(pairs, n_dropped)``: a prompt whose two answers are identical or empty gives
    no pair (there is nothing to choose between), and is counted.
    """
    import torch

    from rlhf_fast.models import generate_responses, load_causal_lm, resolve_device
    from rlhf_fast.tokenizer import load_tokenizer

    tok: Any = load_tokenizer(tokenizer or (policy if Path(policy).is_dir() else "bytes"))
    device_ = resolve_device(device)
    model = load_causal_lm(policy, tok, seed=seed).to(device_)
    torch.manual_seed(seed)
    doubled = [p for p in prompts for _ in range(2)]
    answers = generate_responses(
        model,
        tok,
        doubled,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        device=device_,
    )
    pairs, dropped, seen = [], 0, set()
    for i, prompt in enumerate(prompts):
        a, b = answers[2 * i].strip(), answers[2 * i + 1].strip()
        pair_id = pair_id_of(prompt, a, b)
        if not a or not b or a == b or pair_id in seen:
            dropped += 1
            continue
        seen.add(pair_id)
        pairs.append(Pair(pair_id, prompt, a, b))
    return pairs, dropped
