"""Searches on a local Ray cluster: the same step log as without Ray, workers that die are retried."""

import csv
import json
import threading
import time

import pytest
from click.testing import CliRunner

ray = pytest.importorskip("ray")

from rankgym.cli import main  # noqa: E402

FAST = ["--env", "train_examples=32", "--env", "val_examples=32", "--env", "device='cpu'"]


@pytest.fixture(scope="module", autouse=True)
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def logged(run):
    with (run / "steps.csv").open() as f:
        return [(r["kind"], r["rank_map"], r["metric"]) for r in csv.DictReader(f)]


def search(tmp_path, name, *args):
    run = tmp_path / name
    result = CliRunner().invoke(main, ["search", "RankSearch-tiny-sst2-v0", "--out", str(run), "--no-report", "--no-promote", *FAST, *args])
    assert result.exit_code == 0, result.output
    return run, result


def test_random_search_on_two_workers_logs_what_one_process_logs(tmp_path, sst2_dir):
    data = ["--env", f"data_dir='{sst2_dir}'"]
    alone, _ = search(tmp_path, "alone", "--agent", "random", "--budget", "5", *data)
    pooled, result = search(tmp_path, "ray", "--agent", "random", "--budget", "5", "--ray", "--workers", "2", *data)
    assert logged(pooled) == logged(alone)  # same maps, same metrics, same order
    pool = json.loads((pooled / "summary.json").read_text())["pool"]
    assert sum(pool["evaluations_per_worker"]) == 5 and min(pool["evaluations_per_worker"]) >= 2 and "Ray workers" in result.output


def test_ppo_on_workers_logs_what_ppo_on_processes_logs(tmp_path, sst2_dir):
    data = ["--env", f"data_dir='{sst2_dir}'"]
    spawned, _ = search(tmp_path, "spawned", "--agent", "ppo-steps", "--budget", "4", "--n-envs", "2", "--devices", "cpu", "--devices", "cpu", *data)
    pooled, _ = search(tmp_path, "ray", "--agent", "ppo-steps", "--budget", "4", "--ray", "--workers", "2", *data)
    # two environments step side by side in both: the order their rows reach the log may differ, so compare as sets
    assert sorted(logged(pooled)) == sorted(logged(spawned)) and len(logged(pooled)) >= 6


def test_tpe_keeps_a_trial_in_flight_per_worker(tmp_path, sst2_dir):
    run, _ = search(tmp_path, "tpe", "--agent", "tpe", "--budget", "4", "--ray", "--workers", "2", "--env", f"data_dir='{sst2_dir}'")
    assert len(logged(run)) == 4 and json.loads((run / "summary.json").read_text())["pool"]["evaluations_per_worker"] == [2, 2]


def test_a_worker_killed_mid_search_loses_and_repeats_nothing(tmp_path, sst2_dir):
    slow = ["--env", "train_examples=256", "--env", "val_examples=64", "--env", f"data_dir='{sst2_dir}'", "--agent", "random",
            "--budget", "6"]
    quiet, _ = search(tmp_path, "quiet", *slow)
    before = set(ray.util.list_named_actors())
    killed = []

    def kill_one() -> None:
        for _ in range(600):
            workers = sorted(set(ray.util.list_named_actors()) - before)
            if workers:
                time.sleep(2.0)  # mid-evaluation: the first batch is training
                ray.kill(ray.get_actor(workers[0]), no_restart=False)  # as a lost process: Ray restarts it and retries its call
                killed.append(workers[0])
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_one)
    killer.start()
    pooled, _ = search(tmp_path, "killed", *slow, "--ray", "--workers", "2")
    killer.join()
    assert killed and logged(pooled) == logged(quiet)  # every evaluation once, in order, with the same metric
    with (pooled / "steps.csv").open() as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == list(range(1, 7))


def test_more_gpu_workers_than_gpus_is_refused_instead_of_waiting_for_ever(monkeypatch):
    from rankgym.errors import ConfigError
    from rankgym.ray_pool import RayEvaluator
    from rankgym.registry import EnvConfig

    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0, "GPU": 1.0})  # a one-GPU machine
    config = EnvConfig(evaluator="fake", device="auto").to_dict()
    with pytest.raises(ConfigError, match="2 Ray workers asked for, but the cluster has 1 GPU"):
        RayEvaluator(config, workers=2)


def dying_fake(marker: str):
    """A factory of fake evaluators whose process dies on two maps: rank 3 everywhere kills the first
    worker that evaluates it (then the marker file exists), rank 5 everywhere kills every worker."""
    import os
    from pathlib import Path

    from rankgym.evaluators.fake import FakeEvaluator

    class Dying(FakeEvaluator):
        def evaluate(self, rank_map):
            ranks = set(rank_map.ranks.values())
            if ranks == {5} or (ranks == {3} and not Path(marker).exists()):
                Path(marker).touch()
                os._exit(1)  # as a worker killed by the kernel: no exception, no reply
            return super().evaluate(rank_map)

    return lambda: Dying(layers=1)


def test_a_dead_workers_map_goes_to_another_and_only_a_map_that_kills_every_worker_fails(tmp_path):
    from rankgym.evaluators.fake import FakeEvaluator
    from rankgym.ray_pool import RayEvaluator

    plain = FakeEvaluator(layers=1)
    template = plain.template()
    maps = [template.replace(dict.fromkeys(template.ranks, r)) for r in (2, 3, 4, 6)]
    pool = RayEvaluator(dying_fake(str(tmp_path / "died-once")), workers=2, max_restarts=0, evaluator="fake")
    results = pool.evaluate_many(maps)
    assert [r.metric for r in results] == [plain.evaluate(m).metric for m in maps] and all(r.ok for r in results)
    assert len(pool.dead) == 1  # the worker that took rank 3 first; the other evaluated it
    pool.close()

    pool = RayEvaluator(dying_fake(str(tmp_path / "unused")), workers=2, max_restarts=0, evaluator="fake")
    killer, fine = template.replace(dict.fromkeys(template.ranks, 5)), maps[0]
    results = pool.evaluate_many([killer, fine])
    assert not results[0].ok and "died evaluating this map on every worker tried" in results[0].error
    assert results[1].ok and results[1].metric == plain.evaluate(fine).metric
    with pytest.raises(RuntimeError, match="every Ray worker died.*--resume"):
        pool.evaluate_many([fine])
    pool.close()
