"""TRL drop-ins (rlhf_fast.integrations.trl): against plain loops written here with
TRL's conventions (always run), and against TRL 1.12.0's own code (run where TRL is
importable: ``.venv-bench/bin/python -m pytest tests/test_integrations_trl.py``).

TRL computes its advantages inline in trainer methods, so the TRL-side tests execute
the exact advantage lines of the installed trainer (cut out of
``GRPOTrainer._generate_and_score_completions``, ``RLOOTrainer._generate_and_score_completions``
and ``PPOTrainer.train`` between two marker statements) on the same tensors."""

from __future__ import annotations

import inspect
import math
import textwrap
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

from rlhf_fast.integrations import trl as rt  # noqa: E402

try:
    from trl.experimental.ppo import ppo_trainer as trl_ppo
    from trl.trainer import grpo_trainer as trl_grpo
    from trl.trainer import rloo_trainer as trl_rloo
    from trl.trainer.utils import nanstd as trl_nanstd

    HAVE_TRL = True
except ImportError:  # the main .venv has no trl
    HAVE_TRL = False

needs_trl = pytest.mark.skipif(
    not HAVE_TRL,
    reason="trl is not importable here; run under .venv-bench "
    "(bash scripts/setup_bench_env.sh; .venv-bench/bin/python -m pytest tests/test_integrations_trl.py)",
)


def _tol(dtype):
    return dict(rtol=1e-5, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-9, atol=1e-9)


def _trl_tol(dtype):
    """TRL's ``nanstd`` and ``masked_var`` compute the Bessel factor ``count / (count - 1)``
    from integer counts, which torch divides in float32: float64 results agree to ~1e-8."""
    return _tol(dtype) if dtype == torch.float32 else dict(rtol=1e-7, atol=1e-7)


# ------------------------------------------------------------------ inputs
@st.composite
def group_rewards(draw: st.DrawFn):
    g = draw(st.integers(1, 8))
    groups = draw(st.integers(1, 6))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    r = rng.standard_normal(groups * g) * draw(st.sampled_from([0.1, 1.0, 30.0]))
    if draw(st.booleans()):  # binary verifiable rewards: all-equal groups are likely
        r = (rng.random(groups * g) < 0.5).astype(np.float64)
    if draw(st.booleans()):  # unscorable completions (every reward function returned None)
        r[rng.random(r.size) < 0.3] = np.nan
    return torch.from_numpy(r).to(dtype), g


# ------------------------------------------------------------------ plain loops
def _nanmean(x: np.ndarray) -> float:
    x = x[~np.isnan(x)]
    return float(x.mean()) if x.size else math.nan


def _nanstd(x: np.ndarray) -> float:
    x = x[~np.isnan(x)]
    return float(np.std(x, ddof=1)) if x.size > 1 else math.nan


def _loop_grpo(r: np.ndarray, g: int, scale: str) -> np.ndarray:
    out = np.zeros_like(r)
    batch_std = _nanstd(r) if r.size > 1 else 0.0
    for start in range(0, r.size, g):
        grp = r[start : start + g]
        mean = _nanmean(grp)
        std = batch_std if scale == "batch" else (_nanstd(grp) if g > 1 else 0.0)
        for i, x in enumerate(grp):
            a = x - mean
            if scale != "none":
                a = a / (std + 1e-4)
            out[start + i] = 0.0 if math.isnan(a) else a
    return out


def _loop_rloo(r: np.ndarray, g: int, normalize: bool) -> np.ndarray:
    if g == 1:
        return np.zeros_like(r)
    adv = np.full_like(r, np.nan)
    for start in range(0, r.size, g):
        grp = r[start : start + g]
        ok = ~np.isnan(grp)
        for i, x in enumerate(grp):
            others = [grp[j] for j in range(g) if j != i and ok[j]]
            if ok[i] and others:
                adv[start + i] = x - sum(others) / len(others)
    if normalize:
        adv = (adv - _nanmean(adv)) / (_nanstd(adv) + 1e-4)
    return np.nan_to_num(adv, nan=0.0)


def _loop_ppo(lp, ref, values, scores, seq_len, coef, estimator, gamma, lam, whiten_rewards):
    b, t = lp.shape
    kl = np.zeros_like(lp)
    rewards = np.zeros_like(lp)
    for i in range(b):
        for j in range(t):
            if j <= seq_len[i]:
                lr = lp[i, j] - ref[i, j]
                kl[i, j] = lr if estimator == "k1" else math.exp(-lr) - 1 + lr
            rewards[i, j] = -coef * kl[i, j]
        end = seq_len[i] + 1 if seq_len[i] + 1 < t else seq_len[i]
        rewards[i, end] += scores[i]
    if whiten_rewards:
        m = np.arange(t)[None, :] <= (seq_len + 1)[:, None]
        sel = rewards[m]
        rewards = np.where(
            m, (rewards - sel.mean()) / np.sqrt(sel.var(ddof=1) + 1e-8) + sel.mean(), 0
        )
    v = np.where(np.arange(t)[None, :] > (seq_len + 1)[:, None], 0.0, values)
    adv = np.zeros_like(lp)
    for i in range(b):
        last = 0.0
        for j in reversed(range(t)):
            nxt = v[i, j + 1] if j < t - 1 else 0.0
            last = rewards[i, j] + gamma * nxt - v[i, j] + gamma * lam * last
            adv[i, j] = last
    ret = adv + v
    m = np.arange(t)[None, :] <= seq_len[:, None]
    sel = adv[m]
    adv = np.where(m, (adv - sel.mean()) / np.sqrt(sel.var(ddof=1) + 1e-8), 0.0)
    return rewards, kl, adv, ret


# ------------------------------------------------------------------ against the loops
@settings(deadline=None, max_examples=60)
@given(data=group_rewards(), scale=st.sampled_from(rt.SCALE_REWARDS))
def test_grpo_matches_loop(data, scale):
    r, g = data
    got = rt.grpo_advantages(r, g, scale)
    assert got.dtype == r.dtype and got.shape == r.shape
    want = _loop_grpo(r.double().numpy(), g, scale)
    np.testing.assert_allclose(got.double().numpy(), want, **_tol(r.dtype))


@settings(deadline=None, max_examples=60)
@given(data=group_rewards(), normalize=st.booleans())
def test_rloo_matches_loop(data, normalize):
    r, g = data
    got = rt.rloo_advantages(r, g, normalize)
    assert got.dtype == r.dtype and got.shape == r.shape
    want = _loop_rloo(r.double().numpy(), g, normalize)
    np.testing.assert_allclose(got.double().numpy(), want, **_tol(r.dtype))


def _ppo_case(seed: int, b: int, t: int, dtype):
    g = torch.Generator().manual_seed(seed)
    lp = -torch.rand(b, t, generator=g, dtype=torch.float64).to(dtype) * 3
    ref = -torch.rand(b, t, generator=g, dtype=torch.float64).to(dtype) * 3
    values = torch.randn(b, t, generator=g, dtype=torch.float64).to(dtype)
    scores = torch.randn(b, generator=g, dtype=torch.float64).to(dtype)
    # the index of the last response token; T - 1 for a response without padding
    seq_len = torch.randint(0, t, (b,), generator=g)
    seq_len[0] = t - 1
    return lp, ref, values, scores, seq_len


PPO_CASES = [(s, b, t) for s in range(2) for b, t in [(1, 3), (4, 9), (7, 33)]]


@pytest.mark.parametrize("seed,b,t", PPO_CASES)
@pytest.mark.parametrize("estimator", ["k1", "k3"])
@pytest.mark.parametrize("whiten_rewards", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ppo_matches_loop(seed, b, t, estimator, whiten_rewards, dtype):
    lp, ref, values, scores, seq_len = _ppo_case(seed, b, t, dtype)
    rewards, kl = rt.ppo_rewards(lp, ref, scores, seq_len, 0.05, estimator, whiten_rewards)
    adv, ret = rt.ppo_advantages(rewards, values, seq_len, 1.0, 0.95)
    want = _loop_ppo(
        *(x.double().numpy() for x in (lp, ref, values, scores)),
        seq_len.numpy(),
        0.05,
        estimator,
        1.0,
        0.95,
        whiten_rewards,
    )
    for got, w in zip((rewards, kl, adv, ret), want):
        assert got.dtype == dtype
        np.testing.assert_allclose(got.double().numpy(), w, **_tol(dtype))


def test_ppo_score_goes_after_the_last_token():
    lp = torch.zeros(3, 5)
    seq_len = torch.tensor([1, 4, 3])  # row 1 fills the row: the score stays on its last token
    rewards, _ = rt.ppo_rewards(lp, lp, torch.tensor([1.0, 2.0, 3.0]), seq_len, 0.1)
    assert rewards.nonzero().tolist() == [[0, 2], [1, 4], [2, 4]]


def test_rloo_kl_rewards_match_loop():
    g = torch.Generator().manual_seed(3)
    old, ref = torch.randn(6, 11, generator=g), torch.randn(6, 11, generator=g)
    mask = (torch.rand(6, 11, generator=g) < 0.7).long()
    r = torch.randn(6, generator=g)
    r[2] = float("nan")
    got = rt.rloo_kl_rewards(r, old, ref, mask, 0.1, reward_clip_range=(-0.5, 0.5))
    want = r.clamp(-0.5, 0.5) - 0.1 * ((old - ref) * mask).sum(-1)
    torch.testing.assert_close(got, want, equal_nan=True)
    assert rt.rloo_kl_rewards(r, old, ref, mask, 0.0) is r


def test_sum_rewards_marks_unscorable():
    per_func = torch.tensor([[1.0, float("nan")], [float("nan"), float("nan")], [2.0, 3.0]])
    got = rt.sum_rewards(per_func, [1.0, 0.5])
    torch.testing.assert_close(got, torch.tensor([1.0, float("nan"), 3.5]), equal_nan=True)


def test_masked_moments_match_loop():
    g = torch.Generator().manual_seed(4)
    x, m = torch.randn(5, 13, generator=g), torch.rand(5, 13, generator=g) < 0.6
    sel = x[m].double().numpy()
    assert math.isclose(float(rt.masked_mean(x, m)), sel.mean(), rel_tol=1e-6)
    assert math.isclose(float(rt.masked_var(x, m)), sel.var(ddof=1), rel_tol=1e-5)
    want = (x.double().numpy() - sel.mean()) / np.sqrt(sel.var(ddof=1) + 1e-8)
    np.testing.assert_allclose(rt.masked_whiten(x, m).double().numpy(), want, rtol=1e-5, atol=1e-5)


def test_bad_arguments():
    with pytest.raises(ValueError, match="scale_rewards"):
        rt.grpo_advantages(torch.zeros(4), 2, "groups")
    with pytest.raises(ValueError, match="multiple of num_generations"):
        rt.rloo_advantages(torch.zeros(5), 2)
    with pytest.raises(ValueError, match="k1 or k3"):
        rt.ppo_rewards(
            torch.zeros(1, 2), torch.zeros(1, 2), torch.zeros(1), torch.zeros(1), 0.1, "k2"
        )


# ------------------------------------------------------------------ against TRL 1.12.0's code
def _block(fn, first: str, last: str):
    """The statements of ``fn`` from the line containing ``first`` through the line
    containing ``last``, compiled: TRL's own advantage code, run as it is written."""
    lines = inspect.getsource(fn).splitlines()
    start = next(i for i, line in enumerate(lines) if first in line)
    end = next(i for i, line in enumerate(lines) if i >= start and last in line)
    return compile(
        textwrap.dedent("\n".join(lines[start : end + 1])), f"<{fn.__qualname__}>", "exec"
    )


def _per_func(rewards: torch.Tensor, seed: int, k: int = 2):
    """``[N, K]`` rewards whose weighted NaN-aware sum is ``rewards``' pattern."""
    g = torch.Generator().manual_seed(seed)
    per = torch.randn(rewards.numel(), k, generator=g, dtype=torch.float64).to(rewards.dtype)
    per[torch.isnan(rewards)] = float("nan")
    per[torch.rand(rewards.numel(), generator=g) < 0.2, 0] = float("nan")  # one func abstains
    return per


@needs_trl
@settings(deadline=None, max_examples=40)
@given(data=group_rewards(), scale=st.sampled_from(rt.SCALE_REWARDS), seed=st.integers(0, 99))
def test_grpo_matches_trl(data, scale, seed):
    r, g = data
    per_func = _per_func(r, seed)
    weights = torch.tensor([1.0, 0.5], dtype=r.dtype)
    code = _block(
        trl_grpo.GRPOTrainer._generate_and_score_completions,
        "unscorable_mask = torch.isnan(rewards_per_func)",
        "advantages = torch.nan_to_num(advantages, nan=0.0)",
    )
    self = SimpleNamespace(
        multi_objective_aggregation="sum_then_normalize",
        reward_weights=weights,
        scale_rewards=scale,
        reward_funcs=[None, None],
    )
    ns = dict(torch=torch, nanstd=trl_nanstd, self=self, device="cpu")
    ns.update(rewards_per_func=per_func, num_generations=g)
    exec(code, ns)
    got = rt.grpo_advantages(rt.sum_rewards(per_func, weights), g, scale)
    np.testing.assert_allclose(
        got.double().numpy(), ns["advantages"].double().numpy(), **_trl_tol(r.dtype)
    )


@needs_trl
@settings(deadline=None, max_examples=40)
@given(
    data=group_rewards(),
    normalize=st.booleans(),
    beta=st.sampled_from([0.0, 0.05]),
    clip=st.sampled_from([None, (-1.0, 1.0)]),
    seed=st.integers(0, 99),
)
def test_rloo_matches_trl(data, normalize, beta, clip, seed):
    r, g = data
    per_func = _per_func(r, seed)
    weights = torch.tensor([1.0, 0.5], dtype=r.dtype)
    gen = torch.Generator().manual_seed(seed)
    n, t = r.numel(), 7
    old = (-torch.rand(n, t, generator=gen, dtype=torch.float64) * 3).to(r.dtype)
    ref = (-torch.rand(n, t, generator=gen, dtype=torch.float64) * 3).to(r.dtype)
    mask = (torch.arange(t)[None] < torch.randint(1, t + 1, (n, 1), generator=gen)).long()
    code = _block(
        trl_rloo.RLOOTrainer._generate_and_score_completions,
        "unscorable_mask = torch.isnan(rewards_per_func)",
        "advantages = torch.nan_to_num(advantages, nan=0.0)",
    )
    self = SimpleNamespace(
        reward_weights=weights, reward_clip_range=clip, beta=beta, normalize_advantages=normalize
    )
    ns = dict(torch=torch, nanstd=trl_nanstd, self=self, device="cpu", gather=lambda x: x)
    ns.update(rewards_per_func=per_func, num_generations=g, completion_mask=mask)
    ns.update(old_per_token_logps=old, ref_per_token_logps=ref)
    exec(code, ns)
    rewards = rt.rloo_kl_rewards(rt.sum_rewards(per_func, weights), old, ref, mask, beta, clip)
    got = rt.rloo_advantages(rewards, g, normalize)
    np.testing.assert_allclose(
        got.double().numpy(), ns["advantages"].double().numpy(), **_trl_tol(r.dtype)
    )


@needs_trl
@pytest.mark.parametrize("seed,b,t", PPO_CASES)
@pytest.mark.parametrize("estimator", ["k1", "k3"])
@pytest.mark.parametrize("whiten_rewards", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("patched", [False, True])
def test_ppo_matches_trl(seed, b, t, estimator, whiten_rewards, dtype, patched):
    lp, ref, values, scores, seq_len = _ppo_case(seed, b, t, dtype)
    code = _block(
        trl_ppo.PPOTrainer.train,
        "response_idxs = torch.arange(responses.shape[1]",
        "advantages = torch.masked_fill(advantages, padding_mask, 0)",
    )
    args = SimpleNamespace(
        kl_estimator=estimator, kl_coef=0.05, whiten_rewards=whiten_rewards, gamma=1.0, lam=0.95
    )
    undo = rt.patch(trl_ppo) if patched else None
    try:
        ns = dict(torch=torch, args=args, INVALID_LOGPROB=trl_ppo.INVALID_LOGPROB)
        ns["masked_whiten"] = trl_ppo.masked_whiten  # what train() finds by name
        ns.update(responses=torch.zeros(b, t, dtype=torch.long), sequence_lengths=seq_len)
        ns.update(
            logprobs=lp.clone(), ref_logprobs=ref.clone(), values=values.clone(), scores=scores
        )
        exec(code, ns)
    finally:
        if undo is not None:
            undo()
    assert trl_ppo.masked_whiten is not rt.masked_whiten  # undone
    rewards, kl = rt.ppo_rewards(lp, ref, scores, seq_len, 0.05, estimator, whiten_rewards)
    adv, ret = rt.ppo_advantages(rewards, values, seq_len, 1.0, 0.95)
    for name, got in (("rewards", rewards), ("kl", kl), ("advantages", adv), ("returns", ret)):
        np.testing.assert_allclose(
            got.double().numpy(), ns[name].double().numpy(), err_msg=name, **_trl_tol(dtype)
        )


@needs_trl
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mask_kind", ["bool", "float"])
def test_masked_moments_match_trl(dtype, mask_kind):
    g = torch.Generator().manual_seed(6)
    x = torch.randn(8, 21, generator=g, dtype=torch.float64).to(dtype)
    m = torch.rand(8, 21, generator=g) < 0.5
    m = m if mask_kind == "bool" else m.to(dtype)
    tol = _trl_tol(dtype)
    for ours, theirs in (
        (rt.masked_mean(x, m), trl_ppo.masked_mean(x, m)),
        (rt.masked_mean(x, m, axis=1), trl_ppo.masked_mean(x, m, axis=1)),
        (rt.masked_var(x, m), trl_ppo.masked_var(x, m)),
        (rt.masked_var(x, m, unbiased=False), trl_ppo.masked_var(x, m, unbiased=False)),
        (rt.masked_whiten(x, m), trl_ppo.masked_whiten(x, m)),
        (rt.masked_whiten(x, m, shift_mean=False), trl_ppo.masked_whiten(x, m, shift_mean=False)),
    ):
        assert ours.dtype == theirs.dtype
        np.testing.assert_allclose(ours.double().numpy(), theirs.double().numpy(), **tol)


def _capture_advantages(trainer) -> list:
    """Record what ``_generate_and_score_completions`` hands the loss."""
    captured: list = []
    original = trainer._generate_and_score_completions

    def wrapped(inputs):
        captured.append(original(inputs))
        return captured[-1]

    trainer._generate_and_score_completions = wrapped
    return captured


@needs_trl
@pytest.mark.parametrize(
    "algo,extra",
    [
        ("grpo", dict(scale_rewards="group")),
        ("grpo", dict(scale_rewards="batch")),
        ("rloo", dict(beta=0.0, normalize_advantages=True)),
    ],
)
def test_trainer_step_gives_our_advantages(tmp_path, algo, extra):
    """One real GRPOTrainer / RLOOTrainer step (tiny random GPT-2, a word-level tokenizer
    built here, two reward functions, one of which sometimes abstains): the advantages
    the trainer hands its loss equal ours from the same rewards."""
    import random
    import warnings

    from datasets import Dataset
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast
    from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

    words = "<pad> <eos> <unk> a b c d e f g h".split()
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>"
    )
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(words), n_embd=16, n_layer=1, n_head=2, n_positions=64)
    config.update(dict(eos_token_id=1, pad_token_id=0, bos_token_id=1))
    model_dir = tmp_path / "model"
    GPT2LMHeadModel(config).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    dataset = Dataset.from_dict({"prompt": ["a b", "c d", "e f", "g h"] * 4})

    rng = random.Random(0)
    seen: list = []

    def sometimes_abstains(completions, **kwargs):
        seen.append([rng.choice([None, 0.0, 1.0, rng.random()]) for _ in completions])
        return seen[-1]

    def gaussian(completions, **kwargs):
        seen.append([rng.gauss(0.0, 1.0) for _ in completions])
        return seen[-1]

    trainer_cls, config_cls = (
        (GRPOTrainer, GRPOConfig) if algo == "grpo" else (RLOOTrainer, RLOOConfig)
    )
    args = config_cls(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=8,
        num_generations=4,
        max_completion_length=6,
        max_steps=1,
        report_to="none",
        use_cpu=True,
        save_strategy="no",
        reward_weights=[1.0, 0.5],
        **extra,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = trainer_cls(
            model=str(model_dir),
            reward_funcs=[sometimes_abstains, gaussian],
            args=args,
            train_dataset=dataset,
            processing_class=tok,
        )
        captured = _capture_advantages(trainer)
        trainer.train()
    per_func = torch.tensor(
        [[math.nan if a is None else a, b] for a, b in zip(seen[0], seen[1])],
        dtype=torch.float32,
    )
    assert torch.isnan(per_func[:, 0]).any()  # the step saw an abstaining reward function
    rewards = rt.sum_rewards(per_func, [1.0, 0.5])
    if algo == "grpo":
        ours = rt.grpo_advantages(rewards, 4, extra["scale_rewards"])
    else:
        ours = rt.rloo_advantages(rewards, 4, normalize_advantages=True)
    torch.testing.assert_close(ours, captured[0]["advantages"], rtol=1e-5, atol=1e-5)
