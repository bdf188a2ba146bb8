"""Rank maps: validation, counts, JSON, and the round trip through PEFT."""

import copy
import json

import pytest
import torch
from peft import LoraConfig, get_peft_model

from rankgym.backbones import BACKBONES
from rankgym.lora.inject import apply_rank_map, load_adapter, merge, save_adapter, unmerge
from rankgym.rankmap import RankMap, RankMapError


def varied_map(model, backbone: str, alpha_mode="fixed") -> RankMap:
    names = BACKBONES[backbone].target_modules(model)
    return RankMap({name: [0, 2, 4, 8, 1, 3][i % 6] for i, name in enumerate(names)}, alpha=8.0, alpha_mode=alpha_mode)


def peft_ranks(peft_model) -> dict[str, int]:
    prefix = "base_model.model."
    return {
        name[len(prefix):]: m.lora_A["default"].weight.shape[0]
        for name, m in peft_model.named_modules()
        if hasattr(m, "lora_A") and "default" in m.lora_A
    }


@pytest.mark.parametrize("fixture,backbone", [("small_bert", "minilm"), ("small_gpt2", "gpt2")])
def test_peft_wraps_each_module_at_the_exported_rank(fixture, backbone, request):
    model = request.getfixturevalue(fixture)
    rank_map = varied_map(model, backbone)
    config = rank_map.to_peft_config(fan_in_fan_out=backbone == "gpt2")
    peft_model = get_peft_model(copy.deepcopy(model), config)
    assert peft_ranks(peft_model) == {n: r for n, r in rank_map.ranks.items() if r > 0}
    lora_params = sum(p.numel() for n, p in peft_model.named_parameters() if "lora_" in n)
    assert rank_map.trainable_params(model) == lora_params


def test_trainable_params_by_hand(small_gpt2):
    # n_embd 32: c_attn 32->96, attn.c_proj 32->32, mlp.c_fc 32->128, mlp.c_proj 128->32
    rank_map = RankMap({"transformer.h.0.attn.c_attn": 4, "transformer.h.1.mlp.c_fc": 2, "transformer.h.1.mlp.c_proj": 0})
    assert rank_map.trainable_params(small_gpt2) == 4 * (32 + 96) + 2 * (32 + 128)


@pytest.mark.parametrize("fixture,backbone", [("small_bert", "minilm"), ("small_gpt2", "gpt2")])
def test_same_weights_give_same_outputs_as_peft(fixture, backbone, request):
    model = request.getfixturevalue(fixture)
    for alpha_mode, rslora in [("fixed", False), ("ratio", True)]:
        rank_map = varied_map(model, backbone, alpha_mode)
        rank_map.rslora = rslora
        ours = copy.deepcopy(model)
        layers = apply_rank_map(ours, rank_map)
        theirs = get_peft_model(copy.deepcopy(model), rank_map.to_peft_config(fan_in_fan_out=backbone == "gpt2"))
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for name, layer in layers.items():
                if layer.rank == 0:
                    continue
                layer.lora_B.normal_(0, 0.5, generator=g)
                target = theirs.get_submodule("base_model.model." + name)
                target.lora_A["default"].weight.copy_(layer.lora_A[: layer.rank])
                target.lora_B["default"].weight.copy_(layer.lora_B[:, : layer.rank])
        ids = torch.randint(1, 300, (3, 9), generator=g)
        expected = theirs(input_ids=ids).logits
        assert not torch.allclose(expected, model(input_ids=ids).logits, atol=1e-3)  # adapters matter
        torch.testing.assert_close(ours(input_ids=ids).logits, expected, rtol=1e-5, atol=1e-5)


def test_peft_config_round_trip(small_gpt2, tmp_path):
    rank_map = varied_map(small_gpt2, "gpt2", alpha_mode="ratio")
    config = rank_map.to_peft_config(fan_in_fan_out=True)
    config.save_pretrained(str(tmp_path))
    for source in (config, LoraConfig.from_pretrained(str(tmp_path)), tmp_path):
        back = RankMap.from_peft_config(source)
        assert back.ranks == {n: r for n, r in rank_map.ranks.items() if r > 0}
        assert (back.alpha, back.alpha_mode) == (8.0, "ratio")
    for path in (tmp_path, tmp_path / "adapter_config.json"):  # what `finetune --rank-map` reads too
        loaded = RankMap.load(path)
        assert loaded.ranks == back.ranks and (loaded.alpha, loaded.alpha_mode, loaded.rslora) == (8.0, "ratio", False)


def test_import_of_a_regex_config_needs_and_uses_the_model(small_bert):
    config = LoraConfig(r=4, target_modules=["query", "value"], rank_pattern={"layer\\.1\\.attention\\.self\\.value": 16})
    with pytest.raises(RankMapError, match="pass the model"):
        RankMap.from_peft_config(LoraConfig(r=4, target_modules=".*query"))
    ranks = RankMap.from_peft_config(config, small_bert).ranks
    assert ranks == {
        "bert.encoder.layer.0.attention.self.query": 4,
        "bert.encoder.layer.0.attention.self.value": 4,
        "bert.encoder.layer.1.attention.self.query": 4,
        "bert.encoder.layer.1.attention.self.value": 16,
    }


def test_validation_lists_every_offending_entry(small_bert):
    bad = RankMap({
        "bert.encoder.layer.0.attention.self.quer": 4,
        "bert.embeddings.LayerNorm": 2,
        "bert.encoder.layer.0.attention.self.key": 2.5,
        "bert.encoder.layer.0.attention.self.value": -1,
        "bert.encoder.layer.1.intermediate.dense": 33,
        "bert.encoder.layer.1.output.dense": 4,
    })
    with pytest.raises(RankMapError) as err:
        bad.validate(small_bert)
    message = str(err.value)
    assert "5 problems" in message and "\n" not in message
    assert "unknown module 'bert.encoder.layer.0.attention.self.quer' (did you mean 'bert.encoder.layer.0.attention.self.query'?)" in message
    assert "'bert.embeddings.LayerNorm' is a LayerNorm, which cannot be adapted" in message
    assert "rank 2.5, not an integer" in message
    assert "negative rank -1" in message
    assert "rank 33, above min(in, out) = 32" in message


@pytest.mark.parametrize(
    "content,expected",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"alpha": 8}', "non-empty 'ranks'"),
        ('{"ranks": {"a": -2, "b": "x"}}', "ranks must be integers >= 0, got 'a': -2, 'b': 'x'"),
        ('{"ranks": {"a": 2}, "format_version": 99}', "format_version 99 is not supported"),
        ('{"ranks": {"a": 2}, "alpha_mode": "weird"}', "alpha_mode must be"),
        ('{"ranks": {"a": 2, "b": 4, "a": 8}}', "key 'a' appears twice"),
        (b'{"ranks": {"caf\xe9": 2}}', "not UTF-8 text"),
    ],
)
def test_malformed_files_say_what_is_wrong(tmp_path, content, expected):
    path = tmp_path / "map.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(RankMapError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        RankMap.load(path)


def test_json_round_trip_and_format(tmp_path, small_gpt2):
    rank_map = varied_map(small_gpt2, "gpt2")
    rank_map.provenance = {"backbone": "gpt2", "task": "sst2", "metric": "accuracy", "value": 0.9}
    rank_map.save(tmp_path / "m.json")
    data = json.loads((tmp_path / "m.json").read_text())
    assert data["format_version"] == 1 and data["ranks"] == rank_map.ranks
    assert RankMap.load(tmp_path / "m.json") == rank_map


def test_apply_sets_trainable_flags_and_rerank_in_place(small_bert):
    rank_map = varied_map(small_bert, "minilm")
    layers = apply_rank_map(small_bert, rank_map, max_rank=8)
    trainable = {n for n, p in small_bert.named_parameters() if p.requires_grad}
    head = {"classifier.weight", "classifier.bias", "bert.pooler.dense.weight", "bert.pooler.dense.bias"}  # BERT's pooler trains too
    assert trainable == {f"{n}.lora_{x}" for n in layers for x in "AB"} | head
    layer = layers["bert.encoder.layer.0.attention.self.key"]
    apply_rank_map(small_bert, rank_map.replace({**rank_map.ranks, "bert.encoder.layer.0.attention.self.key": 6}))
    assert small_bert.get_submodule("bert.encoder.layer.0.attention.self.key") is layer and layer.rank == 6


def test_save_and_load_adapter_round_trip(small_gpt2, tmp_path):
    fresh = copy.deepcopy(small_gpt2)
    rank_map = varied_map(small_gpt2, "gpt2")
    layers = apply_rank_map(small_gpt2, rank_map)
    with torch.no_grad():
        for layer in layers.values():
            layer.lora_B.normal_()
        small_gpt2.score.weight.normal_()
    save_adapter(small_gpt2, tmp_path, rank_map)
    assert load_adapter(fresh, tmp_path) == rank_map
    ids = torch.randint(1, 300, (2, 7))
    torch.testing.assert_close(fresh(input_ids=ids).logits, small_gpt2(input_ids=ids).logits)


def test_merging_a_whole_model_keeps_outputs_and_unmerging_restores_weights(small_gpt2):
    layers = apply_rank_map(small_gpt2, varied_map(small_gpt2, "gpt2"))
    with torch.no_grad():
        for layer in layers.values():
            layer.lora_B.normal_()
    weights = {n: layer.base.weight.detach().clone() for n, layer in layers.items()}
    ids = torch.randint(1, 300, (2, 7))
    expected = small_gpt2(input_ids=ids).logits
    merge(small_gpt2)
    torch.testing.assert_close(small_gpt2(input_ids=ids).logits, expected, rtol=1e-4, atol=1e-5)
    unmerge(small_gpt2)
    for name, layer in layers.items():
        torch.testing.assert_close(layer.base.weight, weights[name], rtol=0, atol=1e-6)


@pytest.mark.parametrize("fixture,backbone", [("small_bert", "minilm"), ("small_gpt2", "gpt2")])
@pytest.mark.parametrize("alpha_mode,rslora", [("fixed", False), ("ratio", False), ("fixed", True)])
def test_a_trained_adapter_loads_in_peft_with_the_same_logits(fixture, backbone, alpha_mode, rslora, request, tmp_path):
    from peft import PeftModel

    from rankgym.lora.inject import save_peft_adapter

    model = request.getfixturevalue(fixture)
    rank_map = varied_map(model, backbone, alpha_mode)  # rank-0 modules included
    rank_map.rslora = rslora
    ours = copy.deepcopy(model)
    layers = apply_rank_map(ours, rank_map)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for layer in layers.values():
            layer.lora_B.normal_(0, 0.5, generator=g)
        head = ours.classifier if backbone == "minilm" else ours.score
        head.weight.normal_(0, 1.0, generator=g)
    save_peft_adapter(ours, copy.deepcopy(model), tmp_path, rank_map)
    assert {p.name for p in tmp_path.iterdir()} >= {"adapter_config.json", "adapter_model.safetensors"}
    loaded = PeftModel.from_pretrained(copy.deepcopy(model), str(tmp_path))
    assert loaded.peft_config["default"].task_type == "SEQ_CLS"
    ids = torch.randint(1, 300, (3, 9), generator=g)
    expected = ours(input_ids=ids).logits
    assert not torch.allclose(expected, model(input_ids=ids).logits, atol=1e-3)
    torch.testing.assert_close(loaded(input_ids=ids).logits, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loaded.merge_and_unload()(input_ids=ids).logits, expected, rtol=1e-4, atol=1e-4)


def test_the_peft_floor_ci_tests_is_the_one_pyproject_names():
    import re
    from pathlib import Path

    import peft

    root = Path(__file__).resolve().parents[1]
    floor = re.search(r'"peft>=([0-9.]+)"', (root / "pyproject.toml").read_text()).group(1)
    tested = re.search(r"PEFT_FLOOR := ([0-9.]+)", (root / "Makefile").read_text()).group(1)
    assert tested.startswith(floor) and tuple(map(int, peft.__version__.split(".")[:2])) >= tuple(map(int, floor.split(".")[:2]))
