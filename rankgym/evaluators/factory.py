"""Evaluators from an environment's config, in this process. It knows nothing of Ray: a Ray pool
ships :func:`build_evaluator` with the config to its workers, and each builds its own."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from rankgym.errors import ConfigError
from rankgym.recipe import Recipe, full_recipe


def recipe_of(config) -> Recipe:
    """The training recipe of one environment step: the env's short budget (one pass), with the
    task's own full-recipe settings otherwise (its max_length)."""
    recipe = full_recipe(config.task, train_examples=config.train_examples, epochs=1, batch_size=config.batch_size, lr=config.lr,
                         val_examples=config.val_examples)
    return replace(recipe, max_grad_norm=config.max_grad_norm)  # None is a value here: no clipping


def alpha_policy_of(config) -> dict[str, Any]:
    return dict(alpha=config.alpha, alpha_mode=config.alpha_mode, rslora=config.rslora)


def build_evaluator(config, k: int = 1):
    """The evaluator an env's ``config`` (a :class:`~rankgym.registry.EnvConfig`) names, in this
    process: Ray is not known here (:func:`rankgym.registry.build_evaluator` puts it on workers)."""
    if config.evaluator == "fake":
        from rankgym.evaluators.fake import FakeEvaluator

        return FakeEvaluator(layers=config.fake_layers, hidden=config.fake_hidden, seed=config.seed, profile=config.fake_profile,
                             noise=config.fake_noise, collapse=config.fake_collapse)
    if config.evaluator == "surrogate":
        from rankgym.evaluators.surrogate import SurrogateEvaluator, shipped_table

        return SurrogateEvaluator(config.surrogate_table or shipped_table(config.task), seed=config.seed)
    if config.evaluator == "replay":
        from rankgym.evaluators.replay import ReplayEvaluator

        if not config.store:
            raise ConfigError("the replay evaluator answers from a store: pass store='path/to/store.sqlite'")
        return ReplayEvaluator(config.store, config.backbone, config.task)
    common = dict(backbone=config.backbone, task=config.task, recipe=recipe_of(config), seed=config.seed, device=config.device,
                  max_rank=config.max_rank, score_examples=config.score_examples, model_name_or_path=config.model_name_or_path,
                  data_dir=config.data_dir, target_modules=config.target_modules, dtype=config.dtype, metric=config.metric,
                  gradient_checkpointing=config.gradient_checkpointing, **alpha_policy_of(config))
    if config.evaluator == "elastic":
        from pathlib import Path

        from rankgym.evaluators.elastic import ElasticEvaluator

        # one long training run, like a full fine-tune: the task's full recipe (its learning rate and epochs) on elastic_examples
        common["recipe"] = replace(full_recipe(config.task, train_examples=config.elastic_examples, batch_size=config.batch_size,
                                               val_examples=config.val_examples), max_grad_norm=config.max_grad_norm)
        cache = Path(config.store).parent / "elastic" if config.store and config.store != ":memory:" else None
        return ElasticEvaluator(min_rank=config.min_rank, rank_step=config.rank_step, sandwich=config.sandwich,
                                draw_budget=config.draw_budget, group_draws=config.elastic_groups,
                                early_stop=config.early_stop, chunks=config.early_stop_chunks, stop_top=config.early_stop_top,
                                cache_dir=cache, **common)
    if config.evaluator == "batched":
        from rankgym.evaluators.batched import BatchedEvaluator

        return BatchedEvaluator(k=k, **common)
    if config.evaluator == "warmstart":
        from rankgym.evaluators.warmstart import WarmStartEvaluator

        return WarmStartEvaluator(warm_examples=config.warm_examples, **common)
    from rankgym.evaluators.finetune import FinetuneEvaluator

    return FinetuneEvaluator(pruner=config.pruner, rungs=config.pruner_rungs, report_examples=config.pruner_examples, **common)
