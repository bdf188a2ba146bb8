"""The batched evaluator gives every configuration what the single evaluator gives it."""

import numpy as np
import pytest

from rankgym.evaluators.batched import BatchedEvaluator
from rankgym.evaluators.finetune import FinetuneEvaluator
from rankgym.training import Recipe

RECIPE = Recipe(train_examples=96, batch_size=16, val_examples=64)


def maps_for(evaluator):
    names = [m.name for m in evaluator.modules]
    template = evaluator.template()
    return [
        template.replace({n: 4 for n in names}),
        template.replace({n: [0, 2, 8, 0, 6, 1, 0, 3][i] for i, n in enumerate(names)}),  # rank-0 modules included
        template.replace({n: 8 if "mlp" in n else 0 for n in names}),
    ]


def test_batched_losses_equal_single_losses_at_every_step(sst2_dir):
    common = dict(backbone="tiny", task="sst2", recipe=RECIPE, seed=7, device="cpu", max_rank=8, data_dir=str(sst2_dir))
    single = FinetuneEvaluator(**common)
    batched = BatchedEvaluator(k=3, **common)
    maps = maps_for(single)
    alone = []
    for m in maps:
        evaluation = single.evaluate(m)
        alone.append((evaluation, single.last_result.losses))
    together = batched.evaluate_many(maps)
    for (evaluation, losses), result, joint in zip(alone, batched.last_results, together):
        assert len(result.losses) == len(losses) == 6
        np.testing.assert_allclose(result.losses, losses, rtol=0, atol=1e-5)
        assert joint.metric == evaluation.metric and joint.params == evaluation.params
        assert joint.val_loss == pytest.approx(evaluation.val_loss, abs=1e-5)
    assert len({tuple(r.losses) for r in batched.last_results}) == 3  # the maps really differ


def test_fewer_maps_than_k_and_bad_counts(sst2_dir):
    batched = BatchedEvaluator("tiny", "sst2", RECIPE, seed=7, device="cpu", max_rank=8, data_dir=str(sst2_dir), k=4)
    maps = maps_for(batched)
    first = batched.evaluate_many(maps[:2])
    assert len(first) == 2 and batched.evaluate(maps[0]).metric == first[0].metric
    with pytest.raises(ValueError, match="1..4 rank maps"):
        batched.evaluate_many(maps * 2)
    assert batched.identity()["evaluator"] == f"batched-v{BatchedEvaluator.version}"
