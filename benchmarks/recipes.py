"""A recipe per task: the full-recipe settings each GLUE task needs, chosen on the score split.

    python benchmarks/recipes.py --tasks cola rte mrpc --epochs 1 3 6 --lr 1e-3 2e-3 --workers 2
    python benchmarks/recipes.py --tasks cola --epochs 4 --lr 1e-3 --seeds 0 1 2 --split validation   # the chosen one, reported
    python benchmarks/recipes.py --tasks rte --epochs 10 --seeds 0 1 --split validation --curve       # the metric against epochs

Every (task, epochs, learning rate, seed) is one fine-tune of uniform rank ``--rank`` on every
default MiniLM module with the full recipe (the whole training pool, batch 32, warm-up and linear
decay over all epochs, the pooler trained with the head), scored on ``--split``: ``score`` (held
out of training, what chooses a recipe) or ``validation`` (what the README reports, only for the
recipe already chosen). It prints one line per fine-tune and, per task, the table of settings with
their score-split means, the metric after each epoch count, and the best setting. ``--curve`` also
scores every fine-tune on the score split (and, with ``--split validation``, on validation) after
each of its epochs (one fine-tune gives the metric against epochs; its learning rate decays over
all of them) and prints each epoch's mean over seeds: the curve that says whether more epochs
would help.
Evaluations go to a store (``--store``), so a killed sweep resumes and a wider one only trains what
is new. Results: README, "A recipe per task".
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Job:
    task: str
    epochs: int
    lr: float
    seed: int
    rank: int
    split: str
    max_length: int | None
    store: str
    threads: int
    curve: bool = False


def run_job(job: Job) -> dict:
    import torch

    from rankgym.evaluators.finetune import FinetuneEvaluator
    from rankgym.recipe import full_recipe
    from rankgym.store import EvaluationStore

    torch.set_num_threads(job.threads)
    recipe = full_recipe(job.task, epochs=job.epochs, lr=job.lr, max_length=job.max_length)
    evaluator = FinetuneEvaluator("minilm", job.task, recipe, job.seed, device="cpu", max_rank=max(job.rank, 1), score_on=job.split)
    store = EvaluationStore(job.store)
    context = store.register(evaluator.identity(), evaluator.modules)
    rank_map = evaluator.template().replace({m.name: job.rank for m in evaluator.modules})
    evaluation = store.get(context, rank_map)
    # a curve is kept beside the store, one file per fine-tune, so a killed sweep resumes with it too
    name = f"{job.task}-r{job.rank}-e{job.epochs}-lr{job.lr:g}-s{job.seed}-{job.split}-{recipe.max_length}.json"
    curve_file = Path(job.store).parent / "curves" / name
    curve = json.loads(curve_file.read_text()) if job.curve and curve_file.is_file() else None
    if job.curve and (evaluation is None or curve is None):
        result, curve = evaluator.evaluate_curve(rank_map)
        evaluation = store.put(context, rank_map, result) if evaluation is None else evaluation
        curve_file.parent.mkdir(exist_ok=True)
        curve_file.write_text(json.dumps(curve) + "\n")
    elif evaluation is None:
        evaluation = store.put(context, rank_map, evaluator.evaluate(rank_map))
    row = dict(task=job.task, epochs=job.epochs, lr=job.lr, seed=job.seed, rank=job.rank, split=job.split, max_length=recipe.max_length,
               metric=evaluation.metric, seconds=evaluation.seconds, metric_name=evaluator.data.metric,
               steps=None if evaluator.last_result is None else evaluator.last_result.steps, curve=curve)
    print(f"  {job.task:5s} epochs {job.epochs:2d} lr {job.lr:.0e} seed {job.seed} {job.split:10s} {evaluator.data.metric} "
          f"{evaluation.metric:.4f}" + (" (stored)" if evaluation.cache_hit else f" {evaluation.seconds:.0f} s"), flush=True)
    evaluator.close()
    store.close()
    return row


def summarise(rows: list[dict]) -> dict:
    """Per task and split: each setting's mean and std over seeds, and the best setting."""
    out: dict = {}
    for (task, split), group in itertools.groupby(sorted(rows, key=lambda r: (r["task"], r["split"])), lambda r: (r["task"], r["split"])):
        group = list(group)
        settings = {}
        for (epochs, lr), cell in itertools.groupby(sorted(group, key=lambda r: (r["epochs"], r["lr"])), lambda r: (r["epochs"], r["lr"])):
            cell = list(cell)
            values = [r["metric"] for r in cell]
            settings[f"epochs={epochs} lr={lr:g}"] = dict(
                epochs=epochs, lr=lr, values=values, mean=statistics.fmean(values),
                std=statistics.stdev(values) if len(values) > 1 else 0.0, seconds=statistics.fmean(r["seconds"] for r in cell))
            if all(r["curve"] for r in cell):
                settings[f"epochs={epochs} lr={lr:g}"]["curve"] = [
                    {"epoch": e + 1, **{k: statistics.fmean(r["curve"][e][k] for r in cell) for k in cell[0]["curve"][e] if k != "epoch"}}
                    for e in range(epochs)]
        best = max(settings, key=lambda k: settings[k]["mean"])
        out[f"{task}/{split}"] = dict(metric=group[0]["metric_name"], settings=settings, best=best)
    return out


def plot_curves(summary: dict, rows: list[dict], path: Path) -> None:
    """Each curve setting's metric against epochs: every seed thin, the summary's mean over seeds thick, a colour per split."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = [(key, entry, cell) for key, entry in summary.items() for cell in entry["settings"].values() if "curve" in cell]
    fig, axes = plt.subplots(1, len(settings), figsize=(6 * len(settings), 4.5), squeeze=False)
    for ax, (key, entry, cell) in zip(axes[0], settings):
        task, split = key.split("/")
        seeds = [r for r in rows if (r["task"], r["split"], r["epochs"], r["lr"]) == (task, split, cell["epochs"], cell["lr"])]
        x = [p["epoch"] for p in cell["curve"]]
        for name, colour in (("score", "tab:blue"), ("validation", "tab:orange")):
            if name not in cell["curve"][0]:
                continue
            for r in seeds:
                ax.plot(x, [p[name] for p in r["curve"]], color=colour, alpha=0.3, lw=1)
            ax.plot(x, [p[name] for p in cell["curve"]], "-o", color=colour, ms=4, label=f"{name} split, mean of {len(seeds)} seeds")
        ax.set_title(f"{task}: {cell['epochs']} epochs at lr {cell['lr']:g}, rank {seeds[0]['rank']} everywhere", fontsize=10)
        ax.set_xlabel("epoch (the learning rate decays over all of them)")
        ax.set_ylabel(entry["metric"])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=["cola", "rte", "mrpc"])
    parser.add_argument("--epochs", nargs="+", type=int, default=[1, 3, 6])
    parser.add_argument("--lr", nargs="+", type=float, default=[1e-3])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--split", choices=["score", "validation"], default="score")
    parser.add_argument("--max-length", type=int, default=None, help="Tokens kept per example (default: the task's recipe).")
    parser.add_argument("--curve", action="store_true",
                        help="Also score after every epoch of every fine-tune (the score split; validation too with --split validation).")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="Threads per worker (default: 2 / workers, at least 1).")
    parser.add_argument("--store", default="runs/recipes/store.sqlite")
    parser.add_argument("--out", default="runs/recipes/summary.json")
    args = parser.parse_args()
    Path(args.store).parent.mkdir(parents=True, exist_ok=True)
    threads = args.threads or max(1, 2 // args.workers)
    jobs = [Job(t, e, lr, s, args.rank, args.split, args.max_length, args.store, threads, args.curve)
            for t in args.tasks for e in args.epochs for lr in args.lr for s in args.seeds]
    print(f"{len(jobs)} fine-tunes on {args.workers} worker(s) x {threads} thread(s)", flush=True)
    if args.workers > 1:
        with ProcessPoolExecutor(args.workers) as pool:
            rows = list(pool.map(run_job, jobs))
    else:
        rows = [run_job(job) for job in jobs]
    summary = summarise(rows)
    for key, entry in summary.items():
        print(f"\n{key} ({entry['metric']}, rank {args.rank} everywhere, MiniLM):")
        for name, cell in entry["settings"].items():
            mark = "  best" if name == entry["best"] else ""
            print(f"  {name:24s} {cell['mean']:.4f} ± {cell['std']:.4f}  ({len(cell['values'])} seeds, {cell['seconds']:.0f} s){mark}")
            for point in cell.get("curve", []):
                print(f"    after epoch {point['epoch']:2d}: " + ", ".join(f"{k} {v:.4f}" for k, v in point.items() if k != "epoch"))
    out = Path(args.out)
    previous = json.loads(out.read_text()) if out.is_file() else {}
    out.write_text(json.dumps({**previous, **summary}, indent=2) + "\n")
    print(f"\nsummary: {out}")
    if args.curve:
        plot_curves(summary, rows, out.with_name("curves.png"))
        print(f"curves: {out.with_name('curves.png')}")


if __name__ == "__main__":
    main()
