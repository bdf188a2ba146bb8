"""A parameter budget: maps over it are projected onto it, maps within it are left alone."""

import csv
import json

import gymnasium as gym
import numpy as np
import pytest
from click.testing import CliRunner
from gymnasium.utils.env_checker import check_env

import rankgym  # noqa: F401  (registers the ids)
from rankgym.budget import budget_params, largest_factor, project, rank_grid
from rankgym.cli import main
from rankgym.errors import ConfigError
from rankgym.core import ModuleInfo, adapter_params


def modules(rng, n):
    return [ModuleInfo(f"m{i}", "query", i, int(rng.choice([32, 64, 96])), int(rng.choice([32, 64, 128])), ()) for i in range(n)]


def params_at(ranks, mods, factor, min_rank, step):
    on_grid = [0 if r == 0 else max(min_rank, min_rank + step * int(np.floor((r * factor - min_rank) / step + 1e-9))) for r in ranks]
    return adapter_params(mods, on_grid), on_grid


@pytest.mark.parametrize("min_rank,step", [(0, 2), (0, 1), (2, 2)])
def test_projection_fits_the_budget_keeps_maps_within_it_and_is_the_largest_common_factor(min_rank, step):
    rng = np.random.default_rng(min_rank * 10 + step)
    for _ in range(150):
        mods = modules(rng, int(rng.integers(2, 9)))
        ranks = rng.choice(np.arange(min_rank, 17, step), size=len(mods))
        full = adapter_params(mods, ranks)
        floor = adapter_params(mods, [min_rank if r else 0 for r in ranks])
        budget = int(rng.uniform(floor, full * 1.3))
        out = project(ranks, mods, budget, min_rank, step)
        assert adapter_params(mods, out) <= budget
        if full <= budget:
            assert (out == ranks).all()  # a no-op within the budget
            continue
        assert (out <= ranks).all() and all(r == 0 or (r >= min_rank and (r - min_rank) % step == 0) for r in out)
        # no common factor on a fine grid does better (checked by brute force, not bisection)
        best = max(p for p, _ in (params_at(ranks, mods, f, min_rank, step) for f in np.linspace(0, 1, 2001)) if p <= budget)
        assert adapter_params(mods, out) >= best


def test_largest_factor_is_the_bisection_of_a_monotone_test():
    for threshold in (0.0, 0.123456, 0.5, 0.999, 1.0):
        assert largest_factor(lambda f: f <= threshold) == pytest.approx(threshold, abs=1e-9)
    assert largest_factor(lambda f: f == 0.0) == 0.0  # holds only at 0: nothing larger is claimed


@pytest.mark.parametrize("min_rank,max_rank,step,expected", [
    (0, 16, 2, [0, 2, 4, 6, 8, 10, 12, 14, 16]),
    (0, 16, 3, [0, 3, 6, 9, 12, 15, 16]),
    (2, 12, 4, [2, 6, 10, 12]),
    (4, 4, 2, [4]),
])
def test_the_rank_grid_is_counted_from_min_rank_and_always_holds_max_rank(min_rank, max_rank, step, expected):
    assert rank_grid(min_rank, max_rank, step) == expected


def test_random_search_and_the_allocation_env_draw_from_the_rank_grid_max_rank_included(tmp_path):
    from rankgym.envs.allocation import RankAllocationEnv

    run = tmp_path / "random"
    result = CliRunner().invoke(main, ["search", "RankSearch-fake-v0", "--agent", "random", "--budget", "6", "--env", "rank_step=3",
                                       "--env", "max_rank=16", "--out", str(run), "--no-report", "--no-promote"])
    assert result.exit_code == 0, result.output
    with (run / "steps.csv").open() as f:
        ranks = [r for row in csv.DictReader(f) for r in json.loads(row["rank_map"]).values()]
    assert set(ranks) <= {0, 3, 6, 9, 12, 15, 16} and 16 in ranks  # 6 maps of 24 modules: max_rank is drawn
    env = RankAllocationEnv(gym.make("RankSearch-fake-v0", rank_step=3, max_rank=16).unwrapped)
    assert set(env.choices.tolist()) <= {0, 3, 6, 9, 12, 15, 16} and env.choices.max() == 16


def test_budgets_are_fractions_or_counts_and_impossible_ones_are_refused():
    assert budget_params(0.4, 1000) == 400 and budget_params(1, 1000) == 1000 and budget_params(2500, 1000) == 2500
    for bad in (0, -1, "0.4", True):
        with pytest.raises(ConfigError, match="param_budget"):
            budget_params(bad, 1000)
    mods = modules(np.random.default_rng(0), 3)
    with pytest.raises(ConfigError, match="below what min_rank=2"):
        project([8, 8, 8], mods, 10, min_rank=2, rank_step=2)


def test_the_env_projects_every_map_and_rewards_the_metric():
    env = gym.make("RankSearch-fake-v0", param_budget=0.3)
    check_env(env.unwrapped)
    obs, info = env.reset(seed=0)
    assert info["projected"] and info["cost"] <= 0.3  # uniform 8 of 16 costs 0.5
    grow = np.full(env.action_space.shape, 2)
    for _ in range(5):
        obs, reward, terminated, truncated, info = env.step(grow)
        assert info["cost"] <= 0.3 and reward == info["metric"]
    assert info["projected"] and env.unwrapped.lam == 0.0
    inside = env.unwrapped.evaluate_map({n: 2 for n in env.unwrapped.names})
    assert not inside["projected"] and set(inside["rank_map"].values()) == {2}
    absolute = gym.make("RankSearch-fake-v0", param_budget=5000)
    _, info = absolute.reset(seed=0)
    assert info["params"] <= 5000 and gym.make("RankSearch-fake-v0", param_budget=0.3, lam=0.2).unwrapped.lam == 0.2


@pytest.mark.parametrize("agent", ["random", "uniform"])
def test_search_with_a_param_budget_never_evaluates_a_map_over_it(tmp_path, agent):
    run = tmp_path / agent
    result = CliRunner().invoke(main, ["search", "RankSearch-fake-v0", "--agent", agent, "--budget", "12", "--param-budget", "0.4",
                                       "--out", str(run), "--no-report"])
    assert result.exit_code == 0, result.output
    with (run / "steps.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert rows and all(float(r["cost"]) <= 0.4 for r in rows)
    assert all(float(r["score"]) == float(r["metric"]) for r in rows if r["error"] == "")
    assert json.loads((run / "config.json").read_text())["env_kwargs"]["param_budget"] == 0.4
