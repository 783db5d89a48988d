"""Vectorised on-policy rollouts for the actor-critic examples (``a2c.py``, ``ppo.py``).

A rollout is ``num_steps`` steps of ``num_envs`` gymnasium environments, stored
time-major as ``[T, N]`` arrays (``T = num_steps``, ``N = num_envs``), with
``dones[t, n] = 1`` when step ``t`` ended an episode of env ``n`` (terminated or
truncated) and ``bootstrap_values[n]`` the value of the observation after the last
step. That is exactly the row convention of ``rlhf_fast.gae`` once transposed to
``[N, T]`` (rows = environments).

Truncation is bootstrapped, not treated as failure: the environments reset in the
same step (gymnasium's ``AutoresetMode.SAME_STEP``), so the observation the time
limit cut is handed back in ``info["final_obs"]``; for every truncated step the
reward is credited with ``gamma * V(final_obs)`` before the step is marked done.
The TD target of that step is then ``r + gamma * V(s_final)``, as if the episode
went on, while the recursion still stops there (the next stored step belongs to
the new episode). Terminated steps get no such credit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import nn


def make_vector_env(env_id: str, num_envs: int, **env_kwargs: Any) -> gym.vector.VectorEnv:
    """``num_envs`` copies of ``env_id`` (built with ``env_kwargs``) that reset in the
    step an episode ends."""
    return gym.make_vec(
        env_id,
        num_envs=num_envs,
        vectorization_mode="sync",
        vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP},
        **env_kwargs,
    )


def layer(in_features: int, out_features: int, std: float = 2**0.5) -> nn.Linear:
    """A linear layer with orthogonal weights and zero bias (the PPO implementation details)."""
    linear = nn.Linear(in_features, out_features)
    nn.init.orthogonal_(linear.weight, std)
    nn.init.zeros_(linear.bias)
    return linear


class ActorCritic(nn.Module):
    """Separate 64-64 tanh MLPs for the policy logits and the state value."""

    def __init__(self, num_features: int, num_actions: int, hidden_size: int = 64) -> None:
        super().__init__()
        self.critic = nn.Sequential(
            layer(num_features, hidden_size), nn.Tanh(),
            layer(hidden_size, hidden_size), nn.Tanh(),
            layer(hidden_size, 1, std=1.0),
        )  # fmt: skip
        self.actor = nn.Sequential(
            layer(num_features, hidden_size), nn.Tanh(),
            layer(hidden_size, hidden_size), nn.Tanh(),
            layer(hidden_size, num_actions, std=0.01),
        )  # fmt: skip

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        """``[..., F]`` -> ``[...]``."""
        return self.critic(obs).squeeze(-1)

    def act(
        self, obs: torch.Tensor, action: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(action, log_prob, entropy, value)``, each ``[B]`` for ``[B, F]`` observations;
        samples the action when it is None. (The softmax is spelled out rather than
        going through ``torch.distributions``, whose argument checks cost more than
        the network on these tiny batches.)"""
        log_probs = torch.log_softmax(self.actor(obs), dim=-1)  # (B, A)
        if action is None:
            # inverse-CDF sampling: one uniform per row (torch.multinomial is slow here)
            cdf = log_probs.exp().cumsum(-1)
            below = (cdf < torch.rand(cdf.shape[0], 1) * cdf[:, -1:]).sum(-1)
            action = below.clamp(max=cdf.shape[-1] - 1)
        entropy = -(log_probs.exp() * log_probs).sum(-1)
        return action, log_probs.gather(-1, action[:, None])[:, 0], entropy, self.value(obs)


@dataclass
class Rollout:
    """``num_steps`` steps of ``num_envs`` environments, time-major."""

    obs: np.ndarray  # (T, N, F) float32
    actions: np.ndarray  # (T, N) int64
    log_probs: np.ndarray  # (T, N) float32, of the actions under the acting policy
    values: np.ndarray  # (T, N) float32, V(obs)
    rewards: np.ndarray  # (T, N) float32, plus gamma * V(final_obs) on truncated steps
    dones: np.ndarray  # (T, N) uint8, 1 where step t ended an episode
    bootstrap_values: np.ndarray  # (N,) float32, V of the observation after step T - 1


class RolloutCollector:
    """Steps ``envs`` with ``agent`` and keeps each episode's undiscounted return."""

    def __init__(self, envs: gym.vector.VectorEnv, seed: int, gamma: float) -> None:
        self.envs, self.gamma = envs, gamma
        self.num_envs = envs.num_envs
        self.obs, _ = envs.reset(seed=[seed * 1_000 + i for i in range(self.num_envs)])
        self.running_returns = np.zeros(self.num_envs)
        self.running_lengths = np.zeros(self.num_envs, dtype=np.int64)
        self.global_step = 0
        self.episode_returns: list[float] = []
        self.episode_end_steps: list[int] = []

    def collect(self, agent: ActorCritic, num_steps: int) -> Rollout:
        n, f = self.num_envs, int(np.prod(self.envs.single_observation_space.shape))
        rollout = Rollout(
            obs=np.zeros((num_steps, n, f), dtype=np.float32),
            actions=np.zeros((num_steps, n), dtype=np.int64),
            log_probs=np.zeros((num_steps, n), dtype=np.float32),
            values=np.zeros((num_steps, n), dtype=np.float32),
            rewards=np.zeros((num_steps, n), dtype=np.float32),
            dones=np.zeros((num_steps, n), dtype=np.uint8),
            bootstrap_values=np.zeros(n, dtype=np.float32),
        )
        for t in range(num_steps):
            obs = torch.from_numpy(np.asarray(self.obs, dtype=np.float32).reshape(n, f))
            with torch.no_grad():
                action, log_prob, _, value = agent.act(obs)
            rollout.obs[t] = obs.numpy()
            rollout.actions[t], rollout.log_probs[t], rollout.values[t] = action, log_prob, value
            self.obs, reward, terminated, truncated, info = self.envs.step(action.numpy())
            self.global_step += n
            self.running_returns += reward
            self.running_lengths += 1
            rollout.rewards[t] = reward
            cut = truncated & ~terminated
            if cut.any():  # bootstrap through the time limit from the observation it cut
                final_obs = np.stack([info["final_obs"][i] for i in np.flatnonzero(cut)])
                final_obs = final_obs.astype(np.float32).reshape(-1, f)
                with torch.no_grad():
                    final_values = agent.value(torch.from_numpy(final_obs))
                rollout.rewards[t, cut] += self.gamma * final_values.numpy()
            done = terminated | truncated
            rollout.dones[t] = done
            for i in np.flatnonzero(done):
                self.episode_returns.append(float(self.running_returns[i]))
                self.episode_end_steps.append(self.global_step)
                self.running_returns[i], self.running_lengths[i] = 0.0, 0
        with torch.no_grad():
            next_obs = torch.from_numpy(np.asarray(self.obs, dtype=np.float32).reshape(n, f))
            rollout.bootstrap_values[:] = agent.value(next_obs).numpy()
        return rollout
