"""Deep Q-learning: replay buffer, target network, linear epsilon schedule.

    python examples/classic/dqn.py --env CartPole-v1 --seed 1

Mnih et al. (2015) on a small MLP: act epsilon-greedily, store every transition in a
ring buffer, and every ``train_frequency`` steps regress ``Q(s, a)`` on
``r + gamma * (1 - terminated) * max_a' Q_target(s', a')`` for a uniform minibatch;
the target network is copied from the online one every ``target_update_every`` steps.
Hyper-parameters follow CleanRL's ``dqn.py`` for CartPole (squared TD error, Adam),
with a shorter run: 200k steps, epsilon reaching its floor halfway.

Truncation: only ``terminated`` zeroes the bootstrap term. When CartPole-v1's
500-step limit cuts an episode, the stored next observation is the real one the cut
happened in, and the target still bootstraps from it: the pole is up, the state has
a future, and treating the cut as a failure would teach the agent that balancing
for 500 steps leads nowhere.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from cli import parse_config
from torch import nn


@dataclass
class Config:
    """DQN with experience replay and a target network."""

    env: str = field(default="CartPole-v1", metadata={"help": "gymnasium environment id"})
    seed: int = field(default=1, metadata={"help": "seed of torch, numpy and the environment"})
    total_steps: int = field(default=200_000, metadata={"help": "environment steps"})
    learning_rate: float = field(default=2.5e-4, metadata={"help": "Adam step size"})
    buffer_size: int = field(default=10_000, metadata={"help": "replay buffer capacity"})
    gamma: float = field(default=0.99, metadata={"help": "discount factor"})
    target_update_every: int = field(
        default=500, metadata={"help": "steps between target-network copies"}
    )
    batch_size: int = field(default=128, metadata={"help": "replayed transitions per update"})
    epsilon_start: float = field(default=1.0, metadata={"help": "initial exploration rate"})
    epsilon_end: float = field(default=0.05, metadata={"help": "final exploration rate"})
    exploration_fraction: float = field(
        default=0.5, metadata={"help": "share of total_steps over which epsilon decays"}
    )
    learning_starts: int = field(default=10_000, metadata={"help": "steps before learning"})
    train_frequency: int = field(default=10, metadata={"help": "steps between updates"})
    threads: int = field(default=1, metadata={"help": "torch CPU threads"})
    log_every: int = field(default=0, metadata={"help": "print every N steps (0: quiet)"})


class ReplayBuffer:
    """A fixed-capacity ring of transitions in preallocated numpy arrays."""

    def __init__(self, capacity: int, observation_shape: tuple[int, ...]) -> None:
        self.observations = np.zeros((capacity, *observation_shape), dtype=np.float32)
        self.next_observations = np.zeros_like(self.observations)
        self.actions = np.zeros(capacity, dtype=np.int64)
        self.rewards = np.zeros(capacity, dtype=np.float32)
        self.terminated = np.zeros(capacity, dtype=np.float32)
        self.capacity, self.size, self.cursor = capacity, 0, 0

    def add(
        self, obs: np.ndarray, action: int, reward: float, next_obs: np.ndarray, terminated: bool
    ) -> None:
        i = self.cursor
        self.observations[i], self.actions[i], self.rewards[i] = obs, action, reward
        self.next_observations[i], self.terminated[i] = next_obs, terminated
        self.cursor = (i + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, batch_size: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        index = rng.integers(self.size, size=batch_size)
        return {
            "observations": torch.from_numpy(self.observations[index]),  # (N, F)
            "actions": torch.from_numpy(self.actions[index]),  # (N,)
            "rewards": torch.from_numpy(self.rewards[index]),  # (N,)
            "next_observations": torch.from_numpy(self.next_observations[index]),  # (N, F)
            "terminated": torch.from_numpy(self.terminated[index]),  # (N,)
        }


def q_network(in_features: int, num_actions: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(in_features, 120),
        nn.ReLU(),
        nn.Linear(120, 84),
        nn.ReLU(),
        nn.Linear(84, num_actions),
    )


def linear_schedule(start: float, end: float, duration: float, t: int) -> float:
    return end + (start - end) * max(0.0, 1.0 - t / duration)


def train(config: Config) -> dict[str, Any]:
    """Run DQN; returns the learning curve and loss history."""
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)

    # ---- environment
    env = gym.make(config.env)
    env.action_space.seed(config.seed)
    obs_shape = env.observation_space.shape
    num_actions = int(env.action_space.n)

    # ---- networks and buffer
    q_net = q_network(int(np.prod(obs_shape)), num_actions)
    target_net = copy.deepcopy(q_net)
    optimizer = torch.optim.Adam(q_net.parameters(), lr=config.learning_rate)
    buffer = ReplayBuffer(config.buffer_size, obs_shape)

    # ---- the loop
    start_time = time.perf_counter()
    episode_returns: list[float] = []
    episode_end_steps: list[int] = []
    history: dict[str, list[float]] = {"losses/td_loss": [], "losses/q_values": []}
    obs, _ = env.reset(seed=config.seed)
    episode_return = 0.0
    for global_step in range(1, config.total_steps + 1):
        epsilon = linear_schedule(
            config.epsilon_start,
            config.epsilon_end,
            config.exploration_fraction * config.total_steps,
            global_step,
        )
        if rng.random() < epsilon:
            action = int(env.action_space.sample())
        else:
            with torch.no_grad():
                action = int(q_net(torch.from_numpy(obs[None])).argmax())
        next_obs, reward, terminated, truncated, _ = env.step(action)
        buffer.add(obs, action, float(reward), next_obs, terminated)
        episode_return += float(reward)
        if terminated or truncated:
            episode_returns.append(episode_return)
            episode_end_steps.append(global_step)
            episode_return = 0.0
            next_obs, _ = env.reset()
        obs = next_obs

        # ---- learning
        if global_step > config.learning_starts and global_step % config.train_frequency == 0:
            batch = buffer.sample(config.batch_size, rng)
            with torch.no_grad():
                next_q = target_net(batch["next_observations"]).max(dim=1).values  # (N,)
                targets = batch["rewards"] + config.gamma * (1 - batch["terminated"]) * next_q
            q_taken = q_net(batch["observations"]).gather(1, batch["actions"][:, None])[:, 0]
            loss = F.mse_loss(q_taken, targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            history["losses/td_loss"].append(float(loss.detach()))
            history["losses/q_values"].append(float(q_taken.detach().mean()))
        if global_step % config.target_update_every == 0:
            target_net.load_state_dict(q_net.state_dict())

        if config.log_every and global_step % config.log_every == 0 and episode_returns:
            print(
                f"global_step={global_step} charts/episodic_return={np.mean(episode_returns[-20:]):.1f} "
                f"charts/epsilon={epsilon:.3f} "
                f"losses/td_loss={np.mean(history['losses/td_loss'][-100:] or [np.nan]):.4f}"
            )
    env.close()

    return {
        "algorithm": "DQN",
        "env": config.env,
        "steps": config.total_steps,
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
