"""A cat, a fish and a dog on a grid: a small gymnasium environment of our own.

The cat starts on ``C`` and must reach the fish ``F`` while keeping away from the
dog ``D``; ``#`` cells are walls. Rules:

- Actions ``0..3`` move up, right, down, left by one cell. A move into a wall or off
  the grid leaves the cat where it is (the step still costs).
- Every step costs ``step_cost``. Reaching the fish adds ``fish_reward`` and ends the
  episode (``terminated``); reaching the dog adds ``dog_penalty`` (negative) and ends
  it too. After ``max_steps`` steps without either, the episode is ``truncated``.
- Observations are the cat's cell index ``row * num_cols + col`` (``Discrete``).

The default layout puts the dog on the direct route, so the shortest *safe* path
(13 steps) is longer than the shortest path through the dog (11 steps): a policy
that ignores the dog is caught, and one that learned to avoid it takes the detour.
Importing this module registers it with gymnasium as ``CatFishDog-v0``.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Optional

import gymnasium as gym
import numpy as np

ENV_ID = "CatFishDog-v0"

DEFAULT_LAYOUT = (
    "C...#...",
    ".##.#.#.",
    "....D.#.",
    ".#.##...",
    ".#....#F",
)

# (row, col) offsets of the four actions: up, right, down, left.
MOVES = ((-1, 0), (0, 1), (1, 0), (0, -1))
ACTION_NAMES = ("up", "right", "down", "left")


class CatFishDogEnv(gym.Env[int, int]):
    """Grid navigation: reach the fish, avoid the dog, pay a small cost per step."""

    metadata = {"render_modes": ["ansi"]}

    def __init__(
        self,
        layout: tuple[str, ...] = DEFAULT_LAYOUT,
        fish_reward: float = 1.0,
        dog_penalty: float = -1.0,
        step_cost: float = 0.01,
        max_steps: int = 100,
        render_mode: Optional[str] = None,
    ) -> None:
        if len({len(row) for row in layout}) != 1:
            raise ValueError(f"layout rows must all have the same length, got {layout!r}")
        for mark in "CF":
            found = sum(row.count(mark) for row in layout)
            if found != 1:
                raise ValueError(f"layout must hold exactly one {mark!r}, found {found}")
        if dog_penalty > 0 or step_cost < 0:
            raise ValueError(
                f"dog_penalty must be <= 0 and step_cost >= 0, got {dog_penalty} and {step_cost}"
            )
        self.layout = tuple(layout)
        self.num_rows, self.num_cols = len(layout), len(layout[0])
        self.fish_reward, self.dog_penalty, self.step_cost = fish_reward, dog_penalty, step_cost
        self.max_steps = max_steps
        self.render_mode = render_mode
        self.observation_space = gym.spaces.Discrete(self.num_rows * self.num_cols)
        self.action_space = gym.spaces.Discrete(len(MOVES))
        self.start = self._find("C")
        self.fish = self._find("F")
        self._cat = self.start
        self._steps = 0

    # ------------------------------------------------------------------ layout queries
    def _find(self, mark: str) -> tuple[int, int]:
        for r, row in enumerate(self.layout):
            if mark in row:
                return r, row.index(mark)
        raise ValueError(f"no {mark!r} in layout")

    def cell(self, position: tuple[int, int]) -> str:
        """The layout character at ``(row, col)``."""
        return self.layout[position[0]][position[1]]

    def state_index(self, position: tuple[int, int]) -> int:
        return position[0] * self.num_cols + position[1]

    def position(self, state: int) -> tuple[int, int]:
        return divmod(int(state), self.num_cols)

    def next_position(self, position: tuple[int, int], action: int) -> tuple[int, int]:
        """Where ``action`` takes the cat from ``position`` (walls and edges block)."""
        dr, dc = MOVES[action]
        r, c = position[0] + dr, position[1] + dc
        if not (0 <= r < self.num_rows and 0 <= c < self.num_cols) or self.layout[r][c] == "#":
            return position
        return r, c

    def shortest_path_length(self, avoid_dog: bool = True) -> Optional[int]:
        """Fewest moves from the start to the fish (breadth-first), or None if unreachable."""
        blocked = "#D" if avoid_dog else "#"
        distance = {self.start: 0}
        queue = deque([self.start])
        while queue:
            here = queue.popleft()
            if here == self.fish:
                return distance[here]
            for action in range(len(MOVES)):
                there = self.next_position(here, action)
                if there not in distance and self.cell(there) not in blocked:
                    distance[there] = distance[here] + 1
                    queue.append(there)
        return None

    # ------------------------------------------------------------------ gymnasium API
    def reset(
        self, *, seed: Optional[int] = None, options: Optional[dict[str, Any]] = None
    ) -> tuple[int, dict[str, Any]]:
        super().reset(seed=seed)
        self._cat = self.start
        self._steps = 0
        return self.state_index(self._cat), {}

    def step(self, action: int) -> tuple[int, float, bool, bool, dict[str, Any]]:
        if not self.action_space.contains(action):
            raise ValueError(f"action must be in 0..{len(MOVES) - 1}, got {action!r}")
        self._cat = self.next_position(self._cat, int(action))
        self._steps += 1
        reward = -self.step_cost
        here = self.cell(self._cat)
        terminated = here in "FD"
        if here == "F":
            reward += self.fish_reward
        elif here == "D":
            reward += self.dog_penalty
        truncated = not terminated and self._steps >= self.max_steps
        info = {"caught_fish": here == "F", "caught_by_dog": here == "D"}
        return self.state_index(self._cat), float(reward), terminated, truncated, info

    def render(self) -> str:
        rows = [list(row.replace("C", ".")) for row in self.layout]
        rows[self._cat[0]][self._cat[1]] = "C"
        return "\n".join("".join(row) for row in rows)


def greedy_rollout(env: CatFishDogEnv, action_for: Any) -> tuple[list[tuple[int, int]], str]:
    """Follow ``action_for(state) -> action`` from the start; returns the cells visited
    (start included) and how it ended: ``"fish"``, ``"dog"`` or ``"time"``."""
    state, _ = env.reset()
    path = [env.position(state)]
    while True:
        state, _, terminated, truncated, info = env.step(int(action_for(state)))
        path.append(env.position(state))
        if terminated:
            return path, "fish" if info["caught_fish"] else "dog"
        if truncated:
            return path, "time"


def one_hot(states: np.ndarray, num_states: int) -> np.ndarray:
    """``[N]`` int cell indices -> ``[N, num_states]`` float32 one-hot rows."""
    return np.eye(num_states, dtype=np.float32)[np.asarray(states, dtype=np.int64)]


if ENV_ID not in gym.registry:
    gym.register(id=ENV_ID, entry_point=CatFishDogEnv)
