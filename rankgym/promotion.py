"""Promotion, the answer of every search: the top maps retrained from scratch and validated.

A search ranks maps by a cheap score on examples held out of training; the best of many noisy
scores flatters its winner. So the top ``top_k`` distinct maps by search score, and the map every
episode starts from (uniform at the env's initial rank), are retrained with the full recipe
(``rankgym finetune``'s defaults at ``examples`` training examples, the env's alpha policy) with seeds
0 .. ``seeds`` - 1 and validated on the validation split, which the search never read. The winner
is the best promoted map by mean validation score (metric - lam * cost, as the search scored).
Each retrain is a stored evaluation, so a killed promotion resumes without retraining.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from rankgym.rankmap import RankMap


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
            promotion: Promotion, progress: bool = True) -> dict[str, Any] | None:
    """Retrain and validate the candidates of a finished search; None where nothing can be retrained.

    Returns the promotion table: recipe, seeds, one row per map (parameters, search score,
    validation values per seed, mean, standard deviation, promoted score) and the winner's label.
    """
    import gymnasium as gym

    from rankgym.evaluators.base import Evaluation, adapter_params
    from rankgym.evaluators.finetune import FinetuneEvaluator
    from rankgym.recipe import Recipe
    from rankgym.registry import EnvConfig, alpha_policy_of
    from rankgym.store import EvaluationStore

    spec_kwargs = {k: v for k, v in gym.spec(env_id).kwargs.items() if k != "env_id"}
    config = EnvConfig.from_kwargs({**spec_kwargs, **env_kwargs}, env_id)
    if promotion.top_k < 1 or config.evaluator in ("fake", "replay"):
        return None  # the fake and replay evaluators have no model to retrain
    store = EvaluationStore(store_path)
    modules = store.contexts()[0][2]
    names = [m.name for m in modules]
    initial = config.initial_map or {n: config.initial_rank for n in names}
    chosen = candidates(rows, promotion.top_k, {n: int(initial.get(n, 0)) for n in names})
    recipe = Recipe(train_examples=promotion.examples)  # the full recipe: what `rankgym finetune` trains
    reference = adapter_params(modules, [config.max_rank] * len(modules))
    bar = tqdm(total=len(chosen) * promotion.seeds, desc="promotion", unit="retrain", disable=not progress)
    values: list[list[float]] = [[] for _ in chosen]
    errors: list[list[str]] = [[] for _ in chosen]
    metric = None
    for seed in range(promotion.seeds):
        evaluator = FinetuneEvaluator(config.backbone, config.task, recipe, seed, config.device,
                                      max_rank=max(max(c["ranks"].values()) for c in chosen) or 1, score_on="validation",
                                      score_examples=config.score_examples, model_name_or_path=config.model_name_or_path,
                                      data_dir=config.data_dir, **alpha_policy_of(config))
        metric = evaluator.data.metric
        context = store.register(evaluator.identity(), evaluator.modules)
        template = evaluator.template()
        for i, candidate in enumerate(chosen):
            rank_map = template.replace(candidate["ranks"])
            evaluation = store.get(context, rank_map)
            if evaluation is None:
                try:
                    evaluation = evaluator.evaluate(rank_map)
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
                      "score": mean - config.lam * params / reference, "errors": errs})
    ranked = [row for row in table if math.isfinite(row["score"])]
    winner = max(ranked, key=lambda row: row["score"]) if ranked else None
    return {"recipe": recipe.to_dict(), "seeds": list(range(promotion.seeds)), "split": "validation", "lam": config.lam,
            "metric": metric, "rows": table, "winner": winner and winner["label"]}


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
