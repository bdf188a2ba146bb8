"""Promotion, the answer of every search: the top maps retrained from scratch and validated.

A search ranks maps by a cheap score on examples held out of training; the best of many noisy
scores flatters its winner. So the top ``top_k`` distinct maps by search score, the map every
episode starts from (uniform at the env's initial rank, or at the budget), and under a parameter
budget the free heuristics at that budget (PRILoRA's depth schedule and PEFT's EVA, see
:mod:`rankgym.strategies.heuristics`) are retrained with the task's full recipe
(:func:`rankgym.recipe.full_recipe`, the env's alpha policy) with seeds 0 .. ``seeds`` - 1.

Each retrain is scored twice: on the score split (held out of training) and on the validation
split, which the search never read. The winner is chosen on the score split (metric - lam * cost,
as the search scored) and its validation numbers are reported, so the reported number is not the
maximum of the numbers that chose it. A tie is a tie: every candidate whose score-split mean is
within the seed spread of the leader's (the larger of the two standard deviations) ties with it,
and of those the one with the fewest adapter parameters is the answer. Each retrain is a stored
evaluation (one per split), so a killed promotion resumes without retraining.

The winner's seed-0 retrain is kept as a trained PEFT adapter (``adapter_dir``): every seed-0
retrain is saved as it finishes, the winner's is kept and the others are dropped; where the store
answered the winner's retrain (a resumed promotion whose process died before saving it), it is
retrained once more, which gives the same adapter.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from rankgym import defaults
from rankgym.rankmap import RankMap
from rankgym.strategies.heuristics import uniform_label

log = logging.getLogger(__name__)


@dataclass
class Promotion:
    """How a search's answer is promoted.

    Attributes:
        top_k: distinct maps to retrain, best search score first (0 turns promotion off).
        seeds: seeds 0 .. seeds - 1 for every retrain.
        examples: training examples of a retrain (None: the task's full recipe, :func:`rankgym.recipe.full_recipe`).
        heuristics: also retrain the free heuristics at the search's parameter budget (PRILoRA, EVA).
        halving: successive halving: after the first seed, a candidate whose score-split choice is
            more than ``halving`` x the seed spread (pooled over the rows that get every seed)
            behind the leader stops; None retrains every candidate with every seed.
        retry_failed: retrain candidates whose stored retrain failed (``--resume --retry-failed``),
            instead of reporting the stored failure.
    """

    top_k: int = defaults.PROMOTE
    seeds: int = defaults.PROMOTE_SEEDS
    examples: int | None = None
    heuristics: bool = True
    halving: float | None = defaults.PROMOTE_HALVING
    retry_failed: bool = False


def candidates(rows: list[dict[str, Any]], top_k: int, initial: dict[str, int],
               extra: list[tuple[str, dict[str, int]]] = ()) -> list[dict[str, Any]]:
    """The ``top_k`` distinct maps of a step log by search score (scores stopped early left out), then the initial map and the
    ``extra`` (label, ranks) maps, each once: a map already chosen gets the other's name beside its own."""
    seen: set[str] = set()
    chosen = []
    scored = (r for r in rows if r["error"] is None and r["score"] is not None and r.get("fraction") is None)  # a stopped score is an estimate
    for row in sorted(scored, key=lambda r: -r["score"]):
        ranks = json.loads(row["rank_map"])
        key = json.dumps(ranks, sort_keys=True)
        if key in seen:
            continue
        seen.add(key)
        chosen.append({"label": row["label"] or f"search #{len(chosen) + 1}", "ranks": ranks,
                       "search_metric": row["metric"], "search_score": row["score"], "roles": ["search"]})
        if len(chosen) == top_k:
            break
    for role, name, ranks in [("uniform", uniform_label(initial.values()), initial), *(("heuristic", n, r) for n, r in extra)]:
        key = json.dumps(ranks, sort_keys=True)
        match = next((c for c in chosen if json.dumps(c["ranks"], sort_keys=True) == key), None)
        if match:
            if match["label"] != name:  # a search map labelled by its start already carries the name
                match["label"] += f" (= {name})"
            match["roles"].append(role)
            continue
        logged = next((r for r in rows if json.dumps(json.loads(r["rank_map"]), sort_keys=True) == key and r["error"] is None), None)
        chosen.append({"label": name, "ranks": ranks, "search_metric": logged and logged["metric"],
                       "search_score": logged and logged["score"], "roles": [role]})
    return chosen


def choose(table: list[dict[str, Any]]) -> tuple[dict[str, Any] | None, list[str]]:
    """(the winner, the labels tied with it) by score-split promoted score.

    The leader has the best ``choice`` (score-split mean - lam * cost); every row whose choice is
    within the larger of the two score-split standard deviations of the leader's ties with it, and
    the tied row with the fewest adapter parameters wins (then the better choice).
    """
    ranked = [row for row in table if math.isfinite(row["choice"])]
    if not ranked:
        return None, []
    leader = max(ranked, key=lambda row: row["choice"])
    tied = [row for row in ranked if leader["choice"] - row["choice"] <= max(leader["score_std"], row["score_std"])]
    winner = min(tied, key=lambda row: (row["params"], -row["choice"]))
    return winner, [row["label"] for row in tied if row is not winner]


def _summary(values: list[float]) -> tuple[float, float]:
    finite = [v for v in values if math.isfinite(v)]
    return (statistics.fmean(finite) if finite else math.nan), (statistics.stdev(finite) if len(finite) > 1 else 0.0)


def promote(rows: list[dict[str, Any]], env_id: str, env_kwargs: dict[str, Any], store_path: str | Path,
            promotion: Promotion, progress: bool = True, adapter_dir: str | Path | None = None) -> dict[str, Any] | None:
    """Retrain and score the candidates of a finished search; None where nothing can be retrained.

    Returns the promotion table: recipe, seeds, which split chose and which reports, one row per
    map (parameters, search score, score-split and validation values per seed with their means and
    standard deviations, the choice it was ranked by, each retrain's seconds as it was trained, also
    where the store answered it), the winner's label and the labels tied with
    it. With ``adapter_dir``, the winner's seed-0 retrain is saved there as a PEFT adapter.
    """
    from rankgym.budget import budget_params, default_lam, project
    from rankgym.core import adapter_params
    from rankgym.recipe import full_recipe
    from rankgym.registry import EnvConfig
    from rankgym.evaluators.service import EvaluationService
    from rankgym.store import EvaluationStore
    from rankgym.strategies.heuristics import cache_path, heuristic_maps

    config = EnvConfig.for_env(env_id, env_kwargs)
    if promotion.top_k < 1 or config.evaluator in ("fake", "replay"):
        return None  # the fake and replay evaluators have no model to retrain
    store = EvaluationStore(store_path)
    modules = store.contexts()[0][2]
    names = [m.name for m in modules]
    initial = config.initial_map or {n: config.initial_rank for n in names}
    initial = [int(initial.get(n, 0)) for n in names]
    reference = adapter_params(modules, [config.max_rank] * len(modules))
    extra = []
    if config.param_budget is not None:  # the uniform map competes at the search's budget, as the env starts from it
        budget = budget_params(config.param_budget, reference)
        initial = project(initial, modules, budget, config.min_rank, config.rank_step).tolist()
        if promotion.heuristics:
            extra = heuristic_maps(config, modules, budget, cache_path(store_path))
    lam = default_lam(config.param_budget) if config.lam is None else config.lam
    chosen = candidates(rows, promotion.top_k, dict(zip(names, initial)), extra)
    recipe = full_recipe(config.task, train_examples=promotion.examples)  # what `rankgym finetune --task` trains
    bar = tqdm(total=len(chosen) * promotion.seeds, desc="promotion", unit="retrain", disable=not progress)
    staging = Path(adapter_dir).with_name(Path(adapter_dir).name + ".candidates") if adapter_dir is not None else None
    values: list[list[float]] = [[] for _ in chosen]
    scores: list[list[float]] = [[] for _ in chosen]
    errors: list[list[str]] = [[] for _ in chosen]
    seconds: list[list[float]] = [[] for _ in chosen]
    params = [adapter_params(modules, c["ranks"]) for c in chosen]

    def choice(i: int) -> float:
        return _summary(scores[i])[0] - lam * params[i] / reference

    service, service_seed = None, None  # one resident model: the retrains of the seed being run, behind the store

    def retrain(i: int, seed: int) -> None:
        nonlocal service, service_seed
        if seed != service_seed:  # successive_halving runs the seeds in order
            if service is not None:
                service.evaluator.close()
            evaluator = _retrainer(config, recipe, seed, max(max(c["ranks"].values()) for c in chosen))
            service, service_seed = EvaluationService(evaluator, store, promotion.retry_failed), seed
        evaluation, scored = _retrain(chosen[i], seed, service, staging)
        if evaluation.error:
            errors[i].append(f"seed {seed}: {evaluation.error}")
        values[i].append(evaluation.metric)
        scores[i].append(scored.metric)
        seconds[i].append(evaluation.seconds)
        bar.update(1)

    stopped = successive_halving(chosen, promotion.seeds, promotion.halving, retrain, choice, scores,
                                 on_stop=lambda i, seed: bar.update(promotion.seeds - seed))
    metric = service.evaluator.data.metric if service is not None else None
    if service is not None:
        service.evaluator.close()
    bar.close()

    table = []
    for i, (candidate, vals, score_vals, errs) in enumerate(zip(chosen, values, scores, errors)):
        mean, std = _summary(vals)
        score_mean, score_std = _summary(score_vals)
        table.append({**candidate, "params": params[i], "values": vals, "mean": mean, "std": std,
                      "score_values": score_vals, "score_mean": score_mean, "score_std": score_std,
                      "choice": choice(i), "errors": errs, "seeds": len(vals), "seconds": seconds[i],
                      "stopped": stopped.get(i)})
    winner, tied = choose(table)
    if adapter_dir is not None and winner is not None and any(winner["ranks"].values()):
        _keep_winner_adapter(Path(adapter_dir), staging, winner, config, recipe)
    return {"recipe": recipe.to_dict(), "seeds": list(range(promotion.seeds)), "split": "validation", "chosen_on": "score",
            "reported_on": "validation", "lam": lam, "metric": metric, "rows": table, "winner": winner and winner["label"],
            "tied": tied}


def _retrain(candidate: dict[str, Any], seed: int, service, staging: Path | None):
    """One candidate's retrain with ``seed`` through the evaluation service (the store answers what it
    holds): (validation, score split); a fresh seed-0 retrain's adapter is staged for the winner."""
    rank_map = service.evaluator.template().replace(candidate["ranks"])
    evaluation, scored = service.evaluate_both(rank_map)
    if staging is not None and seed == 0 and not evaluation.cache_hit and evaluation.ok and any(rank_map.ranks.values()):
        try:
            service.evaluator.save_peft_adapter(staging / _stage_key(candidate["ranks"]), rank_map)
        except OSError as err:  # the retrain stands; the winner's weights are retrained if it wins
            log.warning("could not stage the trained adapter of %s: %s", candidate["label"], err)
    return evaluation, scored


def successive_halving(chosen: list[dict[str, Any]], seeds: int, halving: float | None, retrain, choice, scores: list[list[float]],
                       on_stop=None) -> dict[int, str]:
    """Retrain candidates seed by seed (``retrain(i, seed)`` fills ``scores[i]``), stopping those far behind.

    Every candidate gets seed 0. The rows the table compares (the leader after seed 0, the uniform
    row, the best heuristic: :func:`_references`) get every seed; after each later seed, a candidate
    whose ``choice(i)`` is more than ``halving`` x the seed spread (pooled over those rows) behind
    the leader stops, and the others get that seed too. ``halving`` None: every candidate, every
    seed. Returns why each stopped candidate stopped, by index. Promotion runs it on real retrains;
    a replay of a finished table (every seed known) runs it on lookups, to count what it saves.
    """
    everyone = set(range(len(chosen)))
    keep, stopped = set(everyone), {}  # keep: the rows that get every seed
    for seed in range(seeds):
        for i in sorted(keep) if seed else sorted(everyone):
            retrain(i, seed)
        if halving is None:
            continue
        if seed == 0:
            keep = _references(chosen, [choice(i) for i in everyone])
            continue
        spread = _pooled_std([scores[i] for i in keep])
        lead = max(choice(i) for i in keep)
        for i in sorted(everyone - keep - set(stopped)):
            if lead - choice(i) > halving * spread:
                stopped[i] = (f"stopped after {seed} seed(s): {lead - choice(i):.4f} behind the leader on the score split, "
                              f"more than {halving:g} x the seed spread ({spread:.4f})")
                if on_stop is not None:
                    on_stop(i, seed)
        for i in sorted(everyone - keep - set(stopped)):
            retrain(i, seed)
    return stopped


def replay_halving(table: dict[str, Any], halving: float) -> dict[str, Any]:
    """What :func:`successive_halving` would have retrained and chosen, replayed on a finished
    promotion ``table`` whose rows all got every seed (``--promote-halving 0``): no training.

    Returns the winner it picks and the winner of every seed (``full_winner``), whether they are
    the same map, the validation gap between the two (with the full winner's seed spread), and
    the retrains it needs against every seed's.
    """
    rows, seeds = table["rows"], len(table["seeds"])
    if any(row["seeds"] < seeds for row in rows):
        raise ValueError("a replay needs every row with every seed: promote with --promote-halving 0")
    penalty = [row["choice"] - row["score_mean"] for row in rows]  # lam x cost, the same with any seeds
    scores: list[list[float]] = [[] for _ in rows]

    def choice(i: int) -> float:
        return _summary(scores[i])[0] + penalty[i]

    stopped = successive_halving(rows, seeds, halving, lambda i, seed: scores[i].append(rows[i]["score_values"][seed]), choice, scores)
    partial = [{**row, "score_std": _summary(scores[i])[1], "choice": choice(i)} for i, row in enumerate(rows)]
    winner, full = choose(partial)[0], choose(rows)[0]
    return {"halving": halving, "winner": winner["label"], "full_winner": full["label"], "same": winner["ranks"] == full["ranks"],
            "validation_gap": winner["mean"] - full["mean"], "full_winner_std": full["std"],
            "retrains": sum(map(len, scores)), "full_retrains": len(rows) * seeds, "stopped": [rows[i]["label"] for i in stopped]}


def _references(chosen: list[dict[str, Any]], choices: list[float]) -> set[int]:
    """The rows that get every seed: the leader after the first seed, the uniform row, the best heuristic."""
    finite = [i for i, c in enumerate(choices) if math.isfinite(c)]
    keep = {i for i, c in enumerate(chosen) if "uniform" in c["roles"]}
    if finite:
        keep.add(max(finite, key=lambda i: choices[i]))
    heuristics = [i for i in finite if "heuristic" in chosen[i]["roles"]]
    if heuristics:
        keep.add(max(heuristics, key=lambda i: choices[i]))
    return keep


def _pooled_std(groups: list[list[float]]) -> float:
    """The seed standard deviation pooled over rows (each row's own variance, averaged)."""
    variances = [statistics.variance(v) for v in ([x for x in g if math.isfinite(x)] for g in groups) if len(v) > 1]
    return math.sqrt(statistics.fmean(variances)) if variances else 0.0


def _stage_key(ranks: dict[str, int]) -> str:
    """A staged adapter's folder name: a hash of its map, so no other map's adapter is ever kept for it."""
    return hashlib.sha1(json.dumps(ranks, sort_keys=True).encode()).hexdigest()[:16]


def _retrainer(config, recipe, seed: int, max_rank: int):
    """The finetune evaluator of a promotion retrain: the full recipe, validated on the validation split."""
    from rankgym.evaluators.finetune import FinetuneEvaluator
    from rankgym.evaluators.factory import alpha_policy_of

    return FinetuneEvaluator(config.backbone, config.task, recipe, seed, config.device, max_rank=max_rank or 1, score_on="validation",
                             score_examples=config.score_examples, model_name_or_path=config.model_name_or_path,
                             data_dir=config.data_dir, target_modules=config.target_modules, dtype=config.dtype,
                             metric=config.metric, gradient_checkpointing=config.gradient_checkpointing, **alpha_policy_of(config))


def _keep_winner_adapter(adapter_dir: Path, staging: Path, winner: dict[str, Any], config, recipe) -> None:
    import shutil

    saved = staging / _stage_key(winner["ranks"])
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
