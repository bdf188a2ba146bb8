"""AMC-style episodes and the PPO agent on them: one evaluation per episode, a policy that acts on any module count."""

import csv
import json

import gymnasium as gym
import numpy as np
import pytest
from click.testing import CliRunner
from rankgym.agents import ppo

import rankgym  # noqa: F401
from rankgym.cli import main
from rankgym.envs.allocation import RankAllocationEnv
from rankgym.core import adapter_params


def test_an_episode_sets_each_module_once_and_scores_the_map_once():
    search = gym.make("RankSearch-fake-calibrated-v0", param_budget=0.4, seed=2).unwrapped
    env = RankAllocationEnv(search)
    obs, _ = env.reset(seed=0)
    assert obs.shape == env.observation_space.shape and env.observation_space.contains(obs)
    rng = np.random.default_rng(0)
    actions = rng.integers(0, env.action_space.n, size=env.n_modules)
    rewards = []
    for i, a in enumerate(actions):
        obs, reward, terminated, truncated, info = env.step(int(a))
        rewards.append(reward)
        assert terminated == (i == env.n_modules - 1) and not truncated
        assert env.observation_space.contains(obs)
    assert rewards[:-1] == [0.0] * (env.n_modules - 1) and search.evaluations == 1
    chosen = [int(env.choices[a]) for a in actions]
    ranks = [info["rank_map"][n] for n in search.names]
    assert adapter_params(search.modules, ranks) <= search.budget  # projected onto the budget, like every agent's map
    if adapter_params(search.modules, chosen) <= search.budget:
        assert ranks == chosen
    assert rewards[-1] == info["reward"] == info["metric"]  # param_budget: the reward is the metric


def test_the_shipped_policy_acts_on_envs_of_any_module_count(sst2_dir):
    from stable_baselines3 import PPO

    policy = PPO.load(str(ppo.SHIPPED), device="cpu")
    searches = [gym.make("RankSearch-fake-calibrated-v0", fake_layers=layers, param_budget=0.3).unwrapped for layers in (1, 10)]
    searches += [gym.make("RankSearch-fake-v0", fake_layers=3).unwrapped,  # 18 modules, no budget: lam = 0.5
                 gym.make("RankSearch-tiny-sst2-v0", train_examples=32, val_examples=32, device="cpu").unwrapped]  # a real model
    features = ppo.has_task_features(ppo.SHIPPED, RankAllocationEnv(searches[0]))
    for search in searches:
        env = RankAllocationEnv(search, task_features=features)
        obs, done = env.reset()[0], False
        while not done:
            action, _ = policy.predict(obs, deterministic=True)
            obs, _, done, _, info = env.step(int(action))
        assert len(info["rank_map"]) == len(search.modules) and info["error"] is None
    # on the calibrated fake (param_budget 0.4; its probes seen, its seed never in pretraining) its one deterministic map
    # beats nine in ten random maps of the same budget (the shipped policy's: 63 of 64)
    search = gym.make("RankSearch-fake-calibrated-v0", param_budget=0.4).unwrapped
    env = RankAllocationEnv(search, task_features=features)
    obs, done = env.reset()[0], False
    while not done:
        obs, _, done, _, info = env.step(int(policy.predict(obs, deterministic=True)[0]))
    acted = info["metric"]
    rng = np.random.default_rng(0)
    random_maps = [search.evaluate_map(dict(zip(search.names, rng.integers(0, 17, len(search.names)).tolist())))["metric"]
                   for _ in range(64)]
    assert acted > np.percentile(random_maps, 90), (acted, np.percentile(random_maps, [50, 90, 100]))


def test_search_spends_its_budget_in_maps_and_resume_repeats_nothing(tmp_path):
    run = tmp_path / "run"
    args = ["search", "RankSearch-fake-calibrated-v0", "--agent", "ppo", "--budget", "16", "--seed", "1", "--out", str(run),
            "--param-budget", "0.4", "--no-report"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader((run / "steps.csv").open()))
    assert len(rows) == 16 and all(r["kind"] == "map" for r in rows)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["best_reward"] == pytest.approx(max(float(r["score"]) for r in rows))
    result = CliRunner().invoke(main, ["search", "--resume", str(run), "--no-report"])
    assert result.exit_code == 0, result.output
    assert list(csv.DictReader((run / "steps.csv").open())) == rows


def test_the_first_map_is_the_pretrained_policys_most_likely_one(tmp_path):
    from stable_baselines3 import PPO

    search = gym.make("RankSearch-fake-calibrated-v0", param_budget=0.4).unwrapped
    features = ppo.has_task_features(ppo.SHIPPED, RankAllocationEnv(search))
    env, policy = RankAllocationEnv(search, task_features=features), PPO.load(str(ppo.SHIPPED), device="cpu")
    obs, done = env.reset()[0], False
    while not done:
        obs, _, done, _, info = env.step(int(policy.predict(obs, deterministic=True)[0]))
    probes = len(env.groups) if features else 0  # scored before the policy's first map
    summary = ppo.run(ppo.Args(env_id="RankSearch-fake-calibrated-v0", budget=probes + 1, seed=0, out=str(tmp_path / "r"),
                               env_kwargs={"param_budget": 0.4}, promote=0))
    rows = list(csv.DictReader((tmp_path / "r" / "steps.csv").open()))
    assert summary["evaluations"] == probes + 1 and json.loads(rows[-1]["rank_map"]) == info["rank_map"]
    assert float(rows[-1]["metric"]) == pytest.approx(info["metric"])


def test_a_missing_policy_file_is_one_clear_error(tmp_path):
    result = CliRunner().invoke(main, ["search", "RankSearch-fake-v0", "--agent", "ppo", "--budget", "2", "--out", str(tmp_path / "r"),
                                       "--set", f"pretrained={tmp_path / 'nope.zip'}"])
    assert result.exit_code == 2 and "no pretrained policy at" in result.output


def test_ppo_steps_hyperparameters_are_package_data_merged_default_then_env_then_overrides():
    import fnmatch
    import tomllib
    from pathlib import Path

    from rankgym.agents import ppo_steps

    root = Path(__file__).resolve().parents[1]
    globs = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["rankgym"]
    shipped = [p.name for p in (root / "rankgym" / "data").iterdir()]
    assert all(any(fnmatch.fnmatch(f"data/{name}", g) for g in globs) for name in shipped), (shipped, globs)  # a wheel holds them all
    merged = ppo_steps.hyperparameters("RankSearch-tiny-sst2-v0", {"gamma": 0.5})
    assert (merged["n_steps"], merged["batch_size"], merged["learning_rate"], merged["gamma"]) == (16, 16, 0.0003, 0.5)
    assert ppo_steps.hyperparameters("RankSearch-unlisted-v0", {})["n_steps"] == 32  # the default entry alone


def test_pretraining_draws_the_shipped_surrogates_at_their_share_and_the_fakes_otherwise():
    from rankgym.evaluators.fake import FakeEvaluator
    from rankgym.evaluators.surrogate import SurrogateEvaluator

    def draws(share: float, n: int = 120) -> list:
        env = ppo.pretraining_env(7, ("sst2",), share)()
        found = []
        for _ in range(n):
            env.reset()
            found.append(env.env.search)
        return found

    assert all(isinstance(s.evaluator, FakeEvaluator) for s in draws(0.0, 20))
    real = draws(1.0, 20)
    assert all(isinstance(s.evaluator, SurrogateEvaluator) and len(s.modules) == 36 for s in real)
    assert all(0.1 * s.reference_params <= s.budget <= 0.7 * s.reference_params for s in real)  # SST-2's table has no budget: drawn
    assert len({s.budget for s in real}) > 10
    mixed = sum(isinstance(s.evaluator, SurrogateEvaluator) for s in draws(0.5))
    assert 35 <= mixed <= 85  # Binomial(120, 0.5): outside this with probability about 1e-5


def test_pretraining_refuses_a_task_without_a_shipped_table_before_training(tmp_path):
    from rankgym.errors import ConfigError

    with pytest.raises(ConfigError, match="ships no surrogate table for 'rte'"):
        ppo.run(ppo.Args(pretrain=str(tmp_path / "p.zip"), pretrain_surrogates="sst2,rte"))
    assert not (tmp_path / "p.zip").exists()


def test_a_policy_pretrained_on_fakes_and_a_real_score_table_loads_and_acts_on_the_held_out_task(tmp_path):
    from stable_baselines3 import PPO

    out = tmp_path / "policy.zip"
    result = ppo.run(ppo.Args(pretrain=str(out), pretrain_steps=2048, pretrain_surrogates="sst2", surrogate_share=0.5))
    assert result["surrogates"] == ["sst2"] and out.is_file()
    policy = PPO.load(str(out), device="cpu")
    env = RankAllocationEnv(gym.make("RankSearch-fake-calibrated-v0", param_budget=0.3, seed=3).unwrapped)  # a task it never saw
    obs, _ = env.reset(seed=0)
    for _ in range(env.n_modules):
        obs, _, terminated, _, info = env.step(int(policy.predict(obs, deterministic=True)[0]))
    assert terminated and info["params"] <= env.search.budget


@pytest.mark.parametrize("agent", ["ppo", "ppo-steps"])
def test_a_search_leaves_nothing_in_the_temporary_folder(tmp_path, monkeypatch, agent):
    import tempfile

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where SB3's default logger would make SB3-<date>/
    result = CliRunner().invoke(main, ["search", "RankSearch-fake-calibrated-v0", "--agent", agent, "--budget", "40", "--out",
                                       str(tmp_path / "run"), "--no-promote", "--no-report"])
    assert result.exit_code == 0, result.output
    assert list(scratch.iterdir()) == []


def test_task_features_are_each_modules_kind_and_block_probe_scaled_among_the_groups():
    def make():
        return gym.make("RankSearch-fake-calibrated-v0", param_budget=0.3, seed=4).unwrapped

    search = make()
    plain, env = RankAllocationEnv(make()), RankAllocationEnv(search, task_features=True)
    assert env.observation_space.shape[0] == plain.observation_space.shape[0] + 2
    obs, _ = env.reset(seed=0)
    kinds = list(dict.fromkeys(m.kind for m in search.modules))
    blocks = list(dict.fromkeys(m.layer for m in search.modules))
    assert search.evaluations == len(kinds) + len(blocks)  # one evaluation per probe, at the first reset only

    def probe(member) -> float:  # the group at max_rank, the rest at 0, projected onto the budget
        other = make()
        return other.evaluate_map({m.name: 16 if member(m) else 0 for m in other.modules})["reward"]

    by_kind = np.array([probe(lambda m, k=k: m.kind == k) for k in kinds])
    by_block = np.array([probe(lambda m, b=b: m.layer == b) for b in blocks])
    assert env.probes.tolist() == pytest.approx([*by_kind, *by_block])
    assert by_kind.std() > 0 and by_block.std() > 0
    scaled_kind = (by_kind - by_kind.min()) / (by_kind.max() - by_kind.min())
    scaled_block = (by_block - by_block.min()) / (by_block.max() - by_block.min())
    plain_obs, _ = plain.reset(seed=0)
    for module in search.modules:
        assert obs[-2:].tolist() == pytest.approx([scaled_kind[kinds.index(module.kind)], scaled_block[blocks.index(module.layer)]])
        assert obs[:-2].tolist() == plain_obs.tolist()  # the rest of the observation is the plain env's
        obs, _, done, _, _ = env.step(3)
        plain_obs = plain.step(3)[0]
    assert done
    env.reset()
    assert search.evaluations == len(kinds) + len(blocks) + 1  # the episode's map; later resets reuse the probes


def test_a_policy_pretrained_with_task_features_searches_spending_its_probes_from_the_budget(tmp_path):
    out = tmp_path / "policy.zip"
    result = ppo.run(ppo.Args(pretrain=str(out), pretrain_steps=1024, pretrain_surrogates="cola", surrogate_share=0.5,
                              task_features=True))
    assert result["task_features"] and out.is_file()
    run = tmp_path / "run"
    args = ["search", "RankSearch-fake-calibrated-v0", "--agent", "ppo", "--budget", "14", "--seed", "1", "--out", str(run),
            "--param-budget", "0.4", "--no-promote", "--no-report", "--set", f"pretrained={out}"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader((run / "steps.csv").open()))
    assert len(rows) == 14
    search = gym.make("RankSearch-fake-calibrated-v0", param_budget=0.4).unwrapped
    probes = RankAllocationEnv(search, task_features=True).probe_maps()
    assert len(probes) == 6 + 6  # six kinds and six blocks, evaluated first
    for row, ranks in zip(rows, probes):
        expected = search.evaluate_map(dict(zip(search.names, ranks)))["rank_map"]
        assert json.loads(row["rank_map"]) == expected


def test_a_policy_for_another_observation_is_one_clear_error(tmp_path):
    from stable_baselines3 import PPO

    env = gym.make("CartPole-v1")  # 4 observed features: no allocation env's
    PPO("MlpPolicy", env, n_steps=64, device="cpu").save(str(tmp_path / "other.zip"))
    result = CliRunner().invoke(main, ["search", "RankSearch-fake-v0", "--agent", "ppo", "--budget", "2", "--out", str(tmp_path / "r"),
                                       "--set", f"pretrained={tmp_path / 'other.zip'}"])
    assert result.exit_code == 2 and "pretrained for another observation" in result.output, result.output


def test_a_budget_that_the_probes_would_spend_is_one_clear_error(tmp_path):
    out = tmp_path / "policy.zip"
    ppo.run(ppo.Args(pretrain=str(out), pretrain_steps=512, task_features=True))
    result = CliRunner().invoke(main, ["search", "RankSearch-fake-calibrated-v0", "--agent", "ppo", "--budget", "12", "--out",
                                       str(tmp_path / "r"), "--no-promote", "--set", f"pretrained={out}"])
    assert result.exit_code == 2 and "pass --budget 13 or more" in result.output, result.output
    assert not (tmp_path / "r" / "steps.csv").exists() or (tmp_path / "r" / "steps.csv").read_text().count("\n") <= 1
