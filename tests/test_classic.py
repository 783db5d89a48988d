"""Tests of the classic-RL examples in ``examples/classic/``.

Each example is imported as a module and trained for a few hundred steps (finite
losses, shapes, the returned metrics); the gridworld's transition and reward rules
are checked cell by cell; and PPO's advantages from ``rlhf_fast.gae`` with ``dones``
are compared with CleanRL's textbook loop on a real vectorised rollout that has
episode ends (and time-limit truncations) inside it.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("gymnasium")
torch = pytest.importorskip("torch")

CLASSIC_DIR = Path(__file__).resolve().parents[1] / "examples" / "classic"
sys.path.insert(0, str(CLASSIC_DIR))

import a2c  # noqa: E402
import cli  # noqa: E402
import dqn  # noqa: E402
import gridworld  # noqa: E402
import gymnasium as gym  # noqa: E402
import ppo  # noqa: E402
import q_learning  # noqa: E402
import reinforce  # noqa: E402
import rollout  # noqa: E402
import run_all  # noqa: E402

UP, RIGHT, DOWN, LEFT = range(4)


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def assert_curve(result: dict, min_episodes: int = 1) -> None:
    returns, ends = result["episode_returns"], result["episode_end_steps"]
    assert len(returns) == len(ends) >= min_episodes
    assert all(math.isfinite(r) for r in returns)
    assert list(ends) == sorted(ends) and ends[-1] <= result["steps"]
    assert result["final_mean_return"] == pytest.approx(np.mean(returns[-20:]))
    assert result["wall_time_s"] > 0


def assert_finite_history(result: dict, keys: tuple[str, ...]) -> None:
    for key in keys:
        values = result["history"][key]
        assert values, f"{key} was never logged"
        assert np.isfinite(values).all(), f"{key} holds non-finite values"


# ---------------------------------------------------------------------- gridworld
def make_grid(**kwargs) -> gridworld.CatFishDogEnv:
    env = gridworld.CatFishDogEnv(**kwargs)
    env.reset(seed=0)
    return env


def walk(env: gridworld.CatFishDogEnv, actions: list[int]):
    return [env.step(a) for a in actions]


def test_gridworld_walls_and_edges_block_and_still_cost_a_step():
    env = make_grid()
    assert env.position(env.reset()[0]) == (0, 0)
    for action in (UP, LEFT):  # off the grid
        state, reward, terminated, truncated, _ = env.step(action)
        assert env.position(state) == (0, 0)
        assert reward == pytest.approx(-0.01) and not terminated and not truncated
    walk(env, [RIGHT, RIGHT, RIGHT])
    state, reward, *_ = env.step(RIGHT)  # (0, 4) is a wall
    assert env.position(state) == (0, 3) and reward == pytest.approx(-0.01)
    state, *_ = env.step(DOWN)
    assert env.position(state) == (1, 3)


def test_gridworld_dog_ends_the_episode_with_the_penalty():
    env = make_grid()
    *_, (state, reward, terminated, truncated, info) = walk(
        env, [RIGHT, RIGHT, RIGHT, DOWN, DOWN, RIGHT]
    )
    assert env.cell(env.position(state)) == "D"
    assert reward == pytest.approx(-1.0 - 0.01)
    assert terminated and not truncated and info["caught_by_dog"]


def test_gridworld_fish_ends_the_episode_with_the_reward():
    env = make_grid()
    path = [DOWN, DOWN, RIGHT, RIGHT, DOWN, DOWN, RIGHT, RIGHT, RIGHT, UP, RIGHT, RIGHT, DOWN]
    results = walk(env, path)
    rewards = [r for _, r, *_ in results]
    state, reward, terminated, truncated, info = results[-1]
    assert env.position(state) == env.fish
    assert terminated and not truncated and info["caught_fish"]
    assert rewards[:-1] == pytest.approx([-0.01] * 12) and reward == pytest.approx(1.0 - 0.01)
    assert len(path) == env.shortest_path_length(avoid_dog=True) == 13


def test_gridworld_dog_sits_on_the_shortest_path():
    env = make_grid()
    assert env.shortest_path_length(avoid_dog=False) == 11
    assert env.shortest_path_length(avoid_dog=True) == 13


def test_gridworld_truncates_after_max_steps():
    env = make_grid(max_steps=3)
    outcomes = [(term, trunc) for _, _, term, trunc, _ in walk(env, [UP, UP, UP])]
    assert outcomes == [(False, False), (False, False), (False, True)]


def test_gridworld_rejects_bad_actions_and_layouts():
    with pytest.raises(ValueError, match="action must be in 0..3"):
        make_grid().step(4)
    with pytest.raises(ValueError, match="same length"):
        gridworld.CatFishDogEnv(layout=("C.F", ".."))
    with pytest.raises(ValueError, match="exactly one 'F'"):
        gridworld.CatFishDogEnv(layout=("C..", "..."))


def test_gridworld_is_registered_and_passes_the_env_checker():
    from gymnasium.utils.env_checker import check_env

    env = gym.make(gridworld.ENV_ID, max_steps=7)
    check_env(env.unwrapped, skip_render_check=True)
    state, _ = env.reset(seed=3)
    assert env.observation_space.contains(state) and env.unwrapped.max_steps == 7


# ---------------------------------------------------------------------- Q-learning
def test_q_learning_finds_the_shortest_safe_path():
    result = q_learning.train(q_learning.Config(env=gridworld.ENV_ID, seed=1, episodes=500))
    assert result["q_table"].shape == (40, 4) and np.isfinite(result["q_table"]).all()
    assert result["greedy_outcome"] == "fish"
    assert result["greedy_path_length"] == result["shortest_safe_path_length"] == 13
    assert result["greedy_is_shortest_safe_path"]
    assert_curve(result, 500)


def test_q_learning_smoke_on_frozenlake():
    result = q_learning.train(
        q_learning.Config(env="FrozenLake-v1", seed=0, episodes=100, eval_episodes=20)
    )
    assert result["q_table"].shape == (16, 4) and np.isfinite(result["q_table"]).all()
    assert 0.0 <= result["eval_success_rate"] <= 1.0
    assert math.isfinite(result["mean_abs_td_error"])
    assert_curve(result, 100)


# ---------------------------------------------------------------------- REINFORCE
@pytest.mark.parametrize("baseline", [True, False])
@pytest.mark.parametrize("env_id", ["CartPole-v1", gridworld.ENV_ID])
def test_reinforce_smoke(env_id, baseline):
    config = reinforce.Config(
        env=env_id, seed=0, baseline=baseline, total_episodes=8, episodes_per_batch=4
    )
    result = reinforce.train(config)
    assert_curve(result, 8)
    assert len(result["history"]["losses/policy_loss"]) == 2
    assert_finite_history(result, ("losses/policy_loss",))
    assert bool(result["history"]["losses/value_loss"]) == baseline
    if baseline:
        assert_finite_history(result, ("losses/value_loss",))


def test_reinforce_episode_batch_layout():
    envs = [gym.make("CartPole-v1") for _ in range(3)]
    for i, env in enumerate(envs):
        env.reset(seed=i)
    encode = reinforce.ObservationEncoder(envs[0].observation_space)
    policy = reinforce.mlp(encode.size, 2, 8)
    batch = reinforce.play_episodes(envs, policy, encode, torch.Generator().manual_seed(0))
    lengths = batch.mask.sum(axis=1)
    num_rows, longest = batch.mask.shape
    assert num_rows == 3 and longest == lengths.max()
    assert batch.features.shape == (3, longest, 4) and batch.final_features.shape == (3, 4)
    for row, length in enumerate(lengths):  # right-padded: ones, then zeros
        assert batch.mask[row, :length].all() and not batch.mask[row, length:].any()
        assert (batch.rewards[row, :length] == 1).all() and (batch.rewards[row, length:] == 0).all()
    assert not batch.truncated.any()  # an untrained policy drops the pole within 500 steps


# ---------------------------------------------------------------------- DQN
def test_dqn_smoke():
    config = dqn.Config(
        seed=0, total_steps=600, learning_starts=200, train_frequency=10, batch_size=32,
        buffer_size=500, target_update_every=100,
    )  # fmt: skip
    result = dqn.train(config)
    assert result["steps"] == 600
    assert_curve(result, 5)
    assert len(result["history"]["losses/td_loss"]) == 40
    assert_finite_history(result, ("losses/td_loss", "losses/q_values"))


def test_dqn_replay_buffer_wraps_around():
    buffer = dqn.ReplayBuffer(capacity=3, observation_shape=(2,))
    for i in range(5):
        buffer.add(np.full(2, i), i % 2, float(i), np.full(2, i + 1), terminated=i == 4)
    assert buffer.size == 3 and buffer.cursor == 2
    assert sorted(buffer.rewards.tolist()) == [2.0, 3.0, 4.0]
    batch = buffer.sample(16, np.random.default_rng(0))
    assert batch["observations"].shape == (16, 2) and batch["actions"].dtype == torch.int64
    obs, next_obs = batch["observations"], batch["next_observations"]
    assert torch.equal(next_obs, obs + 1)
    assert torch.equal(batch["terminated"], (batch["rewards"] == 4).float())


# ---------------------------------------------------------------------- A2C and PPO
def test_a2c_smoke():
    result = a2c.train(a2c.Config(seed=0, total_steps=400, num_envs=4, num_steps=5))
    assert result["steps"] == 400
    assert_curve(result, 4)
    assert len(result["history"]["losses/value_loss"]) == 20
    assert_finite_history(result, ("losses/policy_loss", "losses/value_loss", "losses/entropy"))


def test_ppo_smoke_and_the_two_gae_implementations_give_the_same_run():
    results = {
        impl: ppo.train(
            ppo.Config(seed=0, total_steps=1_024, num_envs=4, num_steps=64, gae_impl=impl)
        )
        for impl in ("rlhf_fast", "numpy")
    }
    result = results["rlhf_fast"]
    assert result["steps"] == 1_024
    assert_curve(result, 10)
    keys = ("losses/policy_loss", "losses/value_loss", "losses/entropy", "losses/approx_kl")
    assert_finite_history(result, keys)
    assert len(result["history"]["losses/value_loss"]) == 4
    assert results["numpy"]["episode_returns"] == result["episode_returns"]
    assert results["numpy"]["history"] == result["history"]


def random_rollout(env_id: str, num_envs: int, num_steps: int, **env_kwargs) -> rollout.Rollout:
    torch.manual_seed(0)
    envs = rollout.make_vector_env(env_id, num_envs, **env_kwargs)
    collector = rollout.RolloutCollector(envs, seed=0, gamma=0.99)
    num_features = int(np.prod(envs.single_observation_space.shape))
    agent = rollout.ActorCritic(num_features, int(envs.single_action_space.n))
    batch = collector.collect(agent, num_steps)
    envs.close()
    return batch


def cleanrl_gae(rewards, values, next_obs_starts_episode, next_value, next_done, gamma, lam):
    """CleanRL's loop, verbatim in its own convention: ``dones[t]`` is 1 when the
    observation at ``t`` is the first of an episode (the step before ended one)."""
    num_steps = rewards.shape[0]
    advantages = np.zeros_like(rewards)
    lastgaelam = 0.0
    for t in reversed(range(num_steps)):
        if t == num_steps - 1:
            nextnonterminal = 1.0 - next_done
            nextvalues = next_value
        else:
            nextnonterminal = 1.0 - next_obs_starts_episode[t + 1]
            nextvalues = values[t + 1]
        delta = rewards[t] + gamma * nextvalues * nextnonterminal - values[t]
        advantages[t] = lastgaelam = delta + gamma * lam * nextnonterminal * lastgaelam
    return advantages, advantages + values


def test_ppo_gae_with_dones_equals_the_textbook_loop_on_a_vectorised_rollout():
    batch = random_rollout("CartPole-v1", num_envs=6, num_steps=96)
    ends_per_env = batch.dones.sum(axis=0)
    assert (ends_per_env >= 1).all() and batch.dones[-1].sum() < 6  # episode ends inside rows
    rewards, values = batch.rewards.astype(np.float64), batch.values.astype(np.float64)
    bootstrap = batch.bootstrap_values.astype(np.float64)
    gamma, lam = 0.99, 0.95

    kernel_adv, kernel_ret = ppo.gae_rlhf_fast(rewards, values, batch.dones, bootstrap, gamma, lam)
    # CleanRL's dones are ours shifted by one step: its dones[t + 1] is our dones[t].
    starts = np.concatenate([np.zeros((1, 6)), batch.dones[:-1]]).astype(np.float64)
    textbook_adv, textbook_ret = cleanrl_gae(
        rewards, values, starts, bootstrap, batch.dones[-1].astype(np.float64), gamma, lam
    )
    loop_adv, loop_ret = ppo.gae_numpy(rewards, values, batch.dones, bootstrap, gamma, lam)

    assert kernel_adv.shape == (96, 6)
    np.testing.assert_allclose(kernel_adv, textbook_adv, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(kernel_ret, textbook_ret, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(loop_adv, textbook_adv)
    np.testing.assert_array_equal(loop_ret, textbook_ret)
    # float64 differences far below float32 resolution: the cast gives the same bits.
    np.testing.assert_array_equal(kernel_adv.astype(np.float32), loop_adv.astype(np.float32))


def test_rollout_bootstraps_truncated_steps_from_the_final_observation():
    # The cat cannot reach the dog or the fish in 5 moves, so every episode is cut
    # by the time limit and every end-of-episode reward gets gamma * V(final obs).
    torch.manual_seed(0)
    envs = rollout.make_vector_env(gridworld.ENV_ID, 3, max_steps=5)
    collector = rollout.RolloutCollector(envs, seed=0, gamma=0.99)
    agent = rollout.ActorCritic(1, 4)
    with torch.no_grad():  # a critic that says 2.0 everywhere
        agent.critic[-1].weight.zero_()
        agent.critic[-1].bias.fill_(2.0)
    batch = collector.collect(agent, 12)
    envs.close()
    expected_dones = np.zeros((12, 3), dtype=np.uint8)
    expected_dones[[4, 9]] = 1
    np.testing.assert_array_equal(batch.dones, expected_dones)
    expected_rewards = np.where(expected_dones == 1, -0.01 + 0.99 * 2.0, -0.01)
    np.testing.assert_allclose(batch.rewards, expected_rewards, rtol=1e-6)
    assert collector.episode_returns == pytest.approx([-0.05] * 6)  # undiscounted, uncredited
    np.testing.assert_allclose(batch.bootstrap_values, 2.0)


# ---------------------------------------------------------------------- glue
def test_parse_config_builds_flags_from_the_dataclass():
    config = cli.parse_config(
        ppo.Config, ["--env", "Acrobot-v1", "--gae-impl", "numpy", "--anneal-lr", "false",
                     "--gae-lambda", "0.9"]
    )  # fmt: skip
    assert (config.env, config.gae_impl, config.anneal_lr, config.gae_lambda) == (
        "Acrobot-v1", "numpy", False, 0.9
    )  # fmt: skip
    assert config.seed == ppo.Config().seed
    with pytest.raises(SystemExit):
        cli.parse_config(ppo.Config, ["--gae-impl", "torch"])


def test_running_mean_and_the_run_list():
    np.testing.assert_allclose(
        run_all.running_mean(np.arange(1.0, 5.0), window=2), [1, 1.5, 2.5, 3.5]
    )
    runs = run_all.all_runs()
    assert len({r.name for r in runs}) == len(runs)
    assert {r.group for r in runs} == {"q_learning", "reinforce", "dqn", "a2c", "ppo"}
