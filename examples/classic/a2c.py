"""Synchronous advantage actor-critic (A2C) over ``gymnasium.vector`` environments.

    python examples/classic/a2c.py --env CartPole-v1 --seed 1
    python examples/classic/a2c.py --env CartPole-v1 --seed 1 --gae-lambda 0.95

The synchronous variant of Mnih et al. (2016): ``num_envs`` environments step
together for ``num_steps`` steps, then one gradient step on

    loss = -mean(A_t * log pi(a_t | s_t)) + vf_coef * mean((R_t - V(s_t))^2) - ent_coef * H

with RMSprop, as in Stable-Baselines3's A2C defaults for CartPole. The advantages
come from ``rlhf_fast.gae`` on the rollout transposed to ``[N, T]`` (rows =
environments, ``dones`` marking episode ends inside a row): with the default
``gae_lambda = 1`` they are the n-step advantages ``sum_k gamma^k r_{t+k} +
gamma^n V(s_{t+n}) - V(s_t)``, cut at episode ends and bootstrapped from the value
after the rollout; a ``gae_lambda`` below 1 gives GAE instead.

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
    """A2C with n-step (or GAE) advantages and RMSprop."""

    env: str = field(default="CartPole-v1", metadata={"help": "gymnasium environment id"})
    seed: int = field(default=1, metadata={"help": "seed of torch and the environments"})
    total_steps: int = field(default=300_000, metadata={"help": "environment steps"})
    num_envs: int = field(default=8, metadata={"help": "environments stepped together"})
    num_steps: int = field(default=5, metadata={"help": "steps per environment per update"})
    learning_rate: float = field(default=7e-4, metadata={"help": "RMSprop step size"})
    gamma: float = field(default=0.99, metadata={"help": "discount factor"})
    gae_lambda: float = field(default=1.0, metadata={"help": "1: n-step advantages; <1: GAE"})
    ent_coef: float = field(default=0.0, metadata={"help": "entropy bonus coefficient"})
    vf_coef: float = field(default=0.5, metadata={"help": "value loss coefficient"})
    max_grad_norm: float = field(default=0.5, metadata={"help": "global gradient-norm clip"})
    threads: int = field(default=1, metadata={"help": "torch CPU threads"})
    log_every: int = field(default=0, metadata={"help": "print every N updates (0: quiet)"})


def train(config: Config) -> dict[str, Any]:
    """Run A2C; returns the learning curve and loss history."""
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)

    # ---- environments and agent
    envs = make_vector_env(config.env, config.num_envs)
    collector = RolloutCollector(envs, config.seed, config.gamma)
    num_features = int(np.prod(envs.single_observation_space.shape))
    agent = ActorCritic(num_features, int(envs.single_action_space.n))
    optimizer = torch.optim.RMSprop(
        agent.parameters(), lr=config.learning_rate, alpha=0.99, eps=1e-5
    )
    num_updates = config.total_steps // (config.num_envs * config.num_steps)

    # ---- the loop
    start_time = time.perf_counter()
    history: dict[str, list[float]] = {
        "losses/policy_loss": [], "losses/value_loss": [], "losses/entropy": []
    }  # fmt: skip
    for update in range(1, num_updates + 1):
        rollout = collector.collect(agent, config.num_steps)
        advantages, returns = rlhf_fast.gae(
            np.ascontiguousarray(rollout.rewards.T),  # (N, T)
            np.ascontiguousarray(rollout.values.T),
            None,  # every step takes part
            gamma=config.gamma,
            lam=config.gae_lambda,
            bootstrap_values=rollout.bootstrap_values,
            dones=np.ascontiguousarray(rollout.dones.T),
        )

        obs = torch.from_numpy(rollout.obs.transpose(1, 0, 2).reshape(-1, num_features))
        actions = torch.from_numpy(np.ascontiguousarray(rollout.actions.T).reshape(-1))
        _, log_prob, entropy, value = agent.act(obs, actions)  # (N * T,) each
        policy_loss = -(torch.from_numpy(advantages.reshape(-1)) * log_prob).mean()
        value_loss = ((torch.from_numpy(returns.reshape(-1)) - value) ** 2).mean()
        entropy_loss = entropy.mean()
        loss = policy_loss + config.vf_coef * value_loss - config.ent_coef * entropy_loss

        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(agent.parameters(), config.max_grad_norm)
        optimizer.step()

        history["losses/policy_loss"].append(float(policy_loss.detach()))
        history["losses/value_loss"].append(float(value_loss.detach()))
        history["losses/entropy"].append(float(entropy_loss.detach()))
        if config.log_every and update % config.log_every == 0:
            recent = collector.episode_returns[-20:] or [float("nan")]
            print(
                f"update={update} global_step={collector.global_step} "
                f"charts/episodic_return={np.mean(recent):.1f} "
                f"losses/value_loss={np.mean(history['losses/value_loss'][-100:]):.3f} "
                f"losses/entropy={history['losses/entropy'][-1]:.3f}"
            )
    envs.close()

    return {
        "algorithm": "A2C"
        + ("" if config.gae_lambda == 1.0 else f" (GAE lam={config.gae_lambda})"),
        "env": config.env,
        "steps": collector.global_step,
        "wall_time_s": time.perf_counter() - start_time,
        "episode_returns": collector.episode_returns,
        "episode_end_steps": collector.episode_end_steps,
        "final_mean_return": float(np.mean(collector.episode_returns[-20:])),
        "history": history,
    }


if __name__ == "__main__":
    result = train(parse_config(Config))
    for key in ("algorithm", "env", "steps", "wall_time_s", "final_mean_return"):
        print(f"{key}: {result[key]}")
