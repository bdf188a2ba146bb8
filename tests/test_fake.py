"""The fake evaluator: its exact optimum, and the calibrated profile against the real figures it was fitted to."""

import itertools
import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

import rankgym  # noqa: F401
from rankgym.core import adapter_params
from rankgym.evaluators.fake import FakeEvaluator
from rankgym.rankmap import RankMap


@pytest.mark.parametrize("profile", ["separable", "calibrated"])
@pytest.mark.parametrize("lam,fraction", [(0.0, None), (0.3, None), (0.0, 0.4), (0.1, 0.5)])
def test_optimum_equals_brute_force(profile, lam, fraction):
    fake = FakeEvaluator(layers=1, hidden=32, seed=3, profile=profile, noise=0, collapse=0)
    choices = [0, 2, 4, 8]
    reference = adapter_params(fake.modules, [8] * 6)
    budget = None if fraction is None else int(fraction * reference)
    maps = list(itertools.product(choices, repeat=6))
    scores = [fake.metric_of(r) - lam * adapter_params(fake.modules, r) / reference for r in maps
              if budget is None or adapter_params(fake.modules, r) <= budget]
    ranks, score = fake.optimum(lam, choices, reference, budget)
    assert score == pytest.approx(max(scores), abs=1e-12)
    assert budget is None or adapter_params(fake.modules, ranks) <= budget


def _figures(fake: FakeEvaluator, rng: np.random.Generator) -> dict[str, float]:
    modules, metric = fake.modules, fake.metric_of
    out = {"zero": metric([0] * len(modules)), "shallow-16": metric([16 if m.layer < 3 else 0 for m in modules])}
    out.update({f"uniform-{r}": metric([r] * len(modules)) for r in (2, 4, 8, 16)})
    out.update({f"{k}-16": metric([16 if m.kind == k else 0 for m in modules]) for k in ("query", "key", "value", "attn_out", "mlp_in", "mlp_out")})
    scores = np.array([fake.evaluate(RankMap(dict(zip([m.name for m in modules], map(int, r))))).metric
                       for r in rng.choice(np.arange(0, 17, 2), size=(500, len(modules)))])
    trained = scores[scores > 0.6]
    out.update({"random-mean": trained.mean(), "random-std": trained.std(), "collapsed": 1 - len(trained) / len(scores)})
    return out


def real_figures() -> dict[str, float]:
    """The real MiniLM x SST-2 figures, from the files that record them: the probe and fidelity maps'
    scores (rankgym/data/fake-calibration.json) and the shipped surrogate table's 1,000 random maps."""
    data = Path(rankgym.__file__).parent / "data"
    calibration = json.loads((data / "fake-calibration.json").read_text())
    figures = {**calibration["probes"]["scores"], **calibration["fidelity"]["scores"]}
    random = np.array([e["metric"] for e in json.loads((data / "surrogate-minilm-sst2-elastic.json").read_text())["evaluations"]])
    trained = random[random > 0.6]
    return {**figures, "random-mean": float(trained.mean()), "random-std": float(trained.std())}


def test_calibrated_profile_reproduces_the_real_figures():
    """Averaged over ten seeds, the calibrated fake gives the real MiniLM x SST-2 figures it was fitted to."""
    real = real_figures()
    rng = np.random.default_rng(0)
    runs = [_figures(gym.make("RankSearch-fake-calibrated-v0", seed=s).unwrapped.evaluator, rng) for s in range(10)]
    fake = {k: float(np.mean([r[k] for r in runs])) for k in runs[0]}
    for name in ("zero", "uniform-2", "uniform-4", "uniform-8", "uniform-16", "random-mean"):
        assert fake[name] == pytest.approx(real[name], abs=0.015), name
    for name in ("query-16", "key-16", "value-16", "attn_out-16", "mlp_in-16", "mlp_out-16", "shallow-16"):
        assert fake[name] == pytest.approx(real[name], abs=0.04), name
    assert fake["random-std"] == pytest.approx(real["random-std"], rel=0.3)
    assert 0.01 <= fake["collapsed"] <= 0.03  # 2 of 102 real fine-tunes
    # sub-additive, as measured: the six kinds alone add up to far more than all of them together (real: 2.5x)
    parts = sum(fake[f"{k}-16"] - fake["zero"] for k in ("query", "key", "value", "attn_out", "mlp_in", "mlp_out"))
    assert parts / (fake["uniform-16"] - fake["zero"]) > 2.0
    assert fake["uniform-2"] < fake["uniform-4"] < fake["uniform-8"] < fake["uniform-16"]


def test_calibrated_noise_is_seeded_per_map():
    env = gym.make("RankSearch-fake-calibrated-v0", seed=4).unwrapped
    again = gym.make("RankSearch-fake-calibrated-v0", seed=4).unwrapped
    ranks = dict(zip(env.names, [6] * len(env.names)))
    first = env.evaluate_map(ranks)["metric"]
    assert again.evaluate_map(ranks)["metric"] == first
    assert first != env.evaluator.metric_of([6] * len(env.names))  # noise is on
    assert gym.make("RankSearch-fake-calibrated-v0", seed=5).unwrapped.evaluate_map(ranks)["metric"] != first


def test_unknown_profile_is_refused():
    with pytest.raises(rankgym.errors.ConfigError, match="fake_profile must be"):
        gym.make("RankSearch-fake-v0", fake_profile="real")
