"""Elastic scoring with and without early stopping, side by side on the same adapter and maps.

    python benchmarks/throughput.py                                  # MiniLM x SST-2 at 40 % of uniform-16
    python benchmarks/throughput.py --task stsb --maps 96 --early-stop 0.9 --chunks 8
    python benchmarks/throughput.py --task cola --param-budget 0.025 --finetune-maps 12     # elastic draws within the budget (the default)
    python benchmarks/throughput.py --finetune-maps 24 --pruner sha        # and the finetune evaluator's pruner

One elastic adapter (trained once, or loaded from ``--out``'s cache), two evaluators on it: one reads
the whole score split for every map, the other stops a map's scoring once a paired bootstrap says
at ``--early-stop`` confidence that it cannot reach the best map scored so far
(:class:`rankgym.evaluators.elastic.ElasticEvaluator`). Both score the same ``--maps`` random maps
within the budget (drawn from the rank grid and projected, as random search proposes them), in the
same order. Printed, and written to ``throughput.json`` with a figure (``throughput.png``):

- the fixed cost of an evaluation: seconds of a full elastic evaluation against one plain forward
  of the frozen model over the same examples (every adapter off, nothing merged);
- evaluations per hour of each, their ratio, and the share of examples the early-stopping one read;
- Kendall's tau between the early-stopping values (estimates where stopped) and the full scores, and
  the stops that hid a new best (a stopped map whose full score beats every map before it: the
  error stopping risks, to set against the confidence);
- whether both pick the same best map;
- with `--finetune-maps N`, the same for the finetune evaluator with and without an Optuna pruner
  (`--pruner`, `--rungs`; :mod:`rankgym.evaluators.pruning`) on the first N maps: its evaluations
  per hour, the share of training done, tau, and the prunes that hid a new best.
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
    parser.add_argument("--finetune-maps", type=int, default=0, help="also the finetune evaluator with and without a pruner, on this many of the maps")
    parser.add_argument("--pruner", default="sha", choices=["sha", "hyperband", "median"])
    parser.add_argument("--rungs", type=int, default=4)
    parser.add_argument("--out", default="runs/throughput")
    args = parser.parse_args()

    import ast

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
    result = {"env_id": env_id, "param_budget": args.param_budget, "early_stop": args.early_stop, "chunks": args.chunks, "env": extra,
              "adapter_training_seconds": full.training_seconds, "adapter": full.source, "plain_forward_seconds": forward,
              "elastic": compare(full, early, maps, "elastic: full and early-stopping scores")}
    result["fixed_cost_ratio"] = statistics.median(r["full_seconds"] for r in result["elastic"]["rows"]) / forward
    print(f"{env_id} at param_budget {args.param_budget}: {len(maps)} random maps within the budget, elastic adapter {full.source}")
    print(f"fixed cost: a full elastic evaluation {result['elastic']['full_seconds_per_map']:.2f} s, median "
          f"{result['fixed_cost_ratio']:.2f} x one plain forward of the frozen model over the same examples ({forward:.2f} s)")
    full.close(), early.close()
    print(f"{'scoring':<34} {'evals/hour':>10} {'read/trained':>13} {'stopped':>8} {'hid a best':>11} {'tau':>6} {'same best':>10}")
    line("elastic, full", result["elastic"], full=True)
    line(f"elastic, early stop {args.early_stop} / {args.chunks}", result["elastic"])
    if args.finetune_maps:
        tuned = replace(config, evaluator="finetune")
        plain, pruned = build_evaluator(tuned), build_evaluator(replace(tuned, pruner=args.pruner, pruner_rungs=args.rungs))
        result["finetune"] = compare(plain, pruned, maps[: args.finetune_maps], f"finetune: full and {args.pruner}-pruned")
        result["pruner"], result["rungs"] = args.pruner, args.rungs
        line("finetune, full", result["finetune"], full=True)
        line(f"finetune, {args.pruner} pruner, {args.rungs} rungs", result["finetune"])
    (out / "throughput.json").write_text(json.dumps(result, indent=1) + "\n")
    plot(result, out)


def compare(full, early, maps, desc: str) -> dict:
    """Both evaluators over the same maps in the same order; seconds, shares, tau, and the stops that hid a new best."""
    from scipy.stats import kendalltau
    from tqdm import tqdm

    rows = []
    for rank_map in tqdm(maps, desc=desc, unit="map"):
        a, b = full.evaluate(rank_map), early.evaluate(rank_map)
        rows.append({"ranks": dict(rank_map.ranks), "params": a.params, "full": a.metric, "full_seconds": a.seconds,
                     "early": b.metric, "early_seconds": b.seconds, "fraction": b.fraction})
    best_before = -np.inf  # a stop hid a new best where the map's full score beats every map before it
    for row in rows:
        row["hid_a_best"] = row["fraction"] < 1 and row["full"] > best_before
        best_before = max(best_before, row["full"])
    full_seconds, early_seconds = sum(r["full_seconds"] for r in rows), sum(r["early_seconds"] for r in rows)
    best_full = max(range(len(rows)), key=lambda i: rows[i]["full"])
    best_early = max((i for i, r in enumerate(rows) if r["fraction"] == 1), key=lambda i: rows[i]["early"])
    return {"maps": len(rows), "full_seconds_per_map": full_seconds / len(rows),
            "full_per_hour": 3600 * len(rows) / full_seconds, "early_per_hour": 3600 * len(rows) / early_seconds,
            "speedup": full_seconds / early_seconds, "share": statistics.fmean(r["fraction"] for r in rows),
            "stopped": sum(r["fraction"] < 1 for r in rows), "hid_a_best": sum(r["hid_a_best"] for r in rows),
            "kendall_tau": float(kendalltau([r["early"] for r in rows], [r["full"] for r in rows]).statistic),
            "same_best": best_full == best_early, "best_full": rows[best_full]["full"], "best_early": rows[best_early]["full"], "rows": rows}


def line(label: str, part: dict, full: bool = False) -> None:
    if full:
        print(f"{label:<34} {part['full_per_hour']:>10.0f} {1:>13.0%}")
        return
    print(f"{label:<34} {part['early_per_hour']:>10.0f} {part['share']:>13.0%} {part['stopped']:>8} {part['hid_a_best']:>11} "
          f"{part['kendall_tau']:>6.3f} {'yes' if part['same_best'] else 'no':>10}   ({part['speedup']:.2f} x)")


def plot(result: dict, out: Path) -> None:
    """Per evaluator pair: the stopped value against the full score, and evaluations per hour."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = [name for name in ("elastic", "finetune") if name in result]
    fig, axes = plt.subplots(len(parts), 2, figsize=(11, 4.2 * len(parts)), squeeze=False)
    for (left, right), name in zip(axes, parts):
        part, rows = result[name], result[name]["rows"]
        for stopped, style in ((False, dict(color="tab:blue", label="to the end")), (True, dict(color="tab:red", marker="v", label="stopped"))):
            mine = [r for r in rows if (r["fraction"] < 1) == stopped]
            left.scatter([r["full"] for r in mine], [r["early"] for r in mine], s=18, alpha=0.7, **style)
        low, high = min(min(r["full"], r["early"]) for r in rows), max(r["full"] for r in rows)
        left.plot([low, high], [low, high], "k:", lw=1)
        left.set(xlabel="full score", ylabel="value the agent got", title=f"{name}: tau {part['kendall_tau']:.3f}, {part['stopped']} of {len(rows)} stopped")
        left.legend(fontsize=8)
        right.bar(["full", "stopping"], [part["full_per_hour"], part["early_per_hour"]], color=["tab:blue", "tab:red"])
        right.set(ylabel=f"{name} evaluations per hour", title=f"{part['speedup']:.2f} x, {part['share']:.0%} read / trained")
    fig.suptitle(f"{result['env_id']}, param_budget {result['param_budget']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "throughput.png", dpi=110)


if __name__ == "__main__":
    main()
