"""The GLUE tasks from their original files, sentence pairs, regression, and each task's metric."""

import gymnasium as gym
import numpy as np
import pytest
import torch
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

import rankgym  # noqa: F401  (registers the ids)
from rankgym import metrics
from rankgym.backbones import load_backbone
from rankgym.tasks import GLUE, TASKS, TaskError, encode, load_task

COUNTS = {"sst2": (67349, 872), "cola": (8551, 1043), "mrpc": (3667, 408), "rte": (2490, 277), "stsb": (5749, 1500)}


@pytest.mark.parametrize("task", TASKS)
def test_each_glue_file_parses_with_its_quirks(task, sst2_dir):
    if not (sst2_dir / task / "train.tsv").is_file():
        pytest.skip(f"{task} not in {sst2_dir}")
    data = load_task(task, sst2_dir)
    assert (len(data.train), len(data.validation)) == COUNTS[task]
    assert data.metric == GLUE[task].metric
    if task == "stsb":
        assert data.regression and data.train.labels[:2] == [5.0, 3.8] and all(0 <= y <= 5 for y in data.validation.labels)
    else:
        assert data.num_labels == 2 and set(data.train.labels) == {0, 1}
    if task in ("mrpc", "rte", "stsb"):
        assert data.train.pairs is not None and len(data.train.pairs) == len(data.train.texts)
    if task == "mrpc":  # the byte-order mark is not part of the first column's name, and labels are read
        assert data.train.texts[0].startswith("Amrozi accused his brother") and data.train.labels[:2] == [1, 0]
    if task == "rte":
        assert data.label_names == ["entailment", "not_entailment"] and data.train.labels[0] == 1  # not_entailment
    if task == "cola":
        assert data.train.texts[0] == "Our friends won't buy this analysis, let alone the next one we propose."


FIXED = np.random.default_rng(0)
PRED_CLASSES, LABEL_CLASSES = FIXED.integers(0, 2, 200), FIXED.integers(0, 2, 200)
LABEL_VALUES = FIXED.uniform(0, 5, 200)
PRED_VALUES = LABEL_VALUES + FIXED.normal(0, 1.5, 200)
PRED_VALUES[:20] = np.round(PRED_VALUES[:20])  # ties, for the rank correlation


def test_metrics_equal_scikit_learn_and_scipy():
    assert metrics.accuracy(PRED_CLASSES, LABEL_CLASSES) == pytest.approx(accuracy_score(LABEL_CLASSES, PRED_CLASSES))
    assert metrics.matthews(PRED_CLASSES, LABEL_CLASSES) == pytest.approx(matthews_corrcoef(LABEL_CLASSES, PRED_CLASSES))
    assert metrics.f1(PRED_CLASSES, LABEL_CLASSES) == pytest.approx(f1_score(LABEL_CLASSES, PRED_CLASSES))
    assert metrics.pearson(PRED_VALUES, LABEL_VALUES) == pytest.approx(pearsonr(PRED_VALUES, LABEL_VALUES).statistic)
    assert metrics.spearman(PRED_VALUES, LABEL_VALUES) == pytest.approx(spearmanr(PRED_VALUES, LABEL_VALUES).statistic)
    constant = np.zeros(200, dtype=int)
    assert metrics.matthews(constant, LABEL_CLASSES) == matthews_corrcoef(LABEL_CLASSES, constant) == 0.0
    assert metrics.f1(constant, LABEL_CLASSES) == 0.0
    with pytest.raises(ValueError, match="unknown metric 'bleu'"):
        metrics.compute("bleu", PRED_CLASSES, LABEL_CLASSES)


@pytest.mark.parametrize("backbone", ["minilm", "tiny"])
def test_sentence_pairs_are_encoded_as_pairs(backbone):
    _, tokenizer = load_backbone(backbone)
    from rankgym.tasks import Split

    encoded = encode(Split(["the cat sat"], [1], ["a dog ran"]), tokenizer, 128)
    ids = encoded.ids[0].tolist()
    a, b = (tokenizer(t, add_special_tokens=False)["input_ids"] for t in ("the cat sat", "a dog ran"))
    if backbone == "minilm":  # BERT's own pair encoding: [CLS] a [SEP] b [SEP], with segment ids
        assert ids == [tokenizer.cls_token_id, *a, tokenizer.sep_token_id, *b, tokenizer.sep_token_id]
        assert encoded.types[0].tolist() == [0] * (len(a) + 2) + [1] * (len(b) + 1)
        from rankgym.training import batch_inputs

        inputs = batch_inputs(encoded, [0], 0, torch.device("cpu"))
        assert inputs["token_type_ids"].tolist() == [encoded.types[0].tolist()]
    else:  # GPT-2 style tokenizers only concatenate: the texts are joined by end-of-text
        assert ids == [*a, tokenizer.eos_token_id, *b]
    long = encode(Split(["word " * 100], [0], ["other " * 10]), tokenizer, 32)
    assert len(long.ids[0]) == 32 and encoded.labels.dtype == torch.long


def test_a_users_folder_with_pairs_regression_and_no_header(tmp_path):
    (tmp_path / "train.tsv").write_text("a man runs\ta person runs\t4.5\nit rains\tthe sun shines\t0.2\n")
    (tmp_path / "dev.tsv").write_text("cats\tdogs\t1.0\n")
    data = load_task(str(tmp_path), text_column="0,1", label_column="2", header=False)
    assert data.regression and data.metric == "pearson" and data.train.pairs == ["a person runs", "the sun shines"]
    assert data.train.labels == [4.5, 0.2]
    (tmp_path / "train.tsv").write_text("a man runs\ta person runs\tfour\n")
    with pytest.raises(TaskError, match=r"train.tsv:1: target 'four' in column 2 is not a number"):
        load_task(str(tmp_path), text_column="0,1", label_column="2", header=False, regression=True)


@pytest.mark.parametrize("task", [t for t in TASKS if t != "sst2"])
def test_every_glue_id_makes_offline_and_scores_with_its_metric(task, sst2_dir):
    env = gym.make(f"RankSearch-tiny-{task}-v0", device="cpu", data_dir=str(sst2_dir), train_examples=32, val_examples=64).unwrapped
    _, info = env.reset(seed=0)
    assert info["error"] is None and np.isfinite(info["metric"]) and info["split"] == "score"
    assert env.evaluator.data.metric == GLUE[task].metric
    if task == "stsb":
        assert env.evaluator.model.config.num_labels == 1 and env.evaluator.train_set.labels.is_floating_point()
    values = env.evaluator.val_set
    assert len(values) == min(1000, len(env.evaluator.data.validation))


def test_regression_targets_are_standardized_without_changing_the_metric(sst2_dir):
    from rankgym.evaluators.finetune import FinetuneEvaluator
    from rankgym.training import Recipe

    evaluator = FinetuneEvaluator("tiny", "stsb", Recipe(train_examples=256, val_examples=64), 0, "cpu", max_rank=4,
                                  data_dir=str(sst2_dir), score_on="validation")
    raw = np.array(evaluator.data.validation.labels)
    scaled = evaluator.val_set.labels.numpy().astype(np.float64)
    assert abs(evaluator.train_set.labels.mean().item()) < 0.2 and 0.8 < evaluator.train_set.labels.std().item() < 1.2
    slope, intercept = np.polyfit(raw, scaled, 1)  # one affine map for every target
    np.testing.assert_allclose(scaled, slope * raw + intercept, atol=1e-5)
    assert metrics.pearson(PRED_VALUES[:64], raw[:64]) == pytest.approx(metrics.pearson(PRED_VALUES[:64], scaled[:64]))


def test_each_task_has_its_recipe_and_what_a_user_types_wins():
    from rankgym.errors import ConfigError
    from rankgym.recipe import Recipe, full_recipe
    from rankgym.evaluators.factory import recipe_of
    from rankgym.registry import EnvConfig

    assert full_recipe("sst2") == Recipe()
    assert full_recipe("rte").epochs > 1 and full_recipe("rte").max_length == 256
    assert full_recipe("rte", epochs=2, lr=5e-4).epochs == 2 and full_recipe("rte", epochs=None).epochs == full_recipe("rte").epochs
    step = recipe_of(EnvConfig(task="rte", train_examples=1024, max_grad_norm=None))
    assert step.epochs == 1 and step.max_length == 256 and step.max_grad_norm is None  # a step is one short pass
    for bad in (dict(epochs=0), dict(train_examples=1.5), dict(lr=0.0)):
        with pytest.raises(ConfigError):
            Recipe(**bad)


def test_epochs_are_full_passes_each_in_its_own_order():
    import torch

    from rankgym.tasks import Encoded
    from rankgym.training import training_order

    data = Encoded([torch.zeros(n % 7 + 1, dtype=torch.long) for n in range(100)], torch.zeros(100, dtype=torch.long))
    one = training_order(data, 8, seed=3)
    three = training_order(data, 8, seed=3, epochs=3)
    assert len(three) == 3 * len(one) and three[: len(one)] == one  # the first pass is the one-epoch order
    passes = [three[k * len(one):(k + 1) * len(one)] for k in range(3)]
    for batches in passes:
        assert sorted(i for batch in batches for i in batch) == list(range(100))
    assert passes[1] != passes[0] and passes[2] != passes[1]
