"""One adapter budget split across several tasks by measured marginal gains (``rankgym allocate``).

For every task, the uniform maps at ranks ``levels`` are scored on the task's score split (by
default with the elastic evaluator: one adapter trained per task, then each level costs a forward
pass); that gives each task's metric as a function of its parameters. The split maximises the
(weighted) mean of the tasks' metrics within the total budget, exactly: every task's map costs
rank x (what one rank of every module costs), the same on one backbone, so the choice is a
knapsack over integer rank sums, solved by dynamic programming (a dozen lines, no library needed).

Compared in the output with the equal split (the largest uniform rank each task can have with
1 / tasks of the budget) and the seed article's heuristic (section 6.2: a complexity factor from the
task's name, 2.0 for "reasoning" or "math", 0.5 for "classification" or "simple", else 1.0, times
a base rank; MLP modules twice the attention ones; scaled by one factor onto the budget).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from rankgym.budget import largest_factor
from rankgym.core import ModuleInfo, adapter_params
from rankgym.errors import ConfigError

LEVELS = (0, 1, 2, 3, 4, 6, 8, 12, 16)


def split_budget(curves: dict[str, dict[int, float]], per_rank: int, budget: int,
                 weights: dict[str, float] | None = None) -> dict[str, int]:
    """The rank per task (from each curve's levels) maximising sum(weight * metric) with sum(rank) * per_rank <= budget."""
    tasks = list(curves)
    weights = weights or {t: 1.0 for t in tasks}
    capacity = budget // per_rank
    if capacity < min(min(c) for c in curves.values()) * len(tasks):
        raise ConfigError(f"a budget of {budget:,} parameters cannot hold every task's smallest level ({per_rank:,} parameters per rank)")
    best = {0: (0.0, [])}  # rank sum -> (value, ranks so far)
    for task in tasks:
        step: dict[int, tuple[float, list[int]]] = {}
        for total, (value, chosen) in best.items():
            for rank, metric in curves[task].items():
                if total + rank <= capacity:
                    candidate = (value + weights[task] * metric, chosen + [rank])
                    if total + rank not in step or candidate[0] > step[total + rank][0]:
                        step[total + rank] = candidate
        best = step
    _, ranks = max(best.values(), key=lambda v: v[0])
    return dict(zip(tasks, ranks))


def equal_split(tasks: Sequence[str], per_rank: int, budget: int) -> dict[str, int]:
    return {t: budget // len(tasks) // per_rank for t in tasks}


def article_maps(tasks: Sequence[str], modules: Sequence[ModuleInfo], budget: int, base_rank: int = 8) -> dict[str, list[int]] | None:
    """The seed article's multi-task manager (section 6.2), scaled by one factor onto the total budget
    (None where its rank 1 on every module of every task is already over it)."""

    def factor(task: str) -> float:
        name = task.lower()
        return 2.0 if ("reasoning" in name or "math" in name) else 0.5 if ("classification" in name or "simple" in name) else 1.0

    def ranks(task: str, scale: float) -> list[int]:
        return [max(1, int(base_rank * (2 if m.kind.startswith("mlp") else 1) * factor(task) * scale)) for m in modules]

    def total(scale: float) -> int:
        return sum(adapter_params(modules, ranks(t, scale)) for t in tasks)

    if total(0.0) > budget:
        return None
    scale = 1.0 if total(1.0) <= budget else largest_factor(lambda f: total(f) <= budget)
    return {t: ranks(t, scale) for t in tasks}


@dataclass
class Allocation:
    tasks: list[str]
    budget: int
    per_rank: int
    curves: dict[str, dict[int, float]]
    split: dict[str, int]
    weights: dict[str, float]
    summary: dict[str, Any] | None = None  # what split.json holds

    def value(self, ranks: dict[str, int]) -> float | None:
        """Weighted mean metric of a uniform split, from the measured curves (None where a rank was not measured)."""
        if any(ranks[t] not in self.curves[t] for t in self.tasks):
            return None
        return sum(self.weights[t] * self.curves[t][ranks[t]] for t in self.tasks) / sum(self.weights.values())


def allocate(tasks: Sequence[str], budget: int, backbone: str = "minilm", weights: Sequence[float] | None = None,
             out: str | Path = "runs/allocate", levels: Sequence[int] = LEVELS, env_kwargs: dict[str, Any] | None = None) -> Allocation:
    """Measure every task's curve, split ``budget``, write one rank map and PEFT config per task and ``split.json``."""
    import gymnasium as gym

    import rankgym  # noqa: F401
    from rankgym.registry import register_task

    if weights is not None and len(weights) != len(tasks):
        raise ConfigError(f"--weights needs one weight per task ({len(tasks)}), got {len(weights)}")
    env_ids = {}  # a GLUE name, or a task folder (TSV/CSV, or JSON Lines for a causal LM) under its folder's name
    for task in tasks:
        folder = Path(task).is_dir()
        name = Path(task).resolve().name if folder else task
        if name in env_ids:
            raise ConfigError(f"two tasks are named {name!r}: give each task folder its own name")
        if folder:
            register_task(task)  # RankSearch-{backbone}-{name}-v0 for every backbone
        env_ids[name] = f"RankSearch-{backbone}-{name}-v0"
    tasks = list(env_ids)
    weight = dict(zip(tasks, weights or [1.0] * len(tasks)))
    out = Path(out)

    def env_of(task: str):
        (out / task).mkdir(parents=True, exist_ok=True)
        kwargs = {"evaluator": "elastic", **(env_kwargs or {}), "store": str(out / task / "store.sqlite"), "rank_step": 1}
        return gym.make(env_ids[task], **kwargs).unwrapped

    first = env_of(tasks[0])
    modules, max_rank = first.modules, first.max_rank
    first.close()
    per_rank = adapter_params(modules, [1] * len(modules))
    equal = equal_split(tasks, per_rank, budget)
    article = article_maps(tasks, modules, budget)
    curves, article_scores, templates = {}, {}, {}
    for task in tasks:
        env = env_of(task)
        usable = sorted({r for r in levels if r <= max_rank} | {min(equal[task], max_rank)})
        extra = [dict(zip(env.names, article[task]))] if article else []
        infos = env.evaluate_maps([{n: r for n in env.names} for r in usable] + extra)
        curves[task] = {r: info["metric"] for r, info in zip(usable, infos) if info["error"] is None}
        article_scores[task] = infos[-1]["metric"] if article else None
        templates[task] = env.template
        env.close()
    split = split_budget(curves, per_rank, budget, weight)
    result = Allocation(list(tasks), budget, per_rank, curves, split, weight)
    for task, rank in split.items():
        answer = templates[task].replace({m.name: rank for m in modules})
        answer.provenance.update(allocate={"budget": budget, "tasks": list(tasks), "rank": rank, "score": curves[task][rank]})
        answer.save(out / task / "rank_map.json")
        if rank:
            answer.to_peft_config().save_pretrained(str(out / task / "peft"))
    total = sum(weight.values())
    result.summary = {
        "budget": budget, "per_rank": per_rank, "weights": weight, "curves": curves,
        "split": {t: {"rank": r, "params": r * per_rank, "score": curves[t][r]} for t, r in split.items()},
        "value": result.value(split),
        "equal_split": {"split": {t: {"rank": r, "params": r * per_rank, "score": curves[t].get(min(r, max_rank))} for t, r in equal.items()},
                        "value": result.value({t: min(r, max_rank) for t, r in equal.items()})},
        "article": {"split": {t: {"params": adapter_params(modules, article[t]) if article else None, "score": article_scores[t]}
                              for t in tasks},
                    "value": sum(weight[t] * article_scores[t] for t in tasks) / total if article else None},
    }
    (out / "split.json").write_text(json.dumps(result.summary, indent=2) + "\n")
    return result
