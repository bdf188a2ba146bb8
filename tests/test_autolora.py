"""AutoLoRA's gates: the hard threshold gives the map the gates say, within the budget."""

import json

import numpy as np
from click.testing import CliRunner

from rankgym.cli import main
from rankgym.evaluators.base import ModuleInfo, adapter_params
from rankgym.evaluators.finetune import FinetuneEvaluator
from rankgym.lora.layer import LoRALayer
from rankgym.recipe import Recipe
from rankgym.strategies.autolora import autolora_ranks, hard_threshold


def test_hard_threshold_by_hand():
    modules = [ModuleInfo("a", "query", 0, 10, 10), ModuleInfo("b", "value", 0, 20, 20)]  # a component costs 20 / 40
    gates = {"a": np.array([0.9, 0.6, 0.04]), "b": np.array([0.8, 0.7, 0.5])}
    assert hard_threshold(gates, modules, 10**6) == {"a": 2, "b": 3}  # 0.04 is switched off
    # highest first: a 0.9 (20), b 0.8 (60), b 0.7 (100), a 0.6 (120); b 0.5 would make 160 > 130
    assert hard_threshold(gates, modules, 130) == {"a": 2, "b": 2}


def test_autolora_map_follows_its_gates_within_the_budget(sst2_dir):
    recipe = Recipe(train_examples=640, lr=1e-3)
    tiny = FinetuneEvaluator("tiny", "sst2", recipe, device="cpu", max_rank=8)
    budget = adapter_params(tiny.modules, [3] * len(tiny.modules))
    ranks, gates = autolora_ranks(tiny.model, tiny.modules, tiny.train_set, tiny.tokenizer.pad_token_id, budget, 8, recipe)
    assert ranks == hard_threshold(gates, tiny.modules, budget)
    assert adapter_params(tiny.modules, [ranks[m.name] for m in tiny.modules]) <= budget
    assert np.std(np.concatenate(list(gates.values()))) > 0.05  # the gates have moved apart from their common start
    assert all(isinstance(m, LoRALayer) for n, m in tiny.model.named_modules() if n in ranks)  # plain layers are back


def test_autolora_search_scores_its_map_once(tmp_path, sst2_dir):
    run = tmp_path / "autolora"
    result = CliRunner().invoke(main, ["search", "RankSearch-tiny-sst2-v0", "--agent", "autolora", "--set", "train_examples=320",
                                       "--out", str(run), "--no-promote", "--no-report", "--param-budget", "0.3",
                                       "--env", "train_examples=32", "--env", "val_examples=32", "--env", "device='cpu'"])
    assert result.exit_code == 0, result.output
    summary = json.loads((run / "summary.json").read_text())
    assert summary["evaluations"] == 1 and summary["best_cost"] <= 0.3
