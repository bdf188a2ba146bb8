"""Dynamic rank growth during one fine-tune (the seed article, section 5.2); the final ranks are the map.

Schedules, at optimizer step t with growth interval T (the article's formulas):

- ``linear``: r(t) = int(min_rank + min(t / (10 T), 1) * (max_rank - min_rank)), every module;
- ``step``: r(t) = min(min_rank * 2 ** (t // T), max_rank), every module;
- ``adaptive``: every T steps the ``top`` modules with the highest importance grow by ``increment``
  (the article grows all of them); importance is the Frobenius norm of the loss gradient with
  respect to the module's B factor, averaged over the steps since the last growth and divided by
  what one rank of the module costs (in + out): how much the loss would move per parameter spent.
  It is measured on B because B starts at zero, where the gradient of A is zero too.

Growth never exceeds ``budget_params``: a module whose growth would cross it is left as it is.
New components enter with B = 0 and the kept ones are rescaled with the scale's change
(:meth:`~rankgym.lora.layer.LoRALayer.set_rank`), so the model's function does not jump.
"""

from __future__ import annotations

from typing import Callable, Sequence

from torch import nn

from rankgym.core import ModuleInfo, adapter_params
from rankgym.lora.inject import apply_rank_map
from rankgym.rankmap import RankMap
from rankgym.recipe import ALPHA_POLICY, Recipe
from rankgym.taskdata import Encoded
from rankgym.training import finetune, init_adapters, training_order

SCHEDULES = ("linear", "step", "adaptive")


def scheduled_rank(schedule: str, step: int, min_rank: int, max_rank: int, interval: int) -> int:
    """Every module's rank at ``step`` under the ``linear`` or ``step`` schedule."""
    if schedule == "linear":
        return int(min_rank + min(step / (interval * 10), 1.0) * (max_rank - min_rank))
    if schedule == "step":
        return min(min_rank * 2 ** (step // interval), max_rank)
    raise ValueError(f"{schedule!r} has no closed form; schedules: {', '.join(SCHEDULES)}")


def grow(model: nn.Module, modules: Sequence[ModuleInfo], train: Encoded, validation: Encoded, pad_id: int,
         schedule: str, min_rank: int, max_rank: int, budget_params: int, recipe: Recipe = Recipe(), seed: int = 0,
         interval: int | None = None, top: int | None = None, increment: int = 4,
         on_step: Callable[[int, dict[str, int]], None] | None = None) -> dict[str, int]:
    """Fine-tune ``model`` once while its adapters grow by ``schedule``; returns the final ranks.

    Args:
        interval: steps between growths (default: a tenth of the run's steps, so ``linear`` reaches
            ``max_rank`` at the end and ``step`` doubles ten times at most).
        top: modules grown per ``adaptive`` growth (default: a quarter of them).
        on_step: called with (step, ranks) before every optimizer step, after that step's growth.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown growth schedule {schedule!r}: {', '.join(SCHEDULES)}")
    names = [m.name for m in modules]
    steps = len(training_order(train, recipe.batch_size, seed))
    interval = interval or max(1, steps // 10)
    top = top or max(1, len(names) // 4)
    layers = apply_rank_map(model, RankMap({n: min_rank for n in names}, **ALPHA_POLICY), max_rank=max_rank)
    init_adapters(model, seed)
    ranks = {n: min_rank for n in names}
    importance = {n: 0.0 for n in names}
    cost = {m.name: m.in_features + m.out_features for m in modules}

    def fits(candidate: dict[str, int]) -> bool:
        return adapter_params(modules, [candidate[n] for n in names]) <= budget_params

    def before_step(step: int) -> None:
        if schedule == "adaptive":
            wanted = sorted(names, key=lambda n: -importance[n] / cost[n])[:top] if step and step % interval == 0 else []
            targets = {n: min(max_rank, ranks[n] + increment) for n in wanted}
            importance.update({n: 0.0 for n in names} if wanted else {})
        else:  # the article updates every step
            target = scheduled_rank(schedule, step, min_rank, max_rank, interval)
            targets = {n: target for n in names if target > ranks[n]}
        for name, rank in targets.items():  # in model order (adaptive: by importance) until the budget is spent
            if fits({**ranks, name: rank}):
                ranks[name] = rank
                layers[name].set_rank(rank)
        if on_step:
            on_step(step, dict(ranks))

    def after_step(step: int) -> None:
        for name in names:
            grad = layers[name].lora_B.grad  # zero in the inactive columns: the norm is the active part's
            if grad is not None:
                importance[name] += float(grad.norm())

    finetune(model, train, validation, pad_id, recipe, seed, description=f"growth ({schedule})",
             before_step=before_step, after_step=after_step)
    return ranks
