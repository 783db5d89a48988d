"""A tokenizer that needs no downloaded files: bytes, plus an optional word vocabulary.

``Tokenizer()`` is a plain byte-level tokenizer (every UTF-8 byte is a token, so any text
round-trips exactly). ``Tokenizer(words=[...])`` adds whole-word tokens on top: text is
split on whitespace, a known word becomes one token, an unknown word is spelt out in byte
tokens (with its leading space), so nothing is ever lost but whitespace runs, which are
normalised to single spaces. The built-in demo uses a word vocabulary so that its
reviews are 10-30 tokens rather than 100 bytes.

Ids: ``0 <pad>``, ``1 <eos>``, ``2 <bos>``, ``3 <unk>`` (unused by encoding, kept for
compatibility), ``4 .. 259`` the bytes, then the words. The call interface mirrors the
Hugging Face tokenizers that ``transformers`` models expect: ``tok(texts,
padding_side="left", return_tensors="pt")`` gives ``input_ids`` and ``attention_mask``,
and ``pad_token_id`` / ``eos_token_id`` go straight to ``model.generate``.

``load_tokenizer(spec)`` returns one of these for ``"bytes"``, ``"demo-words"`` or a
directory holding ``rlhf_fast_tokenizer.json``; any other directory is handed to
``transformers.AutoTokenizer`` (local files only).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

from rlhf_fast.errors import InvalidArgumentError

TOKENIZER_FILE = "rlhf_fast_tokenizer.json"
SPECIAL_TOKENS = ("<pad>", "<eos>", "<bos>", "<unk>")
BYTE_OFFSET = len(SPECIAL_TOKENS)


class Tokenizer:
    """Byte-level tokenizer with optional whole-word tokens; no files needed.

    Args:
        words: whole-word tokens (no whitespace inside, no duplicates). Empty means pure bytes.
    """

    pad_token = "<pad>"
    eos_token = "<eos>"
    bos_token = "<bos>"
    pad_token_id = 0
    eos_token_id = 1
    bos_token_id = 2
    unk_token_id = 3

    def __init__(self, words: Sequence[str] = ()) -> None:
        words = list(words)
        for w in words:
            if not isinstance(w, str) or not w or any(c.isspace() for c in w):
                raise InvalidArgumentError(
                    f"words: expected non-empty strings without whitespace, got {w!r}"
                )
        if len(set(words)) != len(words):
            raise InvalidArgumentError("words: expected no duplicates")
        self.words = words
        self._word_to_id = {w: BYTE_OFFSET + 256 + i for i, w in enumerate(words)}
        self.padding_side = "right"

    # ------------------------------------------------------------------ sizes and names
    @property
    def vocab_size(self) -> int:
        return BYTE_OFFSET + 256 + len(self.words)

    def __len__(self) -> int:
        return self.vocab_size

    # ------------------------------------------------------------------ encode / decode
    def encode(self, text: str, *, add_eos: bool = False) -> list[int]:
        """Token ids of ``text`` (a list of ints), with ``<eos>`` appended when asked."""
        if not isinstance(text, str):
            raise InvalidArgumentError(f"text: expected a str, got {type(text).__name__}")
        if not self.words:
            ids = [BYTE_OFFSET + b for b in text.encode("utf-8")]
        else:
            ids = []
            for i, word in enumerate(text.split()):
                wid = self._word_to_id.get(word)
                if wid is not None:
                    ids.append(wid)
                else:  # spell it out, with the space that separates it from the previous word
                    spelt = word if i == 0 else " " + word
                    ids.extend(BYTE_OFFSET + b for b in spelt.encode("utf-8"))
        if add_eos:
            ids.append(self.eos_token_id)
        return ids

    def decode(self, ids: Sequence[int] | Any, *, skip_special_tokens: bool = True) -> str:
        """Text of ``ids`` (list or 1-D tensor); special tokens are dropped when asked."""
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        out = bytearray()
        first = True
        for tid in ids:
            tid = int(tid)
            if tid < BYTE_OFFSET:
                if not skip_special_tokens:
                    out.extend(SPECIAL_TOKENS[tid].encode())
                continue
            if tid < BYTE_OFFSET + 256:
                out.append(tid - BYTE_OFFSET)
            elif tid < self.vocab_size:
                word = self.words[tid - BYTE_OFFSET - 256]
                out.extend(((" " if not first else "") + word).encode("utf-8"))
            else:
                raise InvalidArgumentError(
                    f"ids: token id {tid} is outside the vocabulary of size {self.vocab_size}"
                )
            first = False
        return out.decode("utf-8", errors="replace")

    def batch_decode(self, batch: Any, *, skip_special_tokens: bool = True) -> list[str]:
        """``decode`` for each row of a ``[B, T]`` tensor or a list of id lists."""
        return [self.decode(row, skip_special_tokens=skip_special_tokens) for row in batch]

    def __call__(
        self,
        texts: str | Sequence[str],
        *,
        padding_side: Optional[str] = None,
        add_eos: bool = False,
        max_length: Optional[int] = None,
        truncation_side: str = "left",
        return_tensors: Optional[str] = "pt",
    ) -> dict[str, Any]:
        """Encode and pad a batch.

        Returns ``{"input_ids": [B, T] int64, "attention_mask": [B, T] int64}`` (torch
        tensors when ``return_tensors == "pt"``, else lists). ``padding_side`` defaults to
        ``self.padding_side``; use ``"left"`` for prompts that are fed to ``generate``.
        Rows longer than ``max_length`` keep their last tokens (``truncation_side="left"``)
        or their first ones (``"right"``).
        """
        if isinstance(texts, str):
            texts = [texts]
        side = padding_side or self.padding_side
        if side not in ("left", "right"):
            raise InvalidArgumentError(f"padding_side: expected 'left' or 'right', got {side!r}")
        rows = [self.encode(t, add_eos=add_eos) for t in texts]
        if max_length is not None:
            rows = [
                (r[-max_length:] if truncation_side == "left" else r[:max_length])
                if len(r) > max_length
                else r
                for r in rows
            ]
        width = max((len(r) for r in rows), default=0)
        ids, mask = [], []
        for r in rows:
            pad = [self.pad_token_id] * (width - len(r))
            ones, zeros = [1] * len(r), [0] * (width - len(r))
            ids.append(pad + r if side == "left" else r + pad)
            mask.append(zeros + ones if side == "left" else ones + zeros)
        if return_tensors == "pt":
            import torch

            return {
                "input_ids": torch.tensor(ids, dtype=torch.long).reshape(len(rows), width),
                "attention_mask": torch.tensor(mask, dtype=torch.long).reshape(len(rows), width),
            }
        return {"input_ids": ids, "attention_mask": mask}

    # ------------------------------------------------------------------ persistence
    def save_pretrained(self, directory: str | Path) -> None:
        """Write ``rlhf_fast_tokenizer.json`` into ``directory``."""
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        payload = {"kind": "rlhf_fast", "version": 1, "words": self.words}
        (path / TOKENIZER_FILE).write_text(json.dumps(payload))

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> Tokenizer:
        """Read a tokenizer written by ``save_pretrained``."""
        payload = json.loads((Path(directory) / TOKENIZER_FILE).read_text())
        return cls(words=payload["words"])


# The "demo-words" vocabulary, in id order (saved tokenizers depend on it). The demo task
# builds the same list from its word sets; tests/test_demo.py checks the two agree.
DEMO_WORDS: tuple[str, ...] = tuple(
    "review : . write a short positive of kettle backpack lamp blender headphones tent "
    "toaster umbrella great excellent lovely sturdy reliable perfect love five awful "
    "flimsy broken useless terrible noisy hate one fine okay average plain ordinary three "
    "price design handle color box quality i it is the this feels think does job stars "
    "star and".split()
)


def load_tokenizer(spec: str) -> Any:
    """A tokenizer from a built-in name or a local directory (nothing is downloaded).

    ``"bytes"``: pure byte-level. ``"demo-words"``: bytes plus the demo task's words.
    A directory with ``rlhf_fast_tokenizer.json``: that tokenizer. Any other directory:
    ``transformers.AutoTokenizer.from_pretrained(spec, local_files_only=True)``, with the
    pad token set to EOS when the tokenizer has none.
    """
    if spec == "bytes":
        return Tokenizer()
    if spec == "demo-words":
        return Tokenizer(words=DEMO_WORDS)
    path = Path(spec)
    if (path / TOKENIZER_FILE).is_file():
        return Tokenizer.from_pretrained(path)
    if path.is_dir():
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token
        return tok
    raise InvalidArgumentError(
        f"tokenizer: expected 'bytes', 'demo-words' or a local directory with tokenizer files, "
        f"got {spec!r}"
    )


def encode_text(
    tokenizer: Any, text: str, *, add_eos: bool = False, continuation: bool = False
) -> list[int]:
    """Token ids of ``text`` with no special tokens (``<eos>`` appended when asked).

    ``continuation``: the text follows earlier text (HF BPE tokenizers need the space).
    Works with ``rlhf_fast.tokenizer.Tokenizer`` and Hugging Face tokenizers.
    """
    if isinstance(tokenizer, Tokenizer):
        return tokenizer.encode(text, add_eos=add_eos)
    ids = list(
        tokenizer(" " + text if continuation else text, add_special_tokens=False)["input_ids"]
    )
    if add_eos:
        ids.append(tokenizer.eos_token_id)
    return ids
