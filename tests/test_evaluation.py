"""What an evaluation measures: a score split held out of training, clipping, and the alpha policy."""

import gymnasium as gym
import pytest
import torch
from torch import nn

import rankgym  # noqa: F401  (registers the ids)
from rankgym.errors import ConfigError
from rankgym.evaluators.finetune import FinetuneEvaluator
from rankgym.lora.inject import lora_layers
from rankgym.tasks import load_task
from rankgym.training import Recipe, clip_per_copy


def unique_task(folder, n_train=400, n_val=60):
    """A task whose every sentence is different, so token sequences identify examples."""
    folder.mkdir()
    for name, n, offset in (("train", n_train, 0), ("validation", n_val, 100_000)):
        lines = ["sentence\tlabel"] + [f"example number {offset + i} of {name}\t{i % 2}" for i in range(n)]
        (folder / f"{name}.tsv").write_text("\n".join(lines) + "\n")
    return folder


def sequences(encoded):
    return {tuple(x.tolist()) for x in encoded.ids}


@pytest.mark.parametrize("seed", [0, 1, 5])
@pytest.mark.parametrize("train_examples", [64, 1000])
def test_no_score_example_is_ever_trained_on(tmp_path, seed, train_examples):
    task = unique_task(tmp_path / "task")
    evaluator = FinetuneEvaluator("tiny", str(task), Recipe(train_examples=train_examples), seed, "cpu", max_rank=4)
    train, score = sequences(evaluator.train_set), sequences(evaluator.val_set)
    assert len(score) == 60  # the validation split's size (at most 1,000)
    assert not train & score
    assert len(train) == min(train_examples, 400 - 60)  # every training subset comes from the rest
    validation = sequences(FinetuneEvaluator("tiny", str(task), Recipe(train_examples=64), seed, "cpu", max_rank=4,
                                             score_on="validation").val_set)
    assert not validation & score and len(validation) == 60  # the validation split is not the score split


def test_the_score_split_is_the_same_for_every_seed_and_out_of_the_training_file(tmp_path):
    task = unique_task(tmp_path / "task")
    splits = [sequences(FinetuneEvaluator("tiny", str(task), Recipe(train_examples=32), seed, "cpu", max_rank=4).val_set)
              for seed in (0, 3)]
    assert splits[0] == splits[1]
    data = load_task(str(task))
    from rankgym.backbones import load_backbone

    _, tokenizer = load_backbone("tiny")
    train_file = {tuple(tokenizer(t)["input_ids"]) for t in data.train.texts}
    assert splits[0] <= train_file


def test_score_examples_is_validated_and_sizes_the_split(tmp_path):
    task = unique_task(tmp_path / "task")
    evaluator = FinetuneEvaluator("tiny", str(task), Recipe(train_examples=32), 0, "cpu", max_rank=4, score_examples=25)
    assert len(evaluator.val_set) == 25 and evaluator.identity()["score_examples"] == 25
    with pytest.raises(Exception, match="score split of 400 examples does not fit"):
        FinetuneEvaluator("tiny", str(task), Recipe(train_examples=32), 0, "cpu", max_rank=4, score_examples=400)


def test_per_copy_clipping_equals_clipping_each_configuration_alone():
    torch.manual_seed(0)
    stacked = [nn.Parameter(torch.zeros(3, 5, 4)), nn.Parameter(torch.zeros(3, 7))]
    for p in stacked:
        p.grad = torch.randn_like(p) * torch.tensor([0.01, 3.0, 10.0]).view(-1, *([1] * (p.dim() - 1)))
    alone = []
    for c in range(3):
        params = [nn.Parameter(p[c].detach().clone()) for p in stacked]
        for p, s in zip(params, stacked):
            p.grad = s.grad[c].clone()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        alone.append([p.grad for p in params])
    clip_per_copy(stacked, 3, 1.0)
    for c in range(3):
        for p, expected in zip(stacked, alone[c]):
            torch.testing.assert_close(p.grad[c], expected)
    assert torch.linalg.vector_norm(torch.cat([p.grad[0].flatten() for p in stacked])) < 0.5  # small ones are left alone


def test_alpha_policy_kwargs_reach_the_evaluator_and_its_layers(sst2_dir):
    env = gym.make("RankSearch-tiny-sst2-v0", device="cpu", data_dir=str(sst2_dir), train_examples=32, val_examples=32,
                   alpha=2.0, alpha_mode="ratio", rslora=True, max_grad_norm=0.5, lr=1e-3).unwrapped
    evaluator = env.evaluator
    assert evaluator.alpha_policy == {"alpha": 2.0, "alpha_mode": "ratio", "rslora": True}
    assert (evaluator.recipe.max_grad_norm, evaluator.recipe.lr) == (0.5, 1e-3)
    _, info = env.reset(seed=0)
    assert info["split"] == "score"
    assert env.rank_map().alpha_mode == "ratio" and env.rank_map().rslora
    for layer in lora_layers(evaluator.model).values():
        assert layer.rank == 4 and layer.scale == pytest.approx(2.0 * 4 / 4**0.5)  # lora_alpha = alpha * r, over sqrt(r)


def test_bad_alpha_policy_is_one_clear_error():
    with pytest.raises(ConfigError, match="alpha_mode must be 'fixed'"):
        gym.make("RankSearch-tiny-sst2-v0", alpha_mode="sqrt")
    with pytest.raises(ConfigError, match="rslora=.yes. for RankSearch-tiny-sst2-v0 should be True or False"):
        gym.make("RankSearch-tiny-sst2-v0", rslora="yes")


def test_a_result_of_another_computation_is_never_answered_from_the_store(sst2_dir, tmp_path, monkeypatch):
    from rankgym.evaluators import finetune as finetune_module
    from rankgym.store import EvaluationStore

    store = EvaluationStore(tmp_path / "store.sqlite")
    recipe = Recipe(train_examples=32, val_examples=32)
    evaluator = FinetuneEvaluator("tiny", "sst2", recipe, 0, "cpu", max_rank=4, data_dir=str(sst2_dir))
    rank_map = evaluator.template().replace({m.name: 2 for m in evaluator.modules})
    context = store.register(evaluator.identity(), evaluator.modules)
    store.put(context, rank_map, evaluator.evaluate(rank_map))
    assert evaluator.identity()["budget"]["eval_batch_size"] == 32  # resolved, not None
    assert store.get(store.register(evaluator.identity(), evaluator.modules), rank_map) is not None

    explicit = FinetuneEvaluator("tiny", "sst2", Recipe(train_examples=32, val_examples=32, eval_batch_size=64), 0, "cpu",
                                 max_rank=4, data_dir=str(sst2_dir))
    evaluator.device = torch.device("cuda")  # only its identity is asked for
    versions = dict(finetune_module.package_versions(), torch="0.0.0")
    others = [explicit.identity(), evaluator.identity()]
    evaluator.device = torch.device("cpu")
    monkeypatch.setattr(finetune_module, "package_versions", lambda: versions)
    others.append(evaluator.identity())
    for identity in others:
        assert store.get(store.register(identity, evaluator.modules), rank_map) is None


def test_maps_that_differ_in_one_module_share_every_other_initial_draw(sst2_dir):
    from rankgym.backbones import head_modules
    from rankgym.lora.inject import apply_rank_map
    from rankgym.training import init_adapters

    evaluator = FinetuneEvaluator("tiny", "sst2", Recipe(train_examples=32), seed=4, device="cpu", max_rank=8, data_dir=str(sst2_dir))
    names = [m.name for m in evaluator.modules]
    base = evaluator.template().replace({n: 4 for n in names})
    initial = []
    for rank_map in (base, base.replace({names[1]: 6}), base.replace({names[1]: 2})):
        apply_rank_map(evaluator.model, rank_map, max_rank=8)
        init_adapters(evaluator.model, evaluator.seed)
        A = {n: layer.lora_A.detach().clone() for n, layer in lora_layers(evaluator.model).items()}
        head = {k: p.detach().clone() for h in head_modules(evaluator.model).values() for k, p in h.named_parameters()}
        initial.append((A, head))
    (A, head), (grown, grown_head), (shrunk, _) = initial
    for n in names:
        if n != names[1]:
            assert torch.equal(grown[n], A[n]) and torch.equal(shrunk[n], A[n])
    assert all(torch.equal(grown_head[k], head[k]) for k in head)
    # the changed module draws the same stream: its common rows agree, the new ones are fresh
    torch.testing.assert_close(grown[names[1]][:4], A[names[1]][:4], rtol=0, atol=0)
    torch.testing.assert_close(shrunk[names[1]][:2], A[names[1]][:2], rtol=0, atol=0)
    assert grown[names[1]][4:6].abs().sum() > 0 and shrunk[names[1]][2:].abs().sum() == 0
    # a different seed draws differently, module by module
    init_adapters(evaluator.model, evaluator.seed + 1)
    assert not torch.equal(lora_layers(evaluator.model)[names[0]].lora_A, shrunk[names[0]])


def test_a_store_of_another_schema_is_refused_never_misread(tmp_path):
    import sqlite3

    from rankgym.errors import FileError
    from rankgym.store import SCHEMA_VERSION, EvaluationStore

    path = tmp_path / "store.sqlite"
    EvaluationStore(path).close()
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    newer = tmp_path / "newer.sqlite"
    sqlite3.connect(newer).execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(FileError, match="newer rankgym"):
        EvaluationStore(newer)
    older = tmp_path / "older.sqlite"  # an unversioned file whose evaluations table lacks columns
    db = sqlite3.connect(older)
    db.execute("CREATE TABLE evaluations (key TEXT PRIMARY KEY, context TEXT, metric REAL)")
    db.commit()
    db.close()
    with pytest.raises(FileError, match="not rankgym's"):
        EvaluationStore(older)
    assert [row[1] for row in sqlite3.connect(older).execute("PRAGMA table_info(evaluations)")] == ["key", "context", "metric"]
