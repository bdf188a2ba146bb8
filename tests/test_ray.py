"""Searches on a local Ray cluster: the same step log as without Ray, workers that die are retried."""

import csv
import json
import threading
import time
from dataclasses import asdict

import pytest
from click.testing import CliRunner

ray = pytest.importorskip("ray")

from rankgym.cli import main  # noqa: E402
from rankgym.evaluators.finetune import FinetuneEvaluator  # noqa: E402
from rankgym.ray_pool import RayEvaluator  # noqa: E402
from rankgym.registry import EnvConfig, recipe_of  # noqa: E402

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


def test_ppo_and_tpe_on_workers_log_what_a_fine_tune_gives(tmp_path, sst2_dir):
    data = ["--env", f"data_dir='{sst2_dir}'"]
    for agent in ("ppo", "tpe"):
        run, _ = search(tmp_path, agent, "--agent", agent, "--budget", "4", "--ray", "--workers", "2", *data)
        rows = logged(run)
        assert len([r for r in rows if r[0] != "reset"]) >= 4
    # every metric a worker logged is what the finetune evaluator gives that map in this process
    config = EnvConfig.from_kwargs({"backbone": "tiny", "task": "sst2", "evaluator": "finetune", "train_examples": 32, "val_examples": 32,
                                    "device": "cpu", "max_rank": 8, "initial_rank": 4, "data_dir": str(sst2_dir)})
    local = FinetuneEvaluator("tiny", "sst2", recipe_of(config), 0, "cpu", max_rank=8, data_dir=str(sst2_dir))
    for kind, ranks, metric in rows[:3]:
        assert local.evaluate(local.template().replace(json.loads(ranks))).metric == float(metric)


def test_a_worker_killed_mid_evaluation_is_retried(sst2_dir):
    config = EnvConfig.from_kwargs({"backbone": "tiny", "task": "sst2", "evaluator": "finetune", "train_examples": 256,
                                    "val_examples": 64, "device": "cpu", "max_rank": 8, "data_dir": str(sst2_dir)})
    pool = RayEvaluator(asdict(config), workers=2)
    template = pool.template()
    maps = [template.replace({m.name: r for m in pool.modules}) for r in (2, 4, 6, 8)]
    results = {}
    worker = threading.Thread(target=lambda: results.update(out=pool.evaluate_many(maps)))
    worker.start()
    time.sleep(1.5)  # the first two maps are training
    ray.kill(pool.actors[0], no_restart=False)  # as a lost process: Ray restarts the actor and retries its call
    worker.join(timeout=300)
    local = FinetuneEvaluator("tiny", "sst2", recipe_of(config), 0, "cpu", max_rank=8, data_dir=str(sst2_dir))
    assert [e.metric for e in results["out"]] == [local.evaluate(m).metric for m in maps]
    assert sum(pool.per_worker) == 4
    pool.close()
