"""`rankgym allocate`: one budget over several tasks, never exceeded, the best split of the measured curves."""

import itertools
import json

import numpy as np
import pytest
from click.testing import CliRunner
from peft import LoraConfig

from rankgym.allocate import article_maps, split_budget
from rankgym.cli import main
from rankgym.core import ModuleInfo, adapter_params


@pytest.mark.parametrize("seed", range(5))
def test_split_is_the_best_within_the_budget(seed):
    rng = np.random.default_rng(seed)
    levels = [0, 1, 2, 4, 8]
    curves = {t: dict(zip(levels, np.sort(rng.random(5)))) for t in ("a", "b", "c")}
    weights = {"a": 1.0, "b": 2.0, "c": 0.5}
    per_rank, budget = 1000, int(rng.integers(0, 20_000))
    split = split_budget(curves, per_rank, budget, weights)
    assert sum(split.values()) * per_rank <= budget
    feasible = [r for r in itertools.product(levels, repeat=3) if sum(r) * per_rank <= budget]
    best = max(sum(weights[t] * curves[t][x] for t, x in zip("abc", r)) for r in feasible)
    assert sum(weights[t] * curves[t][split[t]] for t in "abc") == pytest.approx(best)


def test_article_heuristic_by_hand():
    modules = [ModuleInfo("q", "query", 0, 10, 10), ModuleInfo("f", "mlp_in", 0, 10, 40)]
    maps = article_maps(["math_qa", "simple_classification", "sst2"], modules, 10**9)
    assert maps == {"math_qa": [16, 32], "simple_classification": [4, 8], "sst2": [8, 16]}  # 2.0 / 0.5 / 1.0 x (8, 16)
    tight = article_maps(["a", "b"], modules, 2000)
    assert sum(adapter_params(modules, r) for r in tight.values()) <= 2000
    assert article_maps(["a", "b"], modules, 100) is None  # below rank 1 everywhere


def test_allocate_command_never_exceeds_the_budget(tmp_path, sst2_dir):
    out = tmp_path / "alloc"
    result = CliRunner().invoke(main, ["allocate", "--tasks", "sst2,cola", "--param-budget", "9000", "--backbone", "tiny", "--out", str(out),
                                       "--weights", "2 1", "--env", "train_examples=32", "--env", "val_examples=32",
                                       "--env", "device='cpu'", "--env", "elastic_examples=128"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "split.json").read_text())
    assert sum(s["params"] for s in summary["split"].values()) <= 9000
    assert sum(s["params"] for s in summary["article"]["split"].values()) <= 9000
    for task, s in summary["split"].items():
        ranks = json.loads((out / task / "rank_map.json").read_text())["ranks"]
        assert set(ranks.values()) == {s["rank"]}
        if s["rank"]:
            assert LoraConfig.from_pretrained(str(out / task / "peft")).r == s["rank"]
    bad = CliRunner().invoke(main, ["allocate", "--tasks", "sst2 cola", "--param-budget", "9000", "--weights", "1", "--backbone", "tiny",
                                    "--out", str(tmp_path / "bad")])
    assert bad.exit_code == 2 and "one weight per task" in bad.output
