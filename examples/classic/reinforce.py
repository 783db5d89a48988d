"""REINFORCE (Monte-Carlo policy gradient), with or without a learned baseline.

    python examples/classic/reinforce.py --env CartPole-v1 --seed 1
    python examples/classic/reinforce.py --env CartPole-v1 --seed 1 --baseline false
    python examples/classic/reinforce.py --env CatFishDog-v0 --seed 1 --total-episodes 2000

Each update plays ``episodes_per_batch`` whole episodes (one environment each, the
policy evaluated on all the still-running ones at once), lays them out one episode
per row as ``[B, T]`` arrays with a mask, and follows

    grad J = E[ sum_t grad log pi(a_t | s_t) * (G_t - b(s_t)) ]

with ``G_t`` the discounted return-to-go (Williams, 1992). ``rlhf_fast.gae`` with
``lam = 1`` computes exactly that: with ``values = 0`` its advantages are ``G_t``;
with ``values = V(s_t)`` they are ``G_t - V(s_t)`` and its returns ``G_t`` are the
value net's regression target. The baseline changes the variance of the gradient,
not its mean; ``run_all.py`` plots the spread over three seeds with and without it.

Truncation: an episode cut by a time limit (CartPole-v1 stops at 500 steps) is not
over, so the return-to-go of its last steps is too short. With a baseline the value
of the observation after the cut is passed as ``bootstrap_values``, which restores
the missing tail; without one there is no critic to ask, and the tail is left out
(a bias towards shorter horizons in the last ~``1 / (1 - gamma)`` steps of a
capped episode, as in the textbook algorithm).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import gridworld
import gymnasium as gym
import numpy as np
import torch
from cli import parse_config
from torch import nn

import rlhf_fast


@dataclass
class Config:
    """REINFORCE with an optional learned state-value baseline."""

    env: str = field(default="CartPole-v1", metadata={"help": "gymnasium environment id"})
    seed: int = field(default=1, metadata={"help": "seed of torch, numpy and the environments"})
    baseline: bool = field(default=True, metadata={"help": "subtract a learned V(s) from G_t"})
    total_episodes: int = field(default=1_000, metadata={"help": "training episodes"})
    episodes_per_batch: int = field(default=8, metadata={"help": "episodes per gradient step"})
    gamma: float = field(default=0.99, metadata={"help": "discount factor"})
    policy_lr: float = field(default=2e-3, metadata={"help": "Adam step size of the policy"})
    value_lr: float = field(default=5e-3, metadata={"help": "Adam step size of the baseline"})
    hidden_size: int = field(default=64, metadata={"help": "width of the two hidden layers"})
    threads: int = field(default=1, metadata={"help": "torch CPU threads"})
    log_every: int = field(default=0, metadata={"help": "print every N updates (0: quiet)"})


def mlp(in_features: int, out_features: int, hidden_size: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(in_features, hidden_size),
        nn.Tanh(),
        nn.Linear(hidden_size, hidden_size),
        nn.Tanh(),
        nn.Linear(hidden_size, out_features),
    )


class ObservationEncoder:
    """Gymnasium observations -> float32 feature rows (one-hot for ``Discrete`` spaces)."""

    def __init__(self, space: gym.Space) -> None:
        self.discrete = isinstance(space, gym.spaces.Discrete)
        self.size = int(space.n) if self.discrete else int(np.prod(space.shape))

    def __call__(self, observations: Any) -> np.ndarray:
        if self.discrete:
            return gridworld.one_hot(observations, self.size)
        return np.asarray(observations, dtype=np.float32).reshape(-1, self.size)


@dataclass
class EpisodeBatch:
    """Whole episodes, one per row, right-padded to the longest (``T``)."""

    features: np.ndarray  # (B, T, F) float32
    actions: np.ndarray  # (B, T) int64
    rewards: np.ndarray  # (B, T) float32
    mask: np.ndarray  # (B, T) bool, True on real steps
    final_features: np.ndarray  # (B, F) float32, the observation after the last step
    truncated: np.ndarray  # (B,) bool, cut by a time limit rather than terminated


def play_episodes(
    envs: list[gym.Env], policy: nn.Module, encode: ObservationEncoder, generator: torch.Generator
) -> EpisodeBatch:
    """One full episode in each env, sampling actions from ``policy`` for all running envs at once."""
    num_envs = len(envs)
    observations = [env.reset()[0] for env in envs]
    steps: list[list[tuple[np.ndarray, int, float]]] = [[] for _ in envs]
    truncated = np.zeros(num_envs, dtype=bool)
    running = list(range(num_envs))
    while running:
        features = encode(np.stack([observations[i] for i in running]))  # (R, F)
        with torch.no_grad():
            logits = policy(torch.from_numpy(features))
            actions = torch.multinomial(logits.softmax(-1), 1, generator=generator)[:, 0]
        still_running = []
        for row, i in enumerate(running):
            action = int(actions[row])
            observations[i], reward, term, trunc, _ = envs[i].step(action)
            steps[i].append((features[row], action, float(reward)))
            if term or trunc:
                truncated[i] = trunc and not term
            else:
                still_running.append(i)
        running = still_running

    longest = max(len(s) for s in steps)
    batch = EpisodeBatch(
        features=np.zeros((num_envs, longest, encode.size), dtype=np.float32),
        actions=np.zeros((num_envs, longest), dtype=np.int64),
        rewards=np.zeros((num_envs, longest), dtype=np.float32),
        mask=np.zeros((num_envs, longest), dtype=bool),
        final_features=encode(np.stack(observations)),
        truncated=truncated,
    )
    for i, episode in enumerate(steps):
        length = len(episode)
        batch.features[i, :length] = np.stack([f for f, _, _ in episode])
        batch.actions[i, :length] = [a for _, a, _ in episode]
        batch.rewards[i, :length] = [r for _, _, r in episode]
        batch.mask[i, :length] = True
    return batch


def train(config: Config) -> dict[str, Any]:
    """Run REINFORCE; returns the learning curve and the last losses."""
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)

    # ---- environments: one per episode of a batch
    envs = [gym.make(config.env) for _ in range(config.episodes_per_batch)]
    for i, env in enumerate(envs):
        env.reset(seed=config.seed * 1_000 + i)
    encode = ObservationEncoder(envs[0].observation_space)
    num_actions = int(envs[0].action_space.n)

    # ---- networks
    policy = mlp(encode.size, num_actions, config.hidden_size)
    policy_optimizer = torch.optim.Adam(policy.parameters(), lr=config.policy_lr)
    value_net = mlp(encode.size, 1, config.hidden_size) if config.baseline else None
    value_optimizer = (
        torch.optim.Adam(value_net.parameters(), lr=config.value_lr) if value_net else None
    )

    # ---- the loop
    start_time = time.perf_counter()
    episode_returns: list[float] = []
    episode_end_steps: list[int] = []
    history: dict[str, list[float]] = {"losses/policy_loss": [], "losses/value_loss": []}
    global_step = 0
    num_updates = config.total_episodes // config.episodes_per_batch
    for update in range(1, num_updates + 1):
        batch = play_episodes(envs, policy, encode, generator)
        lengths = batch.mask.sum(axis=1)
        for length, episode_return in zip(lengths, (batch.rewards * batch.mask).sum(axis=1)):
            global_step += int(length)
            episode_returns.append(float(episode_return))
            episode_end_steps.append(global_step)

        features = torch.from_numpy(batch.features)  # (B, T, F)
        mask = torch.from_numpy(batch.mask).float()  # (B, T)
        if value_net is not None:
            values = value_net(features).squeeze(-1)  # (B, T)
            with torch.no_grad():
                final_values = value_net(torch.from_numpy(batch.final_features)).squeeze(-1)
            bootstrap = (final_values * torch.from_numpy(batch.truncated)).numpy()  # (B,)
            values_np = values.detach().numpy()
        else:
            values_np = np.zeros_like(batch.rewards)
            bootstrap = np.zeros(len(envs), dtype=np.float32)
        # lam = 1: advantages are G_t - values, returns are G_t (both 0 on padding).
        advantages, returns = rlhf_fast.gae(
            batch.rewards,
            values_np,
            batch.mask,
            gamma=config.gamma,
            lam=1.0,
            bootstrap_values=bootstrap,
        )
        advantages_t = torch.from_numpy(advantages)

        log_probs = torch.log_softmax(policy(features), dim=-1)  # (B, T, A)
        action_log_probs = log_probs.gather(-1, torch.from_numpy(batch.actions)[..., None])[..., 0]
        policy_loss = -(action_log_probs * advantages_t * mask).sum() / mask.sum()
        policy_optimizer.zero_grad()
        policy_loss.backward()
        policy_optimizer.step()
        history["losses/policy_loss"].append(float(policy_loss.detach()))

        if value_net is not None and value_optimizer is not None:
            value_loss = (0.5 * (values - torch.from_numpy(returns)) ** 2 * mask).sum() / mask.sum()
            value_optimizer.zero_grad()
            value_loss.backward()
            value_optimizer.step()
            history["losses/value_loss"].append(float(value_loss.detach()))

        if config.log_every and update % config.log_every == 0:
            print(
                f"update={update} global_step={global_step} "
                f"charts/episodic_return={np.mean(episode_returns[-20:]):.1f} "
                f"losses/policy_loss={history['losses/policy_loss'][-1]:.3f}"
            )
    for env in envs:
        env.close()

    return {
        "algorithm": "REINFORCE" + (" + baseline" if config.baseline else ""),
        "env": config.env,
        "steps": global_step,
        "wall_time_s": time.perf_counter() - start_time,
        "episode_returns": episode_returns,
        "episode_end_steps": episode_end_steps,
        "final_mean_return": float(np.mean(episode_returns[-20:])),
        "history": history,
    }


if __name__ == "__main__":
    result = train(parse_config(Config))
    for key in ("algorithm", "env", "steps", "wall_time_s", "final_mean_return"):
        print(f"{key}: {result[key]}")
