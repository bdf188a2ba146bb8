"""--backbone auto: any transformers model, its family read from its config (tiny random models, offline)."""

import json

import pytest
import torch
from click.testing import CliRunner
from peft import PeftModel
from transformers import (
    AutoModelForSequenceClassification,
    BertConfig,
    DebertaV2Config,
    GPT2Config,
    LlamaConfig,
    OPTConfig,
    Qwen2Config,
    RobertaConfig,
)

from rankgym.backbones import BackboneError, byte_level_tokenizer, get_backbone, load_backbone
from rankgym.cli import main
from rankgym.evaluators.finetune import FinetuneEvaluator
from rankgym.recipe import Recipe

WIDTH = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128, vocab_size=300)
CONFIGS = {
    "bert": lambda: BertConfig(**WIDTH),
    "roberta": lambda: RobertaConfig(**WIDTH, pad_token_id=1, max_position_embeddings=130),
    "deberta-v2": lambda: DebertaV2Config(**WIDTH, pooler_hidden_size=64),
    "gpt2": lambda: GPT2Config(n_layer=2, n_head=2, n_embd=64, vocab_size=300, n_positions=128),
    "llama": lambda: LlamaConfig(**WIDTH, num_key_value_heads=2, max_position_embeddings=128),
    "qwen2": lambda: Qwen2Config(**WIDTH, num_key_value_heads=2, max_position_embeddings=128),
}
EXPECTED_KINDS = {
    "bert": {"query", "key", "value", "attn_out", "mlp_in", "mlp_out"},
    "roberta": {"query", "key", "value", "attn_out", "mlp_in", "mlp_out"},
    "deberta-v2": {"query", "key", "value", "attn_out", "mlp_in", "mlp_out"},
    "gpt2": {"qkv", "attn_out", "mlp_in", "mlp_out"},
    "llama": {"query", "key", "value", "attn_out", "mlp_gate", "mlp_in", "mlp_out"},
    "qwen2": {"query", "key", "value", "attn_out", "mlp_gate", "mlp_in", "mlp_out"},
}
RECIPE = Recipe(train_examples=16, batch_size=8, val_examples=8)


def saved_model(folder, config):
    """A random two-layer classifier and a tokenizer beside it, as save_pretrained writes them."""
    torch.manual_seed(0)
    config.num_labels = 2
    AutoModelForSequenceClassification.from_config(config).save_pretrained(folder)
    byte_level_tokenizer().save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    folder = tmp_path_factory.mktemp("task")
    for name, n in (("train", 48), ("validation", 16)):
        rows = ["sentence\tlabel"] + [f"{'a good' if i % 2 else 'a bad'} film, take {i}\t{i % 2}" for i in range(n)]
        (folder / f"{name}.tsv").write_text("\n".join(rows) + "\n")
    return str(folder)


@pytest.mark.parametrize("family", list(CONFIGS))
def test_each_family_adapts_its_table_trains_and_exports_to_peft(family, task, tmp_path):
    path = saved_model(tmp_path / family, CONFIGS[family]())
    evaluator = FinetuneEvaluator("auto", task, RECIPE, seed=1, device="cpu", max_rank=4, score_on="validation", model_name_or_path=path)
    assert evaluator.spec.family == ("bert" if family in ("bert", "roberta", "deberta-v2") else "gpt2" if family == "gpt2" else "decoder")
    assert {m.kind for m in evaluator.modules} == EXPECTED_KINDS[family]
    assert len(evaluator.modules) == 2 * len(EXPECTED_KINDS[family]) and {m.layer for m in evaluator.modules} == {0, 1}
    rank_map = evaluator.template().replace({m.name: 2 for m in evaluator.modules})
    evaluation = evaluator.evaluate(rank_map)
    assert 0 <= evaluation.metric <= 1 and evaluator.last_result.steps == 2

    evaluator.save_peft_adapter(tmp_path / "peft", rank_map)
    base, tokenizer = load_backbone("auto", path, 2, 1)
    theirs = PeftModel.from_pretrained(base, str(tmp_path / "peft")).eval()
    ids = torch.randint(3, 250, (3, 9), generator=torch.Generator().manual_seed(0))
    evaluator.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(theirs(input_ids=ids).logits, evaluator.model(input_ids=ids).logits, rtol=1e-4, atol=1e-4)


def test_target_modules_name_modules_of_an_architecture_no_table_knows(task, tmp_path):
    path = saved_model(tmp_path / "opt", OPTConfig(hidden_size=64, num_hidden_layers=2, ffn_dim=128, num_attention_heads=2,
                                                    vocab_size=300, word_embed_proj_dim=64, max_position_embeddings=128))
    with pytest.raises(BackboneError, match="no module table for model_type 'opt'.*--target-modules"):
        get_backbone("auto", path)
    evaluator = FinetuneEvaluator("auto", task, RECIPE, device="cpu", max_rank=4, model_name_or_path=path,
                                  target_modules=["q_proj", r".*\.fc1"])
    names = [m.name for m in evaluator.modules]
    assert names == [f"model.decoder.layers.{i}.{m}" for i in (0, 1) for m in ("self_attn.q_proj", "fc1")]
    assert {m.kind for m in evaluator.modules} == {"other"}
    assert evaluator.evaluate(evaluator.template().replace({n: 2 for n in names})).error is None
    with pytest.raises(BackboneError, match="'nope' match no linear module"):
        FinetuneEvaluator("auto", task, RECIPE, device="cpu", max_rank=4, model_name_or_path=path, target_modules=["q_proj", "nope"])


def test_target_modules_narrow_a_known_family(task, tmp_path):
    path = saved_model(tmp_path / "llama", CONFIGS["llama"]())
    spec = get_backbone("auto", path, ["q_proj", "v_proj"])
    model, _ = load_backbone("auto", path)
    assert [spec.module_kind(n) for n in spec.target_modules(model)] == ["query", "value"] * 2


def test_bf16_base_keeps_fp32_adapters_and_head(task, tmp_path, monkeypatch):
    path = saved_model(tmp_path / "llama", CONFIGS["llama"]())
    evaluator = FinetuneEvaluator("auto", task, RECIPE, device="cpu", max_rank=4, model_name_or_path=path, dtype="bf16")
    evaluation = evaluator.evaluate(evaluator.template().replace({m.name: 2 for m in evaluator.modules}))
    assert evaluation.error is None and evaluator.identity()["dtype"] == "bf16"
    layer = evaluator.model.get_submodule(evaluator.modules[0].name)
    assert layer.base.weight.dtype == torch.bfloat16 and layer.lora_A.dtype == torch.float32
    assert evaluator.model.score.weight.dtype == torch.float32 and layer.lora_B.abs().sum() > 0  # it trained
    # the PEFT export builds its base in bf16 too (an fp32 copy would double the peak memory), and PEFT loads it
    import rankgym.evaluators.finetune as finetune

    dtypes = []
    real = finetune.load_backbone
    monkeypatch.setattr(finetune, "load_backbone", lambda *a, **k: dtypes.append(k.get("dtype")) or real(*a, **k))
    evaluator.save_peft_adapter(tmp_path / "peft", evaluator.template().replace({m.name: 2 for m in evaluator.modules}))
    assert dtypes == ["bf16"] and (tmp_path / "peft" / "adapter_model.safetensors").is_file()


def test_the_cli_and_the_auto_env_ids(task, tmp_path):
    path = saved_model(tmp_path / "qwen2", CONFIGS["qwen2"]())
    result = CliRunner().invoke(main, ["finetune", "--backbone", "auto", "--model-name-or-path", path, "--task", task, "--uniform", "4",
                                       "--train-examples", "16", "--out", str(tmp_path / "ft"), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output.strip().splitlines()[-1])["trainable_params"] == 2 * 4 * (4 * (64 + 64) + 3 * (64 + 128))  # q, k, v, o; gate, up, down
    run = tmp_path / "run"
    result = CliRunner().invoke(main, ["search", "RankSearch-auto-sst2-v0", "--agent", "random", "--budget", "2", "--no-promote",
                                       "--no-report", "--out", str(run), "--env", f"model_name_or_path='{path}'", "--env", "device='cpu'",
                                       "--env", "train_examples=16", "--env", "val_examples=16"])
    assert result.exit_code == 0, result.output
    listed = CliRunner().invoke(main, ["envs"])
    assert "RankSearch-auto-sst2-v0" in listed.output and "model_name_or_path" in listed.output
    missing = CliRunner().invoke(main, ["finetune", "--backbone", "auto", "--uniform", "2"])
    assert missing.exit_code == 2 and "--model-name-or-path" in missing.output


def test_bert_pooler_trains_with_the_head_and_starts_pretrained_at_every_evaluation(task, tmp_path):
    path = saved_model(tmp_path / "bert", CONFIGS["bert"]())
    pretrained = AutoModelForSequenceClassification.from_pretrained(path).bert.pooler.dense.weight.detach().clone()
    evaluator = FinetuneEvaluator("auto", task, RECIPE, seed=1, device="cpu", max_rank=4, model_name_or_path=path)
    rank_map = evaluator.template().replace({m.name: 2 for m in evaluator.modules})
    first = evaluator.evaluate(rank_map)
    pooler = evaluator.model.bert.pooler.dense.weight
    assert pooler.requires_grad and not torch.equal(pooler.detach(), pretrained)  # it trained
    assert evaluator.evaluate(rank_map).metric == first.metric  # and started from the checkpoint's weights again
    assert all("pooler" not in m.name for m in evaluator.modules)  # a head, never a LoRA target


@pytest.mark.parametrize("family,dtype", [("bert", "fp32"), ("roberta", "bf16")])
def test_batched_evaluator_on_encoder_heads_equals_the_single_one(family, dtype, task, tmp_path):
    from rankgym.evaluators.batched import BatchedEvaluator

    path = saved_model(tmp_path / family, CONFIGS[family]())
    common = dict(backbone="auto", task=task, recipe=RECIPE, seed=3, device="cpu", max_rank=4, model_name_or_path=path, dtype=dtype)
    single, batched = FinetuneEvaluator(**common), BatchedEvaluator(k=2, **common)
    maps = [single.template().replace({m.name: r for m in single.modules}) for r in (2, 4)]
    alone = []
    for m in maps:
        evaluation = single.evaluate(m)
        alone.append((evaluation, single.last_result.losses))
    together = batched.evaluate_many(maps)
    tolerance = 1e-5 if dtype == "fp32" else 2e-2  # bf16 rounds a batch of two differently from a batch of one
    for (evaluation, losses), result, joint in zip(alone, batched.last_results, together):
        assert joint.error is None
        torch.testing.assert_close(torch.tensor(result.losses), torch.tensor(losses), rtol=0, atol=tolerance)
