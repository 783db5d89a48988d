r"""Collect human preferences in the browser: a local labelling page that writes ``prefs.jsonl``.

    rlhf-fast label --prompts prompts.jsonl --policy runs/sft/model --out prefs.jsonl
    rlhf-fast label --pairs pairs.jsonl --out prefs.jsonl            # ready-made pairs
    rlhf-fast train-reward --model runs/sft/model --data prefs.jsonl  # the file as it is

Two answers per prompt are sampled from the policy (and saved as ``prefs.pairs.jsonl``,
reused on a restart), or taken from ``--pairs`` (JSONL of ``{prompt, candidate_0,
candidate_1}``, optional ``pair_id``). Open the printed URL, give a name, and pick the
better answer: 1 (left), 2 (right), 3 (tie), s (skip), u (undo the last choice). Each choice
is appended to ``--out`` and fsync'd before the page moves on; ``/stats`` shows progress,
counts per annotator, Cohen's kappa and position bias. A restart continues where it
stopped, and nobody is shown a pair twice (an undone one comes back). The server listens
on 127.0.0.1; with another ``--host`` it prints a URL holding a token, and refuses requests
without it. Ctrl-C stops it and prints a summary. The file format: ``rlhf_fast.label.store``.
"""

from __future__ import annotations

import secrets
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlhf_fast.config import RunConfig, redefault
from rlhf_fast.errors import InvalidArgumentError

__all__ = ["LabelConfig", "prepare_pairs", "run_label"]


def _option(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass
class LabelConfig:
    """The labelling server: where its pairs come from, where choices go, where it listens."""

    out: str = _option("prefs.jsonl", "Preference file the choices are appended to (JSONL).")
    pairs: str = _option(
        "", "Ready-made pairs (JSONL of {prompt, candidate_0, candidate_1}); empty: sample them."
    )
    prompts: str = _option("", "Prompts to sample two answers for (JSONL/Parquet with 'prompt').")
    policy: str = _option(
        "", "Policy that samples the answers: a local model directory or built-in name."
    )
    tokenizer: str = redefault(RunConfig, "tokenizer", "")
    max_prompts: int = _option(0, "Use at most this many prompts (0: all).")
    max_new_tokens: int = _option(48, "Longest sampled answer in tokens.")
    temperature: float = _option(1.0, "Sampling temperature.")
    # The settings every command shares keep their one help text in RunConfig.
    seed: int = redefault(RunConfig, "seed", 0)
    device: str = redefault(RunConfig, "device", "auto")
    host: str = _option(
        "127.0.0.1", "Address to listen on; any but loopback requires the token printed at start."
    )
    port: int = _option(8000, "Port to listen on (0: any free port).")


def pairs_path_of(out: Path) -> Path:
    """Where sampled pairs are kept: ``prefs.jsonl`` -> ``prefs.pairs.jsonl``."""
    return out.with_name(out.stem + ".pairs.jsonl")


def prepare_pairs(config: LabelConfig) -> list[Any]:
    """The pairs to label: ``config.pairs``, the saved sample of an earlier start, or a new
    sample of two answers per prompt from ``config.policy`` (then saved)."""
    from rlhf_fast.label.pairs import load_pairs, sample_pairs, save_pairs

    if config.pairs:
        return load_pairs(config.pairs)
    saved = pairs_path_of(Path(config.out))
    if saved.is_file():
        print(f"rlhf-fast label: reusing the pairs sampled before, {saved}")
        return load_pairs(saved)
    if not config.prompts or not config.policy:
        raise InvalidArgumentError(
            "pairs, prompts, policy: give --pairs FILE, or --prompts FILE and --policy MODEL "
            "to sample two answers per prompt"
        )
    from rlhf_fast.data import load_prompts

    prompts = list(load_prompts(config.prompts))
    if config.max_prompts > 0:
        prompts = prompts[: config.max_prompts]
    print(f"rlhf-fast label: sampling two answers to each of {len(prompts)} prompts ...")
    pairs, dropped = sample_pairs(
        prompts,
        config.policy,
        tokenizer=config.tokenizer,
        max_new_tokens=config.max_new_tokens,
        temperature=config.temperature,
        seed=config.seed,
        device=config.device,
    )
    if dropped:
        print(f"rlhf-fast label: {dropped} prompt(s) gave two identical or empty answers: left out")
    if not pairs:
        raise InvalidArgumentError("policy: no prompt gave two different answers to compare")
    save_pairs(saved, pairs)
    return pairs


def run_label(config: LabelConfig) -> dict[str, Any]:
    """The CLI entry point of ``rlhf-fast label``: serve until Ctrl-C, return a summary."""
    try:
        from rlhf_fast.label.server import LabelServer, create_app, is_loopback
    except ImportError as exc:
        raise InvalidArgumentError(
            f"rlhf-fast label needs the 'label' extra ({exc}): pip install 'rlhf_fast[label]'"
        ) from None
    from rlhf_fast.label.stats import label_stats
    from rlhf_fast.label.store import PreferenceStore

    if not 0 <= config.port <= 65535:
        raise InvalidArgumentError(f"port: expected 0-65535, got {config.port}")
    pairs = prepare_pairs(config)
    loopback = is_loopback(config.host)
    token = None if loopback else secrets.token_urlsafe(18)
    with PreferenceStore(config.out, pairs) as store:
        server = LabelServer(
            create_app(store, token=token, loopback=loopback), config.host, config.port
        )
        done = len(store.judgements())
        url = server.url
        if config.host in ("0.0.0.0", "::", ""):  # every interface: name one others can reach
            url = f"http://{socket.gethostname()}:{server.port}"
        print(
            f"rlhf-fast label: {len(pairs)} pairs, {done} judgement(s) already in {config.out}\n"
            f"  open {url}/" + (f"?token={token}" if token else "") + "\n"
            f"  statistics at {url}/stats; Ctrl-C stops the server",
            flush=True,
        )
        if token:
            print(f"  token (listening beyond this machine): {token}", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:  # uvicorn re-raises Ctrl-C after a clean shutdown
            pass
        summary = label_stats(store.judgements(), len(store.pairs))
    return {"stage": "label", "out": str(config.out), **summary}
