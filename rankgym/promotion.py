"""Promotion, the answer of every search: the top maps retrained from scratch and validated.

A search ranks maps by a cheap score on examples held out of training; the best of many noisy
scores flatters its winner. So the top ``top_k`` distinct maps by search score, and the map every
episode starts from (uniform at the env's initial rank), are retrained with the full recipe
(``rankgym finetune``'s defaults at ``examples`` training examples, the env's alpha policy) with seeds
0 .. ``seeds`` - 1 and validated on the validation split, which the search never read. The winner
is the best promoted map by mean validation score (metric - lam * cost, as the search scored).
Each retrain is a stored evaluation, so a killed promotion resumes without retraining.

The winner's seed-0 retrain is kept as a trained PEFT adapter (``adapter_dir``): every seed-0
retrain is saved as it finishes, the winner's is kept and the others are dropped; where the store
answered the winner's retrain (a resumed promotion whose process died before saving it), it is
retrained once more, which gives the same adapter.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from rankgym.rankmap import RankMap

log = logging.getLogger(__name__)


@dataclass
class Promotion:
    """How a search's answer is promoted.

    Attributes:
        top_k: distinct maps to retrain, best search score first (0 turns promotion off).
        seeds: seeds 0 .. seeds - 1 for every retrain.
        examples: training examples of a retrain (the full recipe).
    """

    top_k: int = 3
    seeds: int = 3
    examples: int = 8192


def candidates(rows: list[dict[str, Any]], top_k: int, initial: dict[str, int]) -> list[dict[str, Any]]:
    """The ``top_k`` distinct maps of a step log by search score, then the initial map (once)."""
    seen: set[str] = set()
    chosen = []
    for row in sorted((r for r in rows if r["error"] is None and r["score"] is not None), key=lambda r: -r["score"]):
        ranks = json.loads(row["rank_map"])
        key = json.dumps(ranks, sort_keys=True)
        if key in seen:
            continue
        seen.add(key)
        chosen.append({"label": row["label"] or f"search #{len(chosen) + 1}", "ranks": ranks,
                       "search_metric": row["metric"], "search_score": row["score"]})
        if len(chosen) == top_k:
            break
    key = json.dumps(initial, sort_keys=True)
    ranks = set(initial.values())
    name = f"uniform-{ranks.pop()}" if len(ranks) == 1 else "initial map"
    match = next((c for c in chosen if json.dumps(c["ranks"], sort_keys=True) == key), None)
    if match:
        match["label"] += f" (= {name})"
    else:
        logged = next((r for r in rows if json.dumps(json.loads(r["rank_map"]), sort_keys=True) == key and r["error"] is None), None)
        chosen.append({"label": name, "ranks": initial, "search_metric": logged and logged["metric"],
                       "search_score": logged and logged["score"]})
    return chosen


def promote(rows: list[dict[str, Any]], env_id: str, env_kwargs: dict[str, Any], store_path: str | Path,
            promotion: Promotion, progress: bool = True, adapter_dir: str | Path | None = None) -> dict[str, Any] | None:
    """Retrain and validate the candidates of a finished search; None where nothing can be retrained.

    Returns the promotion table: recipe, seeds, one row per map (parameters, search score,
    validation values per seed, mean, standard deviation, promoted score) and the winner's label.
    With ``adapter_dir``, the winner's seed-0 retrain is saved there as a PEFT adapter.
    """
    import gymnasium as gym

    from rankgym.budget import budget_params, default_lam, project
    from rankgym.evaluators.base import Evaluation, adapter_params
    from rankgym.recipe import Recipe
    from rankgym.registry import EnvConfig
    from rankgym.store import EvaluationStore

    spec_kwargs = {k: v for k, v in gym.spec(env_id).kwargs.items() if k != "env_id"}
    config = EnvConfig.from_kwargs({**spec_kwargs, **env_kwargs}, env_id)
    if promotion.top_k < 1 or config.evaluator in ("fake", "replay"):
        return None  # the fake and replay evaluators have no model to retrain
    store = EvaluationStore(store_path)
    modules = store.contexts()[0][2]
    names = [m.name for m in modules]
    initial = config.initial_map or {n: config.initial_rank for n in names}
    initial = [int(initial.get(n, 0)) for n in names]
    reference = adapter_params(modules, [config.max_rank] * len(modules))
    if config.param_budget is not None:  # the uniform map competes at the search's budget, as the env starts from it
        initial = project(initial, modules, budget_params(config.param_budget, reference), config.min_rank, config.rank_step).tolist()
    lam = default_lam(config.param_budget) if config.lam is None else config.lam
    chosen = candidates(rows, promotion.top_k, dict(zip(names, initial)))
    recipe = Recipe(train_examples=promotion.examples)  # the full recipe: what `rankgym finetune` trains
    bar = tqdm(total=len(chosen) * promotion.seeds, desc="promotion", unit="retrain", disable=not progress)
    staging = Path(adapter_dir).with_name(Path(adapter_dir).name + ".candidates") if adapter_dir is not None else None
    values: list[list[float]] = [[] for _ in chosen]
    errors: list[list[str]] = [[] for _ in chosen]
    metric = None
    for seed in range(promotion.seeds):
        evaluator = _retrainer(config, recipe, seed, max(max(c["ranks"].values()) for c in chosen))
        metric = evaluator.data.metric
        context = store.register(evaluator.identity(), evaluator.modules)
        template = evaluator.template()
        for i, candidate in enumerate(chosen):
            rank_map = template.replace(candidate["ranks"])
            evaluation = store.get(context, rank_map)
            if evaluation is None:
                try:
                    evaluation = evaluator.evaluate(rank_map)
                    if adapter_dir is not None and seed == 0 and any(rank_map.ranks.values()):
                        evaluator.save_peft_adapter(staging / str(i), rank_map)
                except Exception as err:  # a failed retrain is reported in the table (and stored), not fatal
                    evaluation = Evaluation(math.nan, adapter_params(modules, candidate["ranks"]), 0.0, error=f"{type(err).__name__}: {err}")
                evaluation = store.put(context, rank_map, evaluation)
            if evaluation.error:
                errors[i].append(f"seed {seed}: {evaluation.error}")
            values[i].append(evaluation.metric)
            bar.update(1)
        evaluator.close()
    bar.close()

    table = []
    for candidate, vals, errs in zip(chosen, values, errors):
        finite = [v for v in vals if math.isfinite(v)]
        params = adapter_params(modules, candidate["ranks"])
        mean = statistics.fmean(finite) if finite else math.nan
        table.append({**candidate, "params": params, "values": vals, "mean": mean,
                      "std": statistics.stdev(finite) if len(finite) > 1 else 0.0,
                      "score": mean - lam * params / reference, "errors": errs})
    ranked = [row for row in table if math.isfinite(row["score"])]
    winner = max(ranked, key=lambda row: row["score"]) if ranked else None
    if adapter_dir is not None and winner is not None and any(winner["ranks"].values()):
        _keep_winner_adapter(Path(adapter_dir), staging, table.index(winner), winner, config, recipe)
    return {"recipe": recipe.to_dict(), "seeds": list(range(promotion.seeds)), "split": "validation", "lam": lam,
            "metric": metric, "rows": table, "winner": winner and winner["label"]}


def _retrainer(config, recipe, seed: int, max_rank: int):
    """The finetune evaluator of a promotion retrain: the full recipe, validated on the validation split."""
    from rankgym.evaluators.finetune import FinetuneEvaluator
    from rankgym.registry import alpha_policy_of

    return FinetuneEvaluator(config.backbone, config.task, recipe, seed, config.device, max_rank=max_rank or 1, score_on="validation",
                             score_examples=config.score_examples, model_name_or_path=config.model_name_or_path,
                             data_dir=config.data_dir, target_modules=config.target_modules, dtype=config.dtype,
                             **alpha_policy_of(config))


def _keep_winner_adapter(adapter_dir: Path, staging: Path, index: int, winner: dict[str, Any], config, recipe) -> None:
    import shutil

    saved = staging / str(index)
    if saved.is_dir():
        shutil.rmtree(adapter_dir, ignore_errors=True)
        saved.rename(adapter_dir)
    elif not adapter_dir.is_dir():  # the store answered the winner's retrain: train it again for its weights
        try:
            evaluator = _retrainer(config, recipe, 0, max(winner["ranks"].values()))
            rank_map = evaluator.template().replace(winner["ranks"])
            evaluator.evaluate(rank_map)
            evaluator.save_peft_adapter(adapter_dir, rank_map)
            evaluator.close()
        except Exception as err:  # the answer stands without its weights; summary.json then says adapter: null
            log.warning("could not keep the winner's trained adapter: %s", err)
    shutil.rmtree(staging, ignore_errors=True)


def promoted_map(template: RankMap, promotion: dict[str, Any]) -> RankMap | None:
    """The winner of a promotion table as a rank map whose provenance holds its promoted numbers."""
    row = next((r for r in promotion["rows"] if r["label"] == promotion["winner"]), None)
    if row is None:
        return None
    rank_map = template.replace(row["ranks"])
    rank_map.provenance.update(promoted_mean=row["mean"], promoted_std=row["std"], promoted_values=row["values"],
                               promoted_seeds=promotion["seeds"], promoted_examples=promotion["recipe"]["train_examples"],
                               search_metric=row["search_metric"], search_score=row["search_score"])
    return rank_map
