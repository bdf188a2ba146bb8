"""Elastic scoring with and without early stopping, side by side on the same adapter and maps.

    python benchmarks/throughput.py                                  # MiniLM x SST-2 at 40 % of uniform-16
    python benchmarks/throughput.py --task stsb --maps 96 --early-stop 0.9 --chunks 8
    python benchmarks/throughput.py --task cola --param-budget 0.025 --env "elastic_draws='budget'"

One elastic adapter (trained once, or loaded from ``--out``'s cache), two evaluators on it: one reads
the whole score split for every map, the other stops a map's scoring once a paired bootstrap says
at ``--early-stop`` confidence that it cannot reach the best map scored so far
(:class:`rankgym.evaluators.elastic.ElasticEvaluator`). Both score the same ``--maps`` random maps
within the budget (drawn from the rank grid and projected, as random search proposes them), in the
same order. Printed, and written to ``throughput.json`` with a figure (``throughput.png``):

- the fixed cost of an evaluation: seconds of a full elastic evaluation against one plain forward
  of the frozen model over the same examples (every adapter off, nothing merged);
- evaluations per hour of each, their ratio, and the share of examples the early-stopping one read;
- Kendall's tau between the early-stopping values (bounds where stopped) and the full scores, and
  the maps stopped although their full score was at least the reference they were stopped against
  (the stopping error, to set against the confidence);
- whether both pick the same best map.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path

import numpy as np


def random_maps(env, count: int, seed: int) -> list[list[int]]:
    from rankgym.budget import rank_grid

    rng = np.random.default_rng(seed)
    grid = rank_grid(env.min_rank, env.max_rank, env.rank_step)
    return [env.within_budget(rng.choice(grid, size=len(env.names)))[0].tolist() for _ in range(count)]


def plain_forward_seconds(evaluator, repeats: int = 3) -> float:
    """Median seconds of one forward of the frozen model over the score split (every adapter off, none merged)."""
    from rankgym.training import evaluate

    evaluator.ensure_trained()
    evaluator.slice_to(evaluator.template())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        evaluate(evaluator.model, evaluator.val_set, evaluator.tokenizer.pad_token_id, evaluator.recipe.eval_batch_size,
                 evaluator.recipe.val_examples)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="minilm")
    parser.add_argument("--task", default="sst2")
    parser.add_argument("--param-budget", type=float, default=0.4)
    parser.add_argument("--maps", type=int, default=64)
    parser.add_argument("--early-stop", type=float, default=0.95, help="the confidence a stop needs")
    parser.add_argument("--chunks", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0, help="the adapter's seed and the maps' draw")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="more env options (Python literals)")
    parser.add_argument("--out", default="runs/throughput")
    args = parser.parse_args()

    import ast

    from scipy.stats import kendalltau
    from tqdm import tqdm

    import rankgym  # noqa: F401  (registers the ids)
    from rankgym.evaluators.factory import build_evaluator
    from rankgym.registry import EnvConfig, build_env

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    extra = {k: ast.literal_eval(v) for k, v in (kv.split("=", 1) for kv in args.env)}
    env_id = f"RankSearch-{args.backbone}-{args.task}-v0"
    config = EnvConfig.for_env(env_id, {"evaluator": "elastic", "param_budget": args.param_budget, "rank_step": 1, "seed": args.seed,
                                        "store": str(out / "store.sqlite"), **extra})
    full = build_evaluator(config)
    early = build_evaluator(replace(config, early_stop=args.early_stop, early_stop_chunks=args.chunks))
    env = build_env(config, full, store=":memory:")
    maps = [full.template().replace(dict(zip(env.names, ranks))) for ranks in random_maps(env, args.maps, args.seed)]

    forward = plain_forward_seconds(full)
    early.ensure_trained()  # loads the adapter the first one trained or loaded (the same file)
    rows = []
    for rank_map in tqdm(maps, desc="full and early-stopping scores", unit="map"):
        a, b = full.evaluate(rank_map), early.evaluate(rank_map)
        rows.append({"ranks": dict(rank_map.ranks), "params": a.params, "full": a.metric, "full_seconds": a.seconds,
                     "early": b.metric, "early_seconds": b.seconds, "fraction": b.fraction})
    # what each stopped map was compared with: the best full score before it (stop_top = 1)
    best_before = -np.inf
    for row in rows:
        row["reference"] = best_before if row["fraction"] < 1 else None
        if row["fraction"] == 1:
            best_before = max(best_before, row["early"])
    full_seconds, early_seconds = sum(r["full_seconds"] for r in rows), sum(r["early_seconds"] for r in rows)
    stopped = [r for r in rows if r["fraction"] < 1]
    wrong = [r for r in stopped if r["full"] >= r["reference"]]
    best_full = max(range(len(rows)), key=lambda i: rows[i]["full"])
    best_early = max((i for i, r in enumerate(rows) if r["fraction"] == 1), key=lambda i: rows[i]["early"])
    result = {
        "env_id": env_id, "param_budget": args.param_budget, "maps": len(rows), "early_stop": args.early_stop, "chunks": args.chunks,
        "env": extra, "adapter_training_seconds": full.training_seconds, "adapter": full.source,
        "plain_forward_seconds": forward, "full_seconds_per_map": full_seconds / len(rows),
        "fixed_cost_ratio": statistics.median(r["full_seconds"] for r in rows) / forward,
        "full_per_hour": 3600 * len(rows) / full_seconds, "early_per_hour": 3600 * len(rows) / early_seconds,
        "speedup": full_seconds / early_seconds, "examples_read": statistics.fmean(r["fraction"] for r in rows),
        "stopped": len(stopped), "stopped_wrongly": len(wrong),
        "kendall_tau": float(kendalltau([r["early"] for r in rows], [r["full"] for r in rows]).statistic),
        "same_best": best_full == best_early, "best_full": rows[best_full]["full"], "best_early": rows[best_early]["full"],
        "rows": rows,
    }
    (out / "throughput.json").write_text(json.dumps(result, indent=1) + "\n")

    print(f"{env_id} at param_budget {args.param_budget}: {len(rows)} random maps within the budget, adapter {full.source}")
    print(f"fixed cost: a full elastic evaluation {result['full_seconds_per_map']:.2f} s (median {result['fixed_cost_ratio']:.2f} x "
          f"one plain forward of the frozen model, {forward:.2f} s)")
    print(f"{'scoring':<26} {'evals/hour':>10} {'examples read':>14}")
    print(f"{'full':<26} {result['full_per_hour']:>10.0f} {1:>14.0%}")
    print(f"{f'early stop {args.early_stop} / {args.chunks}':<26} {result['early_per_hour']:>10.0f} {result['examples_read']:>14.0%}")
    print(f"speed-up {result['speedup']:.2f} x; stopped {len(stopped)} of {len(rows)} maps, {len(wrong)} of them wrongly "
          f"(full score >= the reference they were stopped against); Kendall tau early vs full {result['kendall_tau']:.3f}; "
          f"best map {'the same' if result['same_best'] else 'differs'} ({result['best_early']:.4f} vs {result['best_full']:.4f})")
    plot(result, out)


def plot(result: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for stopped, style in ((False, dict(color="tab:blue", label="read to the end")), (True, dict(color="tab:red", marker="v", label="stopped: the bound"))):
        mine = [r for r in rows if (r["fraction"] < 1) == stopped]
        left.scatter([r["full"] for r in mine], [r["early"] for r in mine], s=18, alpha=0.7, **style)
    low, high = min(min(r["full"], r["early"]) for r in rows), max(r["full"] for r in rows)
    left.plot([low, high], [low, high], "k:", lw=1)
    left.set(xlabel="full score", ylabel="early-stopping value", title=f"tau {result['kendall_tau']:.3f}, {result['stopped']} of {len(rows)} stopped")
    left.legend(fontsize=8)
    right.bar(["full", f"early stop {result['early_stop']}"], [result["full_per_hour"], result["early_per_hour"]], color=["tab:blue", "tab:red"])
    right.set(ylabel="elastic evaluations per hour", title=f"{result['speedup']:.2f} x, {result['examples_read']:.0%} of the examples read")
    fig.suptitle(f"{result['env_id']}, param_budget {result['param_budget']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "throughput.png", dpi=110)


if __name__ == "__main__":
    main()
