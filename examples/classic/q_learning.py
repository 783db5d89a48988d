"""Tabular Q-learning with epsilon-greedy exploration.

    python examples/classic/q_learning.py --env CatFishDog-v0 --seed 1
    python examples/classic/q_learning.py --env FrozenLake-v1 --episodes 20000 --seed 1

Watkins' update ``Q(s, a) += alpha * (r + gamma * max_a' Q(s', a') - Q(s, a))``, with
the bootstrap term dropped when ``s'`` is terminal. Truncation (a time limit) is not
terminal: the update still bootstraps from ``Q(s', .)`` there, since the state itself
has a future. Epsilon and alpha decay linearly over the first ``decay_fraction`` of
the episodes; a decaying step size lets the table settle on a stochastic environment
(FrozenLake's slippery ice), where a constant one keeps chasing the noise.

After training the greedy policy is evaluated: on the gridworld, the path it walks
from the start (is it a shortest path that avoids the dog?); on other environments,
the share of ``eval_episodes`` greedy episodes that earn a positive return (the
success rate on FrozenLake).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import gridworld
import gymnasium as gym
import numpy as np
from cli import parse_config


@dataclass
class Config:
    """Tabular Q-learning on a discrete environment."""

    env: str = field(default=gridworld.ENV_ID, metadata={"help": "gymnasium environment id"})
    seed: int = field(default=1, metadata={"help": "seed of the environment and exploration"})
    episodes: int = field(default=2_000, metadata={"help": "training episodes"})
    gamma: float = field(default=0.99, metadata={"help": "discount factor"})
    alpha_start: float = field(default=0.5, metadata={"help": "initial step size"})
    alpha_end: float = field(default=0.01, metadata={"help": "final step size"})
    epsilon_start: float = field(default=1.0, metadata={"help": "initial exploration rate"})
    epsilon_end: float = field(default=0.05, metadata={"help": "final exploration rate"})
    decay_fraction: float = field(
        default=0.8, metadata={"help": "share of the episodes over which alpha and epsilon decay"}
    )
    eval_episodes: int = field(
        default=1_000, metadata={"help": "greedy evaluation episodes (not on the gridworld)"}
    )
    log_every: int = field(default=0, metadata={"help": "print every N episodes (0: quiet)"})


def linear_schedule(start: float, end: float, duration: float, t: float) -> float:
    """``start`` at ``t = 0``, ``end`` from ``t = duration`` on, linear in between."""
    return end + (start - end) * max(0.0, 1.0 - t / max(duration, 1e-12))


def evaluate_success_rate(env_id: str, q_table: np.ndarray, episodes: int, seed: int) -> float:
    """Share of greedy episodes with a positive return."""
    env = gym.make(env_id)
    successes = 0
    for episode in range(episodes):
        state, _ = env.reset(seed=seed + episode)
        episode_return, done = 0.0, False
        while not done:
            state, reward, terminated, truncated, _ = env.step(int(q_table[state].argmax()))
            episode_return += float(reward)
            done = terminated or truncated
        successes += episode_return > 0
    env.close()
    return successes / episodes


def train(config: Config) -> dict[str, Any]:
    """Run Q-learning; returns the learning curve, the table and the greedy evaluation."""
    # ---- environment
    env = gym.make(config.env)
    num_states, num_actions = env.observation_space.n, env.action_space.n
    rng = np.random.default_rng(config.seed)
    q_table = np.zeros((num_states, num_actions))  # (S, A)

    # ---- the loop
    start_time = time.perf_counter()
    episode_returns: list[float] = []
    episode_end_steps: list[int] = []
    abs_td_errors: list[float] = []
    global_step = 0
    decay_episodes = config.decay_fraction * config.episodes
    for episode in range(config.episodes):
        epsilon = linear_schedule(config.epsilon_start, config.epsilon_end, decay_episodes, episode)
        alpha = linear_schedule(config.alpha_start, config.alpha_end, decay_episodes, episode)
        state, _ = env.reset(seed=config.seed + episode)
        episode_return, done = 0.0, False
        while not done:
            if rng.random() < epsilon:
                action = int(rng.integers(num_actions))
            else:  # greedy, ties broken at random so unvisited states do not all go "left"
                best = np.flatnonzero(q_table[state] == q_table[state].max())
                action = int(rng.choice(best))
            next_state, reward, terminated, truncated, _ = env.step(action)
            target = reward + (0.0 if terminated else config.gamma * q_table[next_state].max())
            td_error = target - q_table[state, action]
            q_table[state, action] += alpha * td_error
            abs_td_errors.append(abs(td_error))
            episode_return += float(reward)
            global_step += 1
            state, done = next_state, terminated or truncated
        episode_returns.append(episode_return)
        episode_end_steps.append(global_step)
        if config.log_every and (episode + 1) % config.log_every == 0:
            print(
                f"episode={episode + 1} global_step={global_step} "
                f"charts/episodic_return={np.mean(episode_returns[-100:]):.3f} "
                f"charts/epsilon={epsilon:.3f} losses/abs_td_error={np.mean(abs_td_errors[-1000:]):.4f}"
            )
    env.close()
    wall_time = time.perf_counter() - start_time

    # ---- greedy evaluation
    metrics: dict[str, Any] = {
        "algorithm": "Q-learning",
        "env": config.env,
        "steps": global_step,
        "wall_time_s": wall_time,
        "episode_returns": episode_returns,
        "episode_end_steps": episode_end_steps,
        "final_mean_return": float(np.mean(episode_returns[-20:])),
        "mean_abs_td_error": float(np.mean(abs_td_errors[-1000:])),
        "q_table": q_table,
    }
    if config.env == gridworld.ENV_ID:
        grid = gridworld.CatFishDogEnv()
        path, outcome = gridworld.greedy_rollout(grid, lambda s: q_table[s].argmax())
        shortest = grid.shortest_path_length(avoid_dog=True)
        metrics.update(
            greedy_path=path,
            greedy_outcome=outcome,
            greedy_path_length=len(path) - 1,
            shortest_safe_path_length=shortest,
            greedy_is_shortest_safe_path=outcome == "fish" and len(path) - 1 == shortest,
        )
    else:
        metrics["eval_success_rate"] = evaluate_success_rate(
            config.env, q_table, config.eval_episodes, seed=10_000 + config.seed
        )
    return metrics


if __name__ == "__main__":
    result = train(parse_config(Config))
    summary = {k: v for k, v in result.items() if k not in ("episode_returns", "episode_end_steps")}
    summary.pop("q_table")
    for key, value in summary.items():
        print(f"{key}: {value}")
