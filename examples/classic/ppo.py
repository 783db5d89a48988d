"""Proximal policy optimisation (clipped surrogate) over ``gymnasium.vector`` environments.

    python examples/classic/ppo.py --env CartPole-v1 --seed 1
    python examples/classic/ppo.py --env CartPole-v1 --seed 1 --gae-impl numpy

Schulman et al. (2017) with the details of CleanRL's ``ppo.py``: ``num_envs``
environments stepped together for ``num_steps`` steps per rollout, GAE(gamma, lam),
``update_epochs`` passes over the rollout in shuffled minibatches, advantages
whitened per minibatch, the clipped surrogate, a clipped value loss, an entropy
bonus, global gradient clipping and a linearly annealed step size.

The rlhf_fast kernels do the per-step math:

- ``rlhf_fast.gae(..., dones=...)`` on the rollout transposed to ``[N, T]`` (rows =
  environments). ``dones[n, t] = 1`` where step ``t`` ended an episode, so no value
  or advantage flows back into ``t`` from ``t + 1``; CleanRL writes the same thing
  as ``nextnonterminal = 1 - dones[t + 1]`` because its ``dones[t]`` flags the
  *observation* at ``t`` as the first of an episode. ``--gae-impl numpy`` swaps in
  :func:`gae_numpy`, the textbook loop, to show the kernel changes speed, not results;
- ``rlhf_fast.masked_whiten`` for the advantage whitening;
- ``rlhf_fast.minibatch_indices`` for the seeded minibatch shuffles.

GAE runs in float64 and is cast to float32 for the losses. The kernel and the
loop round differently (the kernel uses a blocked recursion and fused
multiply-adds), so in float32 they would differ in the last bit and the runs
would drift apart after a few updates; in float64 the difference sits far below
float32 resolution, the cast gives the same bits, and one seed gives one curve.

Truncation (CartPole-v1's 500-step limit) is bootstrapped: see ``rollout.py``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from cli import parse_config
from rollout import ActorCritic, RolloutCollector, make_vector_env
from torch import nn

import rlhf_fast


@dataclass
class Config:
    """PPO with clipped surrogate, value clipping and an entropy bonus."""

    env: str = field(default="CartPole-v1", metadata={"help": "gymnasium environment id"})
    seed: int = field(default=1, metadata={"help": "seed of torch and the environments"})
    total_steps: int = field(default=300_000, metadata={"help": "environment steps"})
    num_envs: int = field(default=4, metadata={"help": "environments stepped together"})
    num_steps: int = field(default=128, metadata={"help": "steps per environment per rollout"})
    learning_rate: float = field(default=2.5e-4, metadata={"help": "Adam step size"})
    anneal_lr: bool = field(default=True, metadata={"help": "decay the step size linearly to 0"})
    gamma: float = field(default=0.99, metadata={"help": "discount factor"})
    gae_lambda: float = field(default=0.95, metadata={"help": "GAE lambda"})
    gae_impl: str = field(
        default="rlhf_fast",
        metadata={"help": "who computes GAE", "choices": ["rlhf_fast", "numpy"]},
    )
    num_minibatches: int = field(default=4, metadata={"help": "minibatches per epoch"})
    update_epochs: int = field(default=4, metadata={"help": "passes over each rollout"})
    clip_coef: float = field(default=0.2, metadata={"help": "surrogate clipping range"})
    clip_vloss: bool = field(default=True, metadata={"help": "clip the value loss as well"})
    ent_coef: float = field(default=0.01, metadata={"help": "entropy bonus coefficient"})
    vf_coef: float = field(default=0.5, metadata={"help": "value loss coefficient"})
    max_grad_norm: float = field(default=0.5, metadata={"help": "global gradient-norm clip"})
    threads: int = field(default=1, metadata={"help": "torch CPU threads"})
    log_every: int = field(default=0, metadata={"help": "print every N updates (0: quiet)"})


def gae_numpy(
    rewards: np.ndarray,
    values: np.ndarray,
    dones: np.ndarray,
    bootstrap_values: np.ndarray,
    gamma: float,
    lam: float,
) -> tuple[np.ndarray, np.ndarray]:
    """The textbook GAE loop on a time-major rollout.

    ``rewards, values, dones``: ``[T, N]``; ``bootstrap_values``: ``[N]``; ``dones[t]``
    is 1 where step ``t`` ended an episode. Returns ``(advantages, returns)``, ``[T, N]``.
    """
    advantages = np.zeros_like(rewards)
    next_values = bootstrap_values
    next_advantages = np.zeros_like(bootstrap_values)
    for t in reversed(range(rewards.shape[0])):
        not_done = 1.0 - dones[t]
        delta = rewards[t] + gamma * next_values * not_done - values[t]
        advantages[t] = delta + gamma * lam * not_done * next_advantages
        next_values, next_advantages = values[t], advantages[t]
    return advantages, advantages + values


def gae_rlhf_fast(
    rewards: np.ndarray,
    values: np.ndarray,
    dones: np.ndarray,
    bootstrap_values: np.ndarray,
    gamma: float,
    lam: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Same contract as :func:`gae_numpy`, computed by the Rust kernel with rows = envs."""
    advantages, returns = rlhf_fast.gae(
        np.ascontiguousarray(rewards.T),  # (N, T)
        np.ascontiguousarray(values.T),
        None,  # every step takes part
        gamma=gamma,
        lam=lam,
        bootstrap_values=bootstrap_values,
        dones=np.ascontiguousarray(dones.T),
    )
    return advantages.T, returns.T


GAE_IMPLS = {"numpy": gae_numpy, "rlhf_fast": gae_rlhf_fast}


def train(config: Config) -> dict[str, Any]:
    """Run PPO; returns the learning curve, loss history and time spent in GAE."""
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    compute_gae = GAE_IMPLS[config.gae_impl]

    # ---- environments and agent
    envs = make_vector_env(config.env, config.num_envs)
    collector = RolloutCollector(envs, config.seed, config.gamma)
    num_features = int(np.prod(envs.single_observation_space.shape))
    agent = ActorCritic(num_features, int(envs.single_action_space.n))
    optimizer = torch.optim.Adam(agent.parameters(), lr=config.learning_rate, eps=1e-5)
    batch_size = config.num_envs * config.num_steps
    minibatch_size = batch_size // config.num_minibatches
    num_updates = config.total_steps // batch_size

    # ---- the loop
    start_time = time.perf_counter()
    gae_seconds = 0.0
    history: dict[str, list[float]] = {
        k: [] for k in ("losses/policy_loss", "losses/value_loss", "losses/entropy",
                        "losses/approx_kl", "losses/clipfrac")
    }  # fmt: skip
    for update in range(1, num_updates + 1):
        if config.anneal_lr:
            optimizer.param_groups[0]["lr"] = config.learning_rate * (
                1 - (update - 1) / num_updates
            )
        rollout = collector.collect(agent, config.num_steps)

        # ---- advantages: float64 GAE, float32 losses
        gae_start = time.perf_counter()
        advantages, returns = compute_gae(
            rollout.rewards.astype(np.float64),
            rollout.values.astype(np.float64),
            rollout.dones,
            rollout.bootstrap_values.astype(np.float64),
            config.gamma,
            config.gae_lambda,
        )  # (T, N) each
        gae_seconds += time.perf_counter() - gae_start

        b_obs = torch.from_numpy(rollout.obs.reshape(batch_size, num_features))
        b_actions = torch.from_numpy(rollout.actions.reshape(-1))
        b_log_probs = torch.from_numpy(rollout.log_probs.reshape(-1))
        b_values = torch.from_numpy(rollout.values.reshape(-1))
        b_advantages = torch.from_numpy(advantages.astype(np.float32).reshape(-1))
        b_returns = torch.from_numpy(returns.astype(np.float32).reshape(-1))

        # ---- optimise the policy and value network
        for epoch in range(config.update_epochs):
            shuffle_seed = (config.seed * 1_000_003 + update) * config.update_epochs + epoch
            for mb in rlhf_fast.minibatch_indices(batch_size, minibatch_size, seed=shuffle_seed):
                mb = torch.from_numpy(mb)
                _, new_log_prob, entropy, new_value = agent.act(b_obs[mb], b_actions[mb])
                log_ratio = new_log_prob - b_log_probs[mb]
                ratio = log_ratio.exp()
                with torch.no_grad():
                    approx_kl = ((ratio - 1) - log_ratio).mean()  # k3 estimator
                    clipfrac = ((ratio - 1).abs() > config.clip_coef).float().mean()
                mb_advantages = rlhf_fast.masked_whiten(b_advantages[mb])

                policy_loss = torch.max(
                    -mb_advantages * ratio,
                    -mb_advantages * ratio.clamp(1 - config.clip_coef, 1 + config.clip_coef),
                ).mean()
                value_loss_unclipped = (new_value - b_returns[mb]) ** 2
                if config.clip_vloss:
                    value_clipped = b_values[mb] + (new_value - b_values[mb]).clamp(
                        -config.clip_coef, config.clip_coef
                    )
                    value_loss_clipped = (value_clipped - b_returns[mb]) ** 2
                    value_loss = 0.5 * torch.max(value_loss_unclipped, value_loss_clipped).mean()
                else:
                    value_loss = 0.5 * value_loss_unclipped.mean()
                entropy_loss = entropy.mean()
                loss = policy_loss - config.ent_coef * entropy_loss + config.vf_coef * value_loss

                optimizer.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(agent.parameters(), config.max_grad_norm)
                optimizer.step()

        history["losses/policy_loss"].append(float(policy_loss.detach()))
        history["losses/value_loss"].append(float(value_loss.detach()))
        history["losses/entropy"].append(float(entropy_loss.detach()))
        history["losses/approx_kl"].append(float(approx_kl))
        history["losses/clipfrac"].append(float(clipfrac))
        if config.log_every and update % config.log_every == 0:
            recent = collector.episode_returns[-20:] or [float("nan")]
            print(
                f"update={update} global_step={collector.global_step} "
                f"charts/episodic_return={np.mean(recent):.1f} "
                f"losses/value_loss={history['losses/value_loss'][-1]:.3f} "
                f"losses/approx_kl={history['losses/approx_kl'][-1]:.4f} "
                f"charts/SPS={collector.global_step / (time.perf_counter() - start_time):.0f}"
            )
    envs.close()

    return {
        "algorithm": f"PPO (GAE: {config.gae_impl})",
        "env": config.env,
        "steps": collector.global_step,
        "wall_time_s": time.perf_counter() - start_time,
        "gae_time_s": gae_seconds,
        "episode_returns": collector.episode_returns,
        "episode_end_steps": collector.episode_end_steps,
        "final_mean_return": float(np.mean(collector.episode_returns[-20:])),
        "history": history,
    }


if __name__ == "__main__":
    result = train(parse_config(Config))
    for key in ("algorithm", "env", "steps", "wall_time_s", "gae_time_s", "final_mean_return"):
        print(f"{key}: {result[key]}")
