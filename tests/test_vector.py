"""K environments whose maps train together: Gymnasium's vector API and SB3's VecEnv."""

import json

import gymnasium as gym
import numpy as np
from click.testing import CliRunner

import rankgym  # noqa: F401
from rankgym.cli import main
from rankgym.envs.vector import RankSearchVecEnv
from rankgym.registry import make_batched_episodes

FAST = dict(device="cpu", train_examples=32, val_examples=32)


def test_make_vec_batches_the_maps_of_a_step(sst2_dir):
    venv = gym.make_vec("RankSearch-tiny-sst2-v0", num_envs=3, data_dir=str(sst2_dir), **FAST)
    obs, info = venv.reset(seed=0)
    core = venv.unwrapped.core if hasattr(venv.unwrapped, "core") else venv.core
    assert obs.shape == (3, venv.single_observation_space.shape[0])
    assert core.evaluator.name == "batched" and core.envs[0].evaluations == 1  # one initial map, evaluated once
    actions = np.stack([np.full(8, 2), np.full(8, 0), np.full(8, 1)])
    obs, rewards, terminated, truncated, info = venv.step(actions)
    assert core.envs[0].evaluations == 3  # grown and shrunk maps trained together; "keep" came from the store
    assert [env.last_evaluation.cache_hit for env in core.envs] == [False, False, True]
    assert info["params"][0] > info["params"][2] > info["params"][1]
    assert np.all((rewards > -1) & (rewards < 1)) and obs.shape[0] == 3


def test_vector_results_equal_single_env_results(sst2_dir):
    venv = gym.make_vec("RankSearch-tiny-sst2-v0", num_envs=2, data_dir=str(sst2_dir), seed=4, **FAST)
    venv.reset(seed=0)
    _, vec_rewards, _, _, vec_info = venv.step(np.stack([np.full(8, 2), np.full(8, 0)]))
    for i, action in enumerate((np.full(8, 2), np.full(8, 0))):
        env = gym.make("RankSearch-tiny-sst2-v0", data_dir=str(sst2_dir), seed=4, **FAST)
        env.reset(seed=0)
        _, reward, _, _, info = env.step(action)
        assert info["metric"] == vec_info["metric"][i] and abs(reward - vec_rewards[i]) < 1e-6


def test_sb3_vec_env_auto_resets_with_terminal_observation():
    logged = []
    core = make_batched_episodes(2, "RankSearch-fake-v0", lambda i, kind, info, r: logged.append((i, kind)), max_episode_steps=2)
    venv = RankSearchVecEnv(core)
    venv.reset()
    venv.step(np.ones((2, 24), dtype=int))
    obs, rewards, dones, infos = venv.step(np.ones((2, 24), dtype=int))
    assert dones.tolist() == [True, True] and "terminal_observation" in infos[0] and infos[0]["TimeLimit.truncated"]
    assert obs.shape == (2, 24 * 14 + 3)
    assert [k for _, k in logged] == ["reset"] * 2 + ["step"] * 4 + ["reset"] * 2


def test_ppo_with_n_envs_logs_every_worker(tmp_path, sst2_dir):
    run = tmp_path / "ppo4"
    result = CliRunner().invoke(main, ["search", "RankSearch-tiny-sst2-v0", "--agent", "ppo-steps", "--budget", "8", "--n-envs", "2",
                                       "--set", "n_steps=4", "--set", "batch_size=4", "--no-promote",
                                       "--out", str(run), "--no-report", "--env", f"data_dir='{sst2_dir}'",
                                       *[f"--env={k}={v!r}" for k, v in FAST.items()]])
    assert result.exit_code == 0, result.output
    rows = (run / "steps.csv").read_text().splitlines()
    workers = {line.split(",")[11] for line in rows[1:]}
    assert workers == {"0", "1"}
    assert json.loads((run / "summary.json").read_text())["evaluations"] >= 8
    assert all("transformer.h.0.attn.c_attn" in line for line in rows[1:])  # the id's own backbone, not the fake default
