"""AutoLoRA's gates: the hard threshold gives the map the gates say, within the budget."""

import json

import numpy as np
from click.testing import CliRunner

from rankgym.cli import main
from rankgym.core import ModuleInfo, adapter_params
from rankgym.evaluators.finetune import FinetuneEvaluator
from rankgym.lora.layer import LoRALayer
from rankgym.recipe import Recipe
from rankgym.strategies.autolora import autolora_ranks, hard_threshold


def test_hard_threshold_by_hand():
    modules = [ModuleInfo("a", "query", 0, 10, 10), ModuleInfo("b", "value", 0, 20, 20)]  # a component costs 20 / 40
    logits = {"a": np.array([2.0, 0.5, -9.0]), "b": np.array([1.5, 1.0, 0.0])}
    assert hard_threshold(logits, modules, 10**6) == {"a": 3, "b": 3}
    # highest first: a 2.0 (20), b 1.5 (60), b 1.0 (100), a 0.5 (120); b 0.0 would make 160 > 130, a -9.0 fits (140)
    assert hard_threshold(logits, modules, 130) == {"a": 2, "b": 2}
    assert hard_threshold(logits, modules, 140) == {"a": 3, "b": 2}


def test_hard_threshold_spends_a_tight_budget_when_every_gate_is_nearly_closed():
    modules = [ModuleInfo("a", "query", 0, 10, 10), ModuleInfo("b", "value", 0, 20, 20)]
    logits = {"a": np.array([-30.0, -31.0]), "b": np.array([-29.0, -40.0])}  # sigmoid < 1e-12 everywhere
    assert hard_threshold(logits, modules, 60) == {"a": 1, "b": 1}  # b -29 (40), a -30 (60); nothing else fits


def test_autolora_map_follows_its_gates_within_the_budget(sst2_dir):
    recipe = Recipe(train_examples=640, lr=1e-3)
    tiny = FinetuneEvaluator("tiny", "sst2", recipe, device="cpu", max_rank=8)
    budget = adapter_params(tiny.modules, [3] * len(tiny.modules))
    ranks, logits = autolora_ranks(tiny.model, tiny.modules, tiny.train_set, tiny.tokenizer.pad_token_id, budget, 8, recipe)
    assert ranks == hard_threshold(logits, tiny.modules, budget)
    spent = adapter_params(tiny.modules, [ranks[m.name] for m in tiny.modules])
    assert budget - max(m.in_features + m.out_features for m in tiny.modules) < spent <= budget  # spends the budget
    gates = 1 / (1 + np.exp(-np.concatenate(list(logits.values()))))
    assert np.std(gates) > 0.05  # the gates have moved apart from their common start
    assert all(isinstance(m, LoRALayer) for n, m in tiny.model.named_modules() if n in ranks)  # plain layers are back


def test_autolora_search_scores_its_map_once(tmp_path, sst2_dir):
    run = tmp_path / "autolora"
    result = CliRunner().invoke(main, ["search", "RankSearch-tiny-sst2-v0", "--agent", "autolora", "--set", "train_examples=320",
                                       "--out", str(run), "--no-promote", "--no-report", "--param-budget", "0.3",
                                       "--env", "train_examples=32", "--env", "val_examples=32", "--env", "device='cpu'"])
    assert result.exit_code == 0, result.output
    summary = json.loads((run / "summary.json").read_text())
    assert summary["evaluations"] == 1 and summary["best_cost"] <= 0.3
