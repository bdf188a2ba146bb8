"""Scoring that stops early: a stopped score is an estimate below the reference, kept apart from scores, and never the best."""

import sqlite3

import numpy as np
import pytest

from rankgym.core import Evaluation
from rankgym.errors import ConfigError
from rankgym.evaluators.elastic import ElasticEvaluator, stratified_parts
from rankgym.metrics import compute, paired_upper_bound
from rankgym.registry import EnvConfig
from rankgym.steplog import StepLog
from rankgym.store import SCHEMA_VERSION, EvaluationStore
from rankgym.training import Recipe, predict

RECIPE = Recipe(train_examples=64, batch_size=16, val_examples=48)


def elastic(sst2_dir, **kwargs):
    return ElasticEvaluator("tiny", "sst2", RECIPE, seed=3, device="cpu", max_rank=8, data_dir=str(sst2_dir), **kwargs)


@pytest.mark.parametrize("metric", ["accuracy", "matthews"])
def test_the_paired_bound_is_scipys_percentile_bootstrap_of_the_difference(metric):
    from scipy.stats import bootstrap

    rng = np.random.default_rng(1)
    label = rng.integers(0, 2, 300)
    better = np.where(rng.random(300) < 0.8, label, 1 - label)
    worse = np.where(rng.random(300) < 0.7, label, 1 - label)
    ours = paired_upper_bound(metric, worse, better, label, 0.95, resamples=2000)
    theirs = bootstrap((worse, better, label), lambda a, b, y: compute(metric, a, y) - compute(metric, b, y), paired=True,
                       vectorized=False, n_resamples=2000, method="percentile", alternative="less", confidence_level=0.95,
                       random_state=0).confidence_interval.high
    assert ours == pytest.approx(theirs, abs=0.012)
    assert ours < 0 < paired_upper_bound(metric, better, worse, label, 0.95)  # the better map is not bounded below the worse


def test_the_parts_read_the_full_passs_sorted_batches_one_of_every_run_of_neighbours_to_a_part():
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 60, 200).tolist()
    parts = stratified_parts(lengths, 4, seed=5, batch_size=8)
    assert sorted(np.concatenate(parts).tolist()) == list(range(200))
    by_length = sorted(range(200), key=lambda i: (lengths[i], i))
    batches = [by_length[k : k + 8] for k in range(0, 200, 8)]  # the full pass's batches: 25, in runs of 4
    where = {i: k for k, p in enumerate(parts) for i in p}
    for b, batch in enumerate(batches):
        assert len({where[i] for i in batch}) == 1  # a batch is never split between parts
    for start in range(0, 24, 4):
        assert sorted(where[batches[b][0]] for b in range(start, start + 4)) == [0, 1, 2, 3]
    assert [p.tolist() for p in parts] == [p.tolist() for p in stratified_parts(lengths, 4, seed=5, batch_size=8)]
    firsts = [stratified_parts(lengths, 4, seed=s, batch_size=8)[0] for s in range(200)]  # random: a batch lands in part 0 a quarter of the time
    share = np.bincount(np.concatenate(firsts), minlength=200) / 200
    assert abs(share[by_length[:192]].mean() - 0.25) < 0.01 and share.min() > 0.1 and share.max() < 0.4
    small = stratified_parts(lengths[:48], 4, seed=5, batch_size=32)  # too few batches: smaller ones, four a part
    assert [len(p) for p in small] == [12, 12, 12, 12]


def test_a_map_that_cannot_reach_the_reference_stops_with_its_paired_estimate_and_an_unstopped_one_scores_as_in_full(sst2_dir, tmp_path):
    evaluator = elastic(sst2_dir, early_stop=0.9, chunks=4, cache_dir=tmp_path)
    full = elastic(sst2_dir, cache_dir=tmp_path)
    rank_map = evaluator.template().replace({m.name: 4 for m in evaluator.modules})
    first = evaluator.evaluate(rank_map)  # no reference yet: read to the end
    assert first.fraction == 1.0 and not first.stopped
    assert first.metric == full.evaluate(rank_map).metric
    assert full.source == "loaded"  # how maps are scored does not change the adapter: one file serves both
    # A reference that predicts every label, as a perfect map's full scoring would have kept it.
    labels = evaluator.val_set.labels[:48].numpy()
    evaluator._best = [(1.0, labels.copy())]
    stopped = evaluator.evaluate(rank_map)
    assert stopped.stopped and stopped.fraction == 0.25 and stopped.metric < 1.0
    part = stratified_parts([len(ids) for ids in evaluator.val_set.ids[:48]], 4, seed=3, batch_size=32)[0]
    evaluator.slice_to(rank_map)
    evaluator.model.eval()
    preds = predict(evaluator.model, evaluator.val_set, part.tolist(), evaluator.tokenizer.pad_token_id, 32)[0][0]
    level = 1 - 0.1 / 3
    bound = paired_upper_bound("accuracy", preds, labels[part], labels[part], level, seed=0)
    observed = (preds == labels[part]).mean() - 1.0  # the paired difference on the part read, by hand
    assert bound < 0 and stopped.metric == pytest.approx(1.0 + min(observed, bound), abs=1e-12)
    assert "early_stop" in evaluator.identity() and "early_stop" not in full.identity()  # stopped scores never share a context


def test_a_stopped_score_is_answered_only_to_who_stops_early_and_a_full_score_replaces_it(tmp_path):
    store = EvaluationStore(tmp_path / "store.sqlite")
    context = store.register({"evaluator": "elastic-v3"}, [])
    from rankgym.rankmap import RankMap

    rank_map = RankMap({"a": 1})
    store.put(context, rank_map, Evaluation(metric=0.61, params=10, seconds=1.0, fraction=0.5))
    assert store.get(context, rank_map) is None  # a full-score caller computes it
    found = store.get(context, rank_map, stopped=True)
    assert (found.metric, found.fraction, found.stopped, found.cache_hit) == (0.61, 0.5, True, True)
    assert store.evaluations() == []  # what surrogate tables, replays and reports read
    store.put(context, rank_map, Evaluation(metric=0.70, params=10, seconds=2.0))
    found = store.get(context, rank_map, stopped=True)
    assert (found.metric, found.stopped) == (0.70, False)
    assert [row["metric"] for row in store.evaluations()] == [0.70]


def test_a_version_1_store_opens_and_gains_the_stopped_table(tmp_path):
    path = tmp_path / "store.sqlite"
    EvaluationStore(path).close()
    db = sqlite3.connect(path)
    db.execute("DROP TABLE stopped")
    db.execute("PRAGMA user_version = 1")
    db.close()
    store = EvaluationStore(path)
    assert store.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
    assert store.db.execute("SELECT COUNT(*) FROM stopped").fetchone()[0] == 0


def test_a_run_logged_before_early_stopping_resumes_and_logs_the_fraction(tmp_path):
    path = tmp_path / "run.sqlite"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE steps (step INTEGER PRIMARY KEY AUTOINCREMENT, worker INTEGER NOT NULL, idx INTEGER NOT NULL, "
               "kind TEXT NOT NULL, label TEXT, metric REAL, params INTEGER, cost REAL, reward REAL, score REAL, seconds REAL, "
               "cache_hit INTEGER, error TEXT, rank_map TEXT, created REAL, UNIQUE (worker, idx))")
    db.close()
    log = StepLog(path)
    info = {"metric": 0.5, "params": 3, "cost": 0.1, "score": 0.5, "seconds": 1.0, "error": None, "rank_map": {"a": 1}, "fraction": 0.25}
    log.record("map", info, 0.5)
    log.record("map", {**info, "fraction": 1.0}, 0.5)
    assert [row["fraction"] for row in log.rows()] == [0.25, None]


def test_early_stop_is_the_elastic_evaluators_and_its_confidence_is_checked(sst2_dir):
    with pytest.raises(ConfigError, match="does not stop early"):
        EnvConfig.from_kwargs({"evaluator": "finetune", "early_stop": 0.95})
    with pytest.raises(ConfigError, match=r"in \(0.5, 1\)"):
        elastic(sst2_dir, early_stop=1.5)


def finetuner(sst2_dir, **kwargs):
    from rankgym.evaluators.finetune import FinetuneEvaluator

    return FinetuneEvaluator("tiny", "sst2", Recipe(train_examples=64, batch_size=16, val_examples=48), seed=2, device="cpu",
                             max_rank=8, data_dir=str(sst2_dir), **kwargs)


def test_a_trial_the_pruner_lets_run_trains_and_scores_exactly_as_without_one(sst2_dir):
    pytest.importorskip("optuna")
    plain, pruned = finetuner(sst2_dir), finetuner(sst2_dir, pruner="sha", rungs=4, report_examples=24)
    rank_map = plain.template().replace({m.name: 4 for m in plain.modules})
    a, b = plain.evaluate(rank_map), pruned.evaluate(rank_map)  # a first trial is never pruned: nothing to compare with
    assert (b.metric, b.train_loss, b.fraction) == (a.metric, a.train_loss, 1.0)
    trial = pruned.pruning.study.trials[0]
    assert sorted(trial.intermediate_values) == [1, 2, 3]  # after each quarter of the 4 steps but the last
    assert pruned.identity()["pruning"] == {"pruner": "sha", "rungs": 4, "report_examples": 24} and "pruning" not in plain.identity()


def test_a_pruned_trial_is_a_partial_evaluation_with_its_last_report_stored_apart_and_never_the_best(sst2_dir, tmp_path, monkeypatch):
    optuna = pytest.importorskip("optuna")
    import gymnasium as gym

    import rankgym  # noqa: F401  (registers the ids)

    monkeypatch.setattr(optuna.trial.Trial, "should_prune", lambda self: True)
    env = gym.make("RankSearch-tiny-sst2-v0", evaluator="finetune", pruner="median", pruner_rungs=2, train_examples=64, batch_size=16,
                   val_examples=48, device="cpu", data_dir=str(sst2_dir), store=str(tmp_path / "store.sqlite")).unwrapped
    info = env.evaluate_map({name: 2 for name in env.names})
    trial = env.evaluator.pruning.study.trials[0]
    assert trial.state == optuna.trial.TrialState.PRUNED
    assert info["fraction"] == 0.5 and info["metric"] == trial.intermediate_values[2]  # pruned after 2 of 4 steps
    assert env.best is None  # a partial score is never the search's answer
    service = env.service
    rank_map = env.evaluator.template().replace({name: 2 for name in env.names})
    assert service.store.get(service.context, rank_map) is None
    assert service.store.get(service.context, rank_map, stopped=True).fraction == 0.5
    assert env.evaluate_map({name: 2 for name in env.names})["fraction"] == 0.5 and len(env.evaluator.pruning.study.trials) == 1  # from the store


def test_the_pruner_is_the_finetune_evaluators_and_a_known_one(sst2_dir):
    pytest.importorskip("optuna")
    with pytest.raises(ConfigError, match="add evaluator='finetune'"):
        EnvConfig.from_kwargs({"evaluator": "elastic", "pruner": "sha"})
    with pytest.raises(ConfigError, match="pruner must be one of sha, hyperband, median"):
        finetuner(sst2_dir, pruner="asha")
