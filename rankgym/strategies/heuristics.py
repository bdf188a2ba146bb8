"""The free heuristics at a parameter budget: the maps every search's answer must at least match.

Beside the uniform map at the budget (the env's start, which promotion retrains anyway), two maps
that cost a search nothing: PRILoRA's depth schedule at the budget's mean rank, and PEFT's EVA at
that rank (ranks from SVDs of each module's input activations on 16 training batches, no
training). Both are projected onto the budget by the env's rule, as every searched map is, and
put on the env's rank grid. EVA loads the model (seconds to a minute), so the maps are kept in
``heuristics.json`` beside the store (:func:`cache_path`), keyed by what decides them: each is
computed once per backbone, task and budget.
"""

from __future__ import annotations

import hashlib
import json
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, ContextManager, Sequence

from rankgym.budget import budget_rank, on_grid, project
from rankgym.core import ModuleInfo
from rankgym.files import read_json
from rankgym.strategies.baselines import prilora_ranks

EVA_BATCHES = 16  # training batches of 32 whose activations EVA's SVDs see (the eva agent's default)


def uniform_label(ranks) -> str:
    """``uniform-R`` for a map with one rank everywhere, else ``initial map``."""
    distinct = set(int(r) for r in ranks)
    return f"uniform-{distinct.pop()}" if len(distinct) == 1 else "initial map"


def cache_path(store: str | Path | None) -> Path | None:
    """Where the heuristic maps of a store's searches are kept: ``heuristics.json`` beside it (None in memory)."""
    return Path(store).parent / "heuristics.json" if store and str(store) != ":memory:" else None


def heuristics_key(config, modules: Sequence[ModuleInfo], budget: int) -> str:
    """What decides the heuristic maps: backbone, task, modules, budget, rank grid, seed."""
    decided = dict(backbone=config.backbone, model=config.model_name_or_path, task=config.task, data_dir=config.data_dir,
                   modules=[m.name for m in modules], budget=budget, min_rank=config.min_rank, rank_step=config.rank_step,
                   target_modules=config.target_modules, seed=config.seed)
    return hashlib.sha256(json.dumps(decided, sort_keys=True, default=str).encode()).hexdigest()[:24]


def heuristic_maps(config, modules: Sequence[ModuleInfo], budget: int, cache: Path | None = None,
                   eva: bool = True, make_room: Callable[[], ContextManager] = nullcontext) -> list[tuple[str, dict[str, int]]]:
    """(label, ranks by module name) of PRILoRA and EVA at ``budget`` adapter parameters, projected onto it.

    ``config`` is the search's :class:`~rankgym.registry.EnvConfig`; ``cache`` a JSON file that
    keeps computed maps (read and extended, written whole); ``eva=False`` where there is no model
    to probe (the fake envs); ``make_room`` a context EVA's probe model is loaded in (a search's
    evaluator releases its own there, :meth:`~rankgym.evaluators.base.Evaluator.released`).
    """
    rank = budget_rank(modules, budget)
    prilora = (f"prilora-{rank}", _fit(config, modules, budget, prilora_ranks(modules, rank)))
    if not eva:
        return [prilora]
    key = heuristics_key(config, modules, budget)
    kept: dict[str, Any] = read_json(cache, "the heuristics cache") if cache is not None and cache.is_file() else {}
    if key in kept:
        return [(label, dict(ranks)) for label, ranks in kept[key]]
    with make_room():
        eva_map = _eva(config, modules, rank)
    maps = [prilora, (f"eva-{rank}", _fit(config, modules, budget, eva_map))]
    if cache is not None:
        kept[key] = maps
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(cache.name + ".tmp")
        tmp.write_text(json.dumps(kept, indent=1) + "\n")
        tmp.replace(cache)  # never a half-written cache
    return maps


def _fit(config, modules: Sequence[ModuleInfo], budget: int, ranks: Sequence[int]) -> dict[str, int]:
    """At most max_rank, onto the budget by the env's projection and onto the grid the agents choose
    from (rounded down, so still within the budget): the map a search evaluates and promotion retrains is one."""
    capped = [min(int(r), config.max_rank) for r in ranks]
    fitted = on_grid(project(capped, list(modules), budget, config.min_rank, config.rank_step), config.min_rank, config.rank_step)
    return {m.name: int(r) for m, r in zip(modules, fitted)}


def _eva(config, modules: Sequence[ModuleInfo], rank: int) -> list[int]:
    from rankgym.evaluators.finetune import FinetuneEvaluator
    from rankgym.recipe import Recipe
    from rankgym.strategies.peft_allocators import eva_ranks

    probe = FinetuneEvaluator(config.backbone, config.task, Recipe(train_examples=32 * EVA_BATCHES), config.seed, config.device,
                              max_rank=1, score_examples=config.score_examples, model_name_or_path=config.model_name_or_path,
                              data_dir=config.data_dir, target_modules=config.target_modules, dtype=config.dtype)
    try:
        ranks = eva_ranks(probe.model, modules, probe.train_set, probe.tokenizer.pad_token_id, rank, batches=EVA_BATCHES,
                          seed=config.seed)
    finally:
        probe.close()
    return [ranks[m.name] for m in modules]
