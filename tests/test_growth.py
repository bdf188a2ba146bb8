"""Rank growth during one fine-tune: the article's schedules, no jump at growth, the budget."""

import json

import pytest
import torch
from click.testing import CliRunner

from rankgym.cli import main
from rankgym.core import adapter_params
from rankgym.evaluators.finetune import FinetuneEvaluator
from rankgym.lora.layer import LoRALayer
from rankgym.recipe import Recipe
from rankgym.strategies.growth import grow, scheduled_rank

RECIPE = Recipe(train_examples=640, lr=1e-3)  # 20 steps


@pytest.fixture
def tiny(sst2_dir):
    return FinetuneEvaluator("tiny", "sst2", RECIPE, device="cpu", max_rank=8)


def test_the_article_formulas_by_hand():
    assert [scheduled_rank("linear", t, 4, 64, 1000) for t in (0, 5000, 10000, 20000)] == [4, 34, 64, 64]
    assert [scheduled_rank("step", t, 4, 64, 1000) for t in (0, 999, 1000, 2500, 9000)] == [4, 4, 8, 16, 64]


@pytest.mark.parametrize("schedule", ["linear", "step"])
def test_every_step_holds_the_ranks_the_formula_gives(tiny, schedule):
    seen = {}
    ranks = grow(tiny.model, tiny.modules, tiny.train_set, tiny.val_set, tiny.tokenizer.pad_token_id, schedule, 1, 8, 10**9, RECIPE,
                 interval=2, on_step=lambda step, r: seen.__setitem__(step, r))
    assert sorted(seen) == list(range(20))
    for step, held in seen.items():
        assert set(held.values()) == {scheduled_rank(schedule, step, 1, 8, 2)}, step
    layers = {n: m for n, m in tiny.model.named_modules() if isinstance(m, LoRALayer)}
    assert ranks == {n: layer.rank for n, layer in layers.items()}  # the map is what the layers hold at the end


def test_growth_leaves_every_layers_function_unchanged(tiny, monkeypatch):
    checked = []
    original = LoRALayer.set_rank

    def checked_set_rank(self, rank, *args, **kwargs):
        x = torch.randn(3, self.in_features, generator=torch.Generator().manual_seed(len(checked)))
        before = self(x).detach()
        original(self, rank, *args, **kwargs)
        checked.append((self.rank, torch.allclose(self(x), before, atol=1e-6)))

    monkeypatch.setattr(LoRALayer, "set_rank", checked_set_rank)
    grow(tiny.model, tiny.modules, tiny.train_set, tiny.val_set, tiny.tokenizer.pad_token_id, "step", 1, 8, 10**9, RECIPE, interval=4)
    assert len(checked) >= 3 * len(tiny.modules) and all(same for _, same in checked)


def test_adaptive_grows_only_some_modules_and_stays_within_the_budget(tiny):
    budget = adapter_params(tiny.modules, [3] * len(tiny.modules))
    ranks = grow(tiny.model, tiny.modules, tiny.train_set, tiny.val_set, tiny.tokenizer.pad_token_id, "adaptive", 1, 8, budget, RECIPE,
                 interval=4, top=2, increment=4)
    assert adapter_params(tiny.modules, [ranks[m.name] for m in tiny.modules]) <= budget
    assert len(set(ranks.values())) > 1 and max(ranks.values()) > 1


def test_growth_search_scores_its_map_once(tmp_path, sst2_dir):
    run = tmp_path / "growth"
    result = CliRunner().invoke(main, ["search", "RankSearch-tiny-sst2-v0", "--agent", "growth", "--set", "schedule=step",
                                       "--set", "train_examples=320", "--out", str(run), "--no-promote", "--no-report",
                                       "--env", "train_examples=32", "--env", "val_examples=32", "--env", "device='cpu'"])
    assert result.exit_code == 0, result.output
    assert json.loads((run / "summary.json").read_text())["evaluations"] == 1
    bad = CliRunner().invoke(main, ["search", "RankSearch-tiny-sst2-v0", "--agent", "growth", "--set", "schedule=fast",
                                    "--out", str(tmp_path / "bad")])
    assert bad.exit_code == 2 and "unknown growth schedule 'fast'" in bad.output


def test_growth_refuses_a_budget_below_rank_one_everywhere(tmp_path, sst2_dir):
    result = CliRunner().invoke(main, ["search", "RankSearch-tiny-sst2-v0", "--agent", "growth", "--param-budget", "100",
                                       "--out", str(tmp_path / "r"), "--env", "device='cpu'"])
    assert result.exit_code == 2 and "raise --param-budget" in result.output


def test_growth_refuses_a_budget_below_uniform_rank_1(tmp_path, sst2_dir):
    result = CliRunner().invoke(main, ["search", "RankSearch-tiny-sst2-v0", "--agent", "growth", "--out", str(tmp_path / "r"),
                                       "--no-promote", "--no-report", "--param-budget", "0.05", "--env", "device='cpu'"])
    assert result.exit_code == 2 and "growth starts every module at rank 1" in result.output and "raise --param-budget" in result.output
