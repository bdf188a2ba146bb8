"""AdaLoRA and EVA run by PEFT on a tiny model: the maps they return are what PEFT's own model holds."""

import csv
import json

import pytest
from click.testing import CliRunner
from peft.tuners.adalora import AdaLoraLayer
from peft.tuners.lora import LoraLayer

from rankgym.budget import budget_rank
from rankgym.cli import main
from rankgym.evaluators.finetune import FinetuneEvaluator
from rankgym.recipe import Recipe
from rankgym.strategies.peft_allocators import adalora_ranks, eva_ranks


@pytest.fixture
def tiny(sst2_dir):
    return FinetuneEvaluator("tiny", "sst2", Recipe(train_examples=320, lr=1e-3), device="cpu", max_rank=8)


def test_adalora_map_is_the_rank_pattern_peft_holds(tiny):
    target = 4
    ranks = adalora_ranks(tiny.model, tiny.modules, tiny.train_set, tiny.val_set, tiny.tokenizer.pad_token_id, target,
                          Recipe(train_examples=320, lr=1e-3))
    held = {name: int((layer.lora_E["default"] != 0).sum()) for name, layer in tiny.model.named_modules()
            if isinstance(layer, AdaLoraLayer)}
    names = [m.name for m in tiny.modules]
    assert sorted(held) == sorted(names)
    assert ranks == held  # the masked singular values are zero: what survives is the map
    assert sum(ranks.values()) == target * len(names)  # AdaLoRA's final budget: target_r per module on average
    assert len(set(ranks.values())) > 1


def test_eva_map_is_the_ranks_peft_layers_hold(tiny):
    ranks = eva_ranks(tiny.model, tiny.modules, tiny.train_set, tiny.tokenizer.pad_token_id, rank=4, rho=2.0, batches=4)
    held = {name: layer.r["default"] for name, layer in tiny.model.named_modules() if isinstance(layer, LoraLayer)}
    assert {n: r for n, r in ranks.items() if r} == held  # modules EVA drops (rank 0) are no LoRA layer any more
    assert sum(ranks.values()) == 4 * len(tiny.modules)  # EVA redistributes r x modules ranks
    assert max(ranks.values()) <= 8  # rho x r


def test_budget_rank_is_the_uniform_rank_a_budget_buys(tiny):
    per_rank = sum(m.in_features + m.out_features for m in tiny.modules)
    assert budget_rank(tiny.modules, 6 * per_rank) == 6
    assert budget_rank(tiny.modules, 10) == 1


@pytest.mark.parametrize("agent", ["adalora", "eva"])
def test_search_with_a_peft_allocator_scores_its_map_once(tmp_path, sst2_dir, agent):
    run = tmp_path / agent
    result = CliRunner().invoke(main, ["search", "RankSearch-tiny-sst2-v0", "--agent", agent, "--out", str(run), "--no-promote",
                                       "--no-report", "--param-budget", "0.5", "--env", "train_examples=32", "--env", "val_examples=32",
                                       "--env", "device='cpu'", "--budget", "5"])
    assert result.exit_code == 0, result.output
    summary = json.loads((run / "summary.json").read_text())
    assert summary["evaluations"] == 1 and summary["best_cost"] <= 0.5


@pytest.mark.parametrize("agent", ["eva", "tpe"])
def test_a_search_never_holds_two_models_its_proposal_or_eva_probe_loads_after_releasing_its_own(tmp_path, sst2_dir, monkeypatch, agent):
    """The one-shot proposal (eva) and the EVA start of a budgeted search (tpe) each load a model of
    their own: the search's evaluator holds no tensor storage then, and evaluates normally after."""
    alive, held_when_loading = [], []
    init = FinetuneEvaluator.__init__

    def tracked(self, *args, **kwargs):
        held_when_loading.append(sum(p.numel() for e in alive if e.model is not None for p in e.model.parameters()))
        init(self, *args, **kwargs)
        alive.append(self)

    monkeypatch.setattr(FinetuneEvaluator, "__init__", tracked)
    run = tmp_path / agent
    result = CliRunner().invoke(main, ["search", "RankSearch-tiny-sst2-v0", "--agent", agent, "--out", str(run), "--no-promote",
                                       "--no-report", "--param-budget", "0.5", "--env", "train_examples=32", "--env", "val_examples=32",
                                       "--env", "device='cpu'", "--budget", "3"])
    assert result.exit_code == 0, result.output
    assert len(held_when_loading) == 2 and held_when_loading[0] == 0  # the search's own model: nothing loaded before it
    assert held_when_loading[1] == 0  # the second model was loaded with the first released
    with (run / "steps.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert rows and all(r["error"] == "" and 0 < float(r["metric"]) <= 1 for r in rows)


def test_a_peft_allocator_refuses_the_fake_env(tmp_path):
    result = CliRunner().invoke(main, ["search", "RankSearch-fake-v0", "--agent", "eva", "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "works on a real model" in result.output


def test_adalora_refuses_a_budget_below_uniform_rank_1(tmp_path, sst2_dir):
    # tiny: max_rank 8, so 0.05 of uniform-8 is 0.4 of uniform rank 1, below AdaLoRA's least (a whole target rank);
    # uniform rank 1 is 1/8 = 0.125 of it, so 0.13 is just above and is not refused
    result = CliRunner().invoke(main, ["search", "RankSearch-tiny-sst2-v0", "--agent", "adalora", "--out", str(tmp_path / "r"),
                                       "--no-promote", "--no-report", "--param-budget", "0.05", "--env", "train_examples=32",
                                       "--env", "val_examples=32", "--env", "device='cpu'"])
    assert result.exit_code == 2 and "AdaLoRA keeps at least uniform rank 1" in result.output and "raise --param-budget" in result.output
    above = CliRunner().invoke(main, ["search", "RankSearch-tiny-sst2-v0", "--agent", "adalora", "--out", str(tmp_path / "a"),
                                      "--no-promote", "--no-report", "--param-budget", "0.13", "--set", "train_examples=32",
                                      "--env", "train_examples=32", "--env", "val_examples=32", "--env", "device='cpu'"])
    assert above.exit_code == 0, above.output
