"""The surrogate evaluator: fitted to recorded evaluations, its error measured on maps it never saw."""

import csv
import json
import math

import gymnasium as gym
import numpy as np
import pytest
from click.testing import CliRunner
from gymnasium.utils.env_checker import check_env
from scipy.stats import kendalltau
from sklearn.metrics import mean_absolute_error
from sklearn.model_selection import KFold

import rankgym  # noqa: F401  (registers the ids)
from rankgym.cli import main
from rankgym.core import ModuleInfo
from rankgym.errors import ConfigError
from rankgym.evaluators.surrogate import _model, features, held_out_error, load_table, shipped_table
from rankgym.registry import SURROGATES


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    """A table written by `rankgym surrogate` from a noisy fake search's store."""
    root = tmp_path_factory.mktemp("surrogate")
    run = root / "run"
    result = CliRunner().invoke(main, ["search", "RankSearch-fake-v0", "--agent", "random", "--budget", "150", "--out", str(run),
                                       "--no-report", "--env", "fake_noise=0.002"])
    assert result.exit_code == 0, result.output
    out = root / "table.json"
    result = CliRunner().invoke(main, ["surrogate", str(run / "store.sqlite"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "held out" in result.output and "Kendall" in result.output
    return out


def test_held_out_error_is_measured_on_maps_the_model_never_saw(table):
    data = load_table(table)
    error = held_out_error(data)
    y = np.array([e["metric"] for e in data["evaluations"]])
    assert error["maps"] == len(y) == 150 and error["mae"] == pytest.approx(mean_absolute_error(y, error["predicted"]))
    assert error["kendall_tau"] == pytest.approx(kendalltau(error["predicted"], y).statistic)
    assert error["kendall_tau"] > 0.5  # the fake landscape is smooth: the fit must rank it
    modules = [ModuleInfo(**{**m, "spectrum": tuple(m["spectrum"])}) for m in data["modules"]]
    x = features(modules, np.array([e["ranks"] for e in data["evaluations"]]))
    in_sample = mean_absolute_error(y, _model(0).fit(x, y).predict(x))
    assert error["mae"] > 1.5 * in_sample  # out of fold is honestly worse than fitting the answers

    # a map recorded twice must not sit on both sides of a fold: duplicated, grouped folds give the same error,
    # while ungrouped folds would leak (each map's twin in training) and look better
    doubled = dict(data, evaluations=data["evaluations"] * 2)
    assert held_out_error(doubled)["mae"] == pytest.approx(error["mae"], rel=0.25)
    xx, yy = np.vstack([x, x]), np.concatenate([y, y])
    leaky = np.empty_like(yy)
    for train, test in KFold(5, shuffle=True, random_state=0).split(xx):
        leaky[test] = _model(0).fit(xx[train], yy[train]).predict(xx[test])
    assert mean_absolute_error(yy, leaky) < held_out_error(doubled)["mae"]


def test_a_table_becomes_an_env_that_answers_in_milliseconds(table):
    env = gym.make("RankSearch-minilm-sst2-surrogate-v0", surrogate_table=str(table), max_rank=16)
    check_env(env.unwrapped)
    obs, info = env.reset(seed=0)
    recorded = load_table(table)["evaluations"][0]
    evaluation = env.unwrapped.evaluate_map(dict(zip(env.unwrapped.names, recorded["ranks"])))
    assert abs(evaluation["metric"] - recorded["metric"]) < 0.02 and evaluation["split"].startswith("surrogate")
    assert evaluation["seconds"] == pytest.approx(np.median([e["seconds"] for e in load_table(table)["evaluations"]]))


@pytest.mark.parametrize("task", sorted(SURROGATES))
def test_each_shipped_table_is_real_and_its_env_works_within_the_budget_it_was_recorded_at(task):
    from rankgym.budget import budget_params
    from rankgym.core import adapter_params

    data = json.loads(shipped_table(task).read_text())
    assert (data["identity"]["backbone"], data["identity"]["task"]) == ("minilm", task)
    assert data["identity"]["evaluator"].startswith("elastic") and len(data["evaluations"]) >= 500 and len(data["modules"]) == 36
    env = gym.make(f"RankSearch-minilm-{task}-surrogate-v0")
    search = env.unwrapped
    _, info = env.reset(seed=0)
    assert math.isfinite(info["metric"])
    modules = search.modules
    if SURROGATES[task].get("param_budget"):  # the recorded maps lie within the budget the id defaults to
        budget = budget_params(SURROGATES[task]["param_budget"], adapter_params(modules, [16] * len(modules)))
        assert search.budget == budget and all(adapter_params(modules, e["ranks"]) <= budget for e in data["evaluations"])
    # the env answers with what the table recorded: its predictions rank 200 recorded maps as their real scores do,
    # closer than the recorded scores' own mean would
    recorded = data["evaluations"][:200]
    predicted = [search.evaluate_map(dict(zip(search.names, e["ranks"])))["metric"] for e in recorded]
    real = np.array([e["metric"] for e in recorded])
    assert kendalltau(predicted, real).statistic > 0.3
    assert np.mean(np.abs(predicted - real)) < np.mean(np.abs(real - real.mean()))


def test_an_unshipped_task_is_refused_with_the_tables_there_are():
    with pytest.raises(ConfigError, match=r"rankgym ships no surrogate table for 'rte' \(it has: .*sst2.*\); pass surrogate_table=PATH"):
        gym.make("RankSearch-minilm-sst2-surrogate-v0", task="rte")


def test_a_budgeted_surrogate_search_starts_from_the_heuristics_that_need_no_model_or_data(tmp_path, monkeypatch):
    monkeypatch.setenv("RANKGYM_DATA_DIR", str(tmp_path / "no-data"))  # EVA would need the model and SST-2
    run = tmp_path / "run"
    result = CliRunner().invoke(main, ["search", "RankSearch-minilm-sst2-surrogate-v0", "--agent", "tpe", "--budget", "6",
                                       "--param-budget", "0.1", "--out", str(run), "--no-report", "--no-promote"])
    assert result.exit_code == 0, result.output
    with (run / "steps.csv").open() as f:
        labels = [row["label"] for row in csv.DictReader(f)]
    assert labels[0].startswith("uniform-") and labels[1].startswith("prilora-") and not any(label.startswith("eva") for label in labels)
