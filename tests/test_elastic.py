"""The elastic evaluator: one adapter trained once, maps scored by slicing it."""

import json
import os
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
import torch
from peft import get_peft_model

import rankgym  # noqa: F401  (registers the ids)
from rankgym.backbones import load_backbone
from rankgym.evaluators.elastic import ElasticEvaluator
from rankgym.lora.inject import lora_layers
from rankgym.training import Recipe, evaluate

RECIPE = Recipe(train_examples=64, batch_size=16, val_examples=48)


def elastic(sst2_dir, cache_dir=None, **kwargs):
    return ElasticEvaluator("tiny", "sst2", RECIPE, seed=3, device="cpu", max_rank=8, data_dir=str(sst2_dir), cache_dir=cache_dir,
                            **kwargs)


def varied(evaluator):
    return evaluator.template().replace({m.name: [0, 2, 8, 4, 6, 2, 0, 8][i] for i, m in enumerate(evaluator.modules)})


def test_a_sliced_elastic_adapter_is_the_peft_model_holding_those_factors(sst2_dir):
    evaluator = elastic(sst2_dir)
    rank_map = varied(evaluator)
    evaluation = evaluator.evaluate(rank_map)
    assert evaluator.source == "trained" and evaluator.training_seconds > 0
    layers = lora_layers(evaluator.model)
    assert all(layer.lora_B.abs().sum() > 0 for layer in layers.values())  # every module's prefix trained

    fresh, _ = load_backbone("tiny", None, 2, 3)
    theirs = get_peft_model(fresh, rank_map.to_peft_config(fan_in_fan_out=True))
    with torch.no_grad():
        for name, layer in layers.items():
            r = rank_map.ranks[name]
            target = theirs.get_submodule("base_model.model." + name)
            torch.testing.assert_close(getattr(target, "base_layer", target).weight, layer.base.weight)  # same frozen base
            if r:
                target.lora_A["default"].weight.copy_(layer.lora_A[:r])
                target.lora_B["default"].weight.copy_(layer.lora_B[:, :r])
        theirs.base_model.model.score.weight.copy_(evaluator.model.score.weight)
    ids = torch.randint(1, 200, (4, 11), generator=torch.Generator().manual_seed(0))
    evaluator.slice_to(rank_map)
    torch.testing.assert_close(evaluator.model(input_ids=ids).logits, theirs(input_ids=ids).logits, rtol=1e-5, atol=1e-5)
    # and its score is that PEFT model's accuracy on the score split
    accuracy, _ = evaluate(theirs, evaluator.val_set, evaluator.tokenizer.pad_token_id, limit=RECIPE.val_examples)
    assert evaluation.metric == accuracy

    other = evaluator.template().replace({m.name: 2 for m in evaluator.modules})
    assert evaluator.evaluate(other).metric != evaluation.metric or evaluator.evaluate(other).val_loss != evaluation.val_loss


def test_a_score_does_not_depend_on_the_maps_scored_before_it(sst2_dir):
    evaluator = elastic(sst2_dir)
    rank_map, other = varied(evaluator), evaluator.template().replace({m.name: 8 for m in evaluator.modules})
    first = evaluator.evaluate(rank_map)
    frozen = {name: layer.base.weight.detach().clone() for name, layer in lora_layers(evaluator.model).items()}
    for _ in range(3):
        evaluator.evaluate(other)
    again = evaluator.evaluate(rank_map)
    assert (again.metric, again.val_loss) == (first.metric, first.val_loss)  # bit for bit: weights merged and restored
    assert all(torch.equal(layer.base.weight, frozen[name]) and not layer.merged for name, layer in lora_layers(evaluator.model).items())


def test_scoring_through_the_adapters_keeps_no_copy_of_the_weights_and_scores_as_merged(sst2_dir):
    merged, through = elastic(sst2_dir), elastic(sst2_dir, merge=False)  # merge=False: what a GPU does by default
    assert merged.merge and not through.merge  # device cpu: merge by default
    rank_map = varied(merged)
    a, b = merged.evaluate(rank_map), through.evaluate(through.template().replace(rank_map.ranks))
    assert b.metric == pytest.approx(a.metric, abs=1 / 48) and b.val_loss == pytest.approx(a.val_loss, rel=1e-4)
    assert through._frozen is None and merged._frozen is not None  # one model's weights, no restore copy


def test_example_results_are_each_examples_prediction_and_minus_the_log_probability_of_its_label(sst2_dir):
    evaluator = elastic(sst2_dir)
    rank_map = varied(evaluator)
    preds, losses = evaluator.example_results(rank_map)
    whole = evaluator.evaluate(rank_map)
    labels = evaluator.val_set.labels[: RECIPE.val_examples].numpy()
    assert len(preds) == len(losses) == RECIPE.val_examples
    assert whole.metric == (preds == labels).mean() and whole.val_loss == pytest.approx(losses.mean(), rel=1e-9)
    evaluator.slice_to(rank_map)  # unmerged: the same function of the input as the merged scoring, up to rounding
    for i in (0, 17, 47):  # one example a forward, no padding: log_softmax by hand
        ids = torch.as_tensor(evaluator.val_set.ids[i]).reshape(1, -1)
        with torch.no_grad():
            logits = evaluator.model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0].double()
        assert preds[i] == int(logits.argmax())
        assert losses[i] == pytest.approx(-torch.log_softmax(logits, -1)[labels[i]].item(), abs=1e-5)


SECOND_PROCESS = """
import json, sys
from rankgym.evaluators.elastic import ElasticEvaluator
from rankgym.training import Recipe
e = ElasticEvaluator("tiny", "sst2", Recipe(train_examples=64, batch_size=16, val_examples=48), seed=3, device="cpu", max_rank=8,
                     data_dir=sys.argv[1], cache_dir=sys.argv[2])
m = e.template().replace({m.name: [0, 2, 8, 4, 6, 2, 0, 8][i] for i, m in enumerate(e.modules)})
print(json.dumps({"metric": e.evaluate(m).metric, "source": e.source}))
"""


def test_a_saved_adapter_is_reused_by_a_second_process_without_training(sst2_dir, tmp_path):
    first = elastic(sst2_dir, tmp_path)
    metric = first.evaluate(varied(first)).metric
    assert first.source == "trained" and first.adapter_path.is_file()
    assert not list(tmp_path.glob("*.tmp-*"))
    out = subprocess.run([sys.executable, "-c", SECOND_PROCESS, str(sst2_dir), str(tmp_path)], check=True, capture_output=True,
                         text=True, timeout=300, env=dict(os.environ)).stdout
    second = json.loads(out.strip().splitlines()[-1])
    assert second == {"metric": metric, "source": "loaded"}
    other_seed = ElasticEvaluator("tiny", "sst2", RECIPE, seed=4, device="cpu", max_rank=8, data_dir=str(sst2_dir), cache_dir=tmp_path)
    assert other_seed.adapter_path != first.adapter_path  # another identity, another adapter


def test_a_half_written_adapter_is_never_loaded(sst2_dir, tmp_path):
    first = elastic(sst2_dir, tmp_path)
    path = first.adapter_path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\": {\"dtype\"")  # what a killed writer would leave
    assert first.evaluate(varied(first)).ok and first.source == "trained"
    reference = path.read_bytes()
    truncated = elastic(sst2_dir, tmp_path)
    path.write_bytes(reference[: len(reference) // 2])
    truncated.evaluate(varied(truncated))
    assert truncated.source == "trained"  # the half file was ignored, and replaced by a whole one
    assert elastic(sst2_dir, tmp_path).evaluate(varied(first)).ok


def test_the_elastic_env_answers_from_its_store_and_every_agent_can_use_it(sst2_dir, tmp_path):
    store = tmp_path / "run" / "store.sqlite"
    env = gym.make("RankSearch-tiny-sst2-v0", evaluator="elastic", elastic_examples=64, val_examples=48, device="cpu",
                   data_dir=str(sst2_dir), store=str(store)).unwrapped
    _, info = env.reset(seed=0)
    assert info["split"] == "score" and not env.last_evaluation.cache_hit
    assert (tmp_path / "run" / "elastic").is_dir() and env.evaluator.identity()["evaluator"] == f"elastic-v{ElasticEvaluator.version}"
    _, _, _, _, info = env.step(env.action_space.sample())
    assert info["seconds"] < 30 and info["error"] is None
    env.close()
    again = gym.make("RankSearch-tiny-sst2-v0", evaluator="elastic", elastic_examples=64, val_examples=48, device="cpu",
                     data_dir=str(sst2_dir), store=str(store)).unwrapped
    again.reset(seed=0)
    assert again.last_evaluation.cache_hit

    from click.testing import CliRunner

    from rankgym.cli import main

    run = tmp_path / "random"
    result = CliRunner().invoke(main, ["search", "RankSearch-tiny-sst2-v0", "--agent", "random", "--budget", "6", "--out", str(run),
                                       "--no-promote", "--no-report", "--env", "evaluator='elastic'", "--env", "elastic_examples=64",
                                       "--env", "val_examples=48", "--env", "device='cpu'", "--env", f"data_dir='{sst2_dir}'"])
    assert result.exit_code == 0, result.output
    assert json.loads((run / "summary.json").read_text())["evaluations"] == 6


def drawn_maps(evaluator, monkeypatch):
    """The maps the elastic adapter trains on, one per optimizer step, as {module: rank}."""
    import rankgym.evaluators.elastic as module

    maps, train = [], module.finetune

    def recording(*args, before_step, **kwargs):
        def step(i):
            before_step(i)
            maps.append({name: layer.rank for name, layer in lora_layers(evaluator.model).items()})
        return train(*args, before_step=step, **kwargs)

    monkeypatch.setattr(module, "finetune", recording)
    evaluator.ensure_trained()
    return maps


@pytest.mark.parametrize("draws", ["grid", "budget"])
def test_budget_draws_train_the_adapter_on_maps_within_the_budget_and_the_sandwich_at_full_rank(sst2_dir, monkeypatch, draws):
    from rankgym.core import adapter_params

    evaluator = elastic(sst2_dir, rank_step=1, draw_budget=0.1 if draws == "budget" else None)
    maps = drawn_maps(evaluator, monkeypatch)
    infos = {m.name: m for m in evaluator.modules}
    cost = [adapter_params([infos[n] for n in m], list(m.values())) for m in maps]
    limit = int(0.1 * adapter_params(evaluator.modules, [8] * len(evaluator.modules)))  # the env's rule for a fraction
    assert len(maps) == RECIPE.train_examples // RECIPE.batch_size
    assert all(set(m.values()) == {8} for m in maps[::2])  # the sandwich steps
    drawn = cost[1::2]
    if draws == "budget":
        assert all(c <= limit for c in drawn) and any(c > 0 for c in drawn)
        assert evaluator.identity()["draw_budget"] == 0.1
    else:  # independent draws from 0..8 on 8 modules exceed a tenth of uniform 8 (every draw here does)
        assert all(c > limit for c in drawn)
        assert "draw_budget" not in evaluator.identity()


def whole_groups(modules, off):
    """Whether the modules in ``off`` are every module of some kinds, or every module of some blocks."""
    for key in (lambda m: m.kind, lambda m: m.layer):
        groups = {key(m) for m in modules if m.name in off}
        if off == {m.name for m in modules if key(m) in groups}:
            return True
    return False


def test_a_group_draw_turns_off_whole_kinds_or_whole_blocks_each_half_the_time():
    from rankgym.core import ModuleInfo
    from rankgym.evaluators.elastic import group_off

    modules = [ModuleInfo(f"{b}.{k}", k, b, 8, 8, ()) for b in range(3) for k in ("query", "value", "mlp_in")]
    rng = np.random.default_rng(0)
    draws = [group_off(modules, rng) for _ in range(4000)]
    assert all(whole_groups(modules, {m.name for m, o in zip(modules, d) if o}) for d in draws)
    share = np.mean(draws, axis=0)  # each module is off in half the draws: binomial std 0.008
    assert np.all(np.abs(share - 0.5) < 0.04), share
    kinds_only = [d for d in draws if 0 < d.sum() < len(modules) and d[0] == d[3] == d[6] and d[1] == d[4] == d[7]]
    blocks_only = [d for d in draws if 0 < d.sum() < len(modules) and d[0] == d[1] == d[2] and d[3] == d[4] == d[5]]
    assert len(kinds_only) > 1000 and len(blocks_only) > 1000


@pytest.mark.parametrize("share", [0.0, 1.0])
def test_group_draws_train_the_adapter_with_whole_kinds_or_blocks_off(sst2_dir, monkeypatch, share):
    from rankgym.errors import ConfigError

    # ranks drawn from 1..8, so every 0 in a drawn map comes from a group draw
    evaluator = elastic(sst2_dir, min_rank=1, rank_step=1, group_draws=share)
    maps = drawn_maps(evaluator, monkeypatch)[1::2]  # the drawn steps (the others are the sandwich's)
    off = [{name for name, rank in m.items() if rank == 0} for m in maps]
    if share:
        assert any(off) and all(whole_groups(evaluator.modules, o) for o in off)
        assert evaluator.identity()["group_draws"] == 1.0
    else:
        assert not any(off) and "group_draws" not in evaluator.identity()  # the identity from before the option
        rng = np.random.default_rng(evaluator.seed)  # and the draws from before it: the same random stream
        assert [list(m.values()) for m in maps] == [list(rng.choice(evaluator.grid, size=len(m))) for m in maps]
    with pytest.raises(ConfigError, match="group_draws is the share"):
        elastic(sst2_dir, group_draws=1.5)


def test_the_env_option_elastic_groups_reaches_the_adapters_identity(sst2_dir):
    from rankgym.evaluators.factory import build_evaluator
    from rankgym.registry import EnvConfig

    config = EnvConfig.for_env("RankSearch-tiny-sst2-v0", {"evaluator": "elastic", "elastic_groups": 0.25, "data_dir": str(sst2_dir)})
    evaluator = build_evaluator(config)
    assert evaluator.group_draws == 0.25 and evaluator.identity()["group_draws"] == 0.25


def test_budget_draws_are_the_default_under_a_budget_and_need_one(sst2_dir):
    from rankgym.errors import ConfigError
    from rankgym.evaluators.factory import build_evaluator
    from rankgym.registry import EnvConfig

    under = EnvConfig.for_env("RankSearch-tiny-sst2-v0", {"evaluator": "elastic", "param_budget": 0.1, "data_dir": str(sst2_dir)})
    assert under.draw_budget == 0.1 and build_evaluator(under).identity()["draw_budget"] == 0.1
    assert EnvConfig.for_env("RankSearch-tiny-sst2-v0", {"evaluator": "elastic", "param_budget": 0.1, "elastic_draws": "grid"}).draw_budget is None
    assert EnvConfig.for_env("RankSearch-tiny-sst2-v0", {"evaluator": "elastic"}).draw_budget is None

    with pytest.raises(ConfigError, match="pass a param_budget too"):
        EnvConfig.from_kwargs({"evaluator": "elastic", "elastic_draws": "budget"})
    with pytest.raises(ConfigError, match="elastic_draws must be 'grid'"):
        EnvConfig.from_kwargs({"evaluator": "elastic", "elastic_draws": "within", "param_budget": 0.1})


def test_maps_above_the_elastic_max_rank_are_refused(sst2_dir):
    evaluator = elastic(sst2_dir)
    with pytest.raises(ValueError, match="holds ranks up to 8"):
        evaluator.evaluate(evaluator.template().replace({m.name: 16 for m in evaluator.modules}))


def test_released_frees_every_tensor_and_puts_back_the_same_model(sst2_dir):
    ev = elastic(sst2_dir)
    first = ev.evaluate(varied(ev))
    tensors = {**dict(ev.model.named_parameters()), **dict(ev.model.named_buffers())}
    before = {name: t.detach().clone() for name, t in tensors.items()}
    with ev.released():
        assert all(t.numel() == 0 for t in tensors.values())
    after = {**dict(ev.model.named_parameters()), **dict(ev.model.named_buffers())}
    assert all(after[name] is t and torch.equal(t, before[name]) and t.dtype == before[name].dtype for name, t in tensors.items())
    again = ev.evaluate(varied(ev))
    assert (again.metric, again.val_loss) == (first.metric, first.val_loss)

