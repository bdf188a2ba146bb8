"""Peak memory of a search with each evaluator, against the model alone.

    python benchmarks/memory.py                              # MiniLM x SST-2, every evaluator
    python benchmarks/memory.py --evaluators elastic finetune --out runs/memory

Each case is one ``rankgym search`` in a fresh process, as a user runs it: TPE under a parameter
budget (so it starts from the free heuristics, whose EVA map loads a probe model of its own while
the search's is released), ``--budget`` evaluations at a small training budget, no promotion
(promotion closes the search's model before loading its own, so its peak is one retrain's). The
peak resident memory (``ru_maxrss`` of that process alone, from ``os.wait4``) is printed beside
the peak of a process that only loads the model, so the difference is what the evaluator holds on
top of one model. Peak memory depends on the batch and sequence length, not on how many examples
are trained, which is why small budgets measure it. On a GPU the same figures for device memory
come from ``benchmarks/gpu_check.py``. Writes ``memory.json`` and ``memory.png`` in ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EVALUATORS = ("finetune", "warmstart", "batched", "elastic")
LOAD_ONLY = "from rankgym.backbones import load_backbone; load_backbone({backbone!r}, None, 2, 0)"


def peak(command: list[str]) -> tuple[float, float]:
    """Peak resident MiB and wall seconds of ``command``, run in a process of its own."""
    started = time.time()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{process.stderr.read()[-2000:]}")
    return usage.ru_maxrss / 1024, time.time() - started  # ru_maxrss is in KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="minilm")
    parser.add_argument("--task", default="sst2")
    parser.add_argument("--evaluators", nargs="+", default=list(EVALUATORS), choices=EVALUATORS)
    parser.add_argument("--budget", type=int, default=4, help="evaluations per search (the first three are the free heuristics)")
    parser.add_argument("--examples", type=int, default=256, help="training examples of an evaluation (and of the elastic adapter)")
    parser.add_argument("--out", default="runs/memory")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env_id = f"RankSearch-{args.backbone}-{args.task}-v0"

    rows = {"model alone": peak([sys.executable, "-c", LOAD_ONLY.format(backbone=args.backbone)])}
    print(f"{'case':<22} {'peak MiB':>9} {'over the model':>15} {'seconds':>8}")
    print(f"{'model alone':<22} {rows['model alone'][0]:>9.0f} {'':>15} {rows['model alone'][1]:>8.0f}")
    for evaluator in args.evaluators:
        with tempfile.TemporaryDirectory(prefix="rankgym-memory-") as run:
            rows[evaluator] = peak([
                sys.executable, "-m", "rankgym.cli", "search", env_id, "--agent", "tpe", "--budget", str(args.budget),
                "--param-budget", "0.4", "--no-promote", "--no-report", "--out", f"{run}/search",
                "--env", f"evaluator='{evaluator}'", "--env", f"train_examples={args.examples}",
                "--env", f"elastic_examples={args.examples}", "--env", "device='cpu'"])
        mib, seconds = rows[evaluator]
        print(f"{evaluator:<22} {mib:>9.0f} {mib - rows['model alone'][0]:>+15.0f} {seconds:>8.0f}")

    (out / "memory.json").write_text(json.dumps({"env_id": env_id, "examples": args.examples, "budget": args.budget,
                                                  "peak_mib": {k: v[0] for k, v in rows.items()},
                                                  "seconds": {k: v[1] for k, v in rows.items()}}, indent=1) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3))
    ax.barh(list(rows), [v[0] for v in rows.values()], color=["grey"] + ["C0"] * (len(rows) - 1))
    ax.set_xlabel("peak resident memory (MiB)")
    ax.set_title(f"{env_id}: a search's peak memory per evaluator", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "memory.png", dpi=120)
    print(f"wrote {out / 'memory.json'} and {out / 'memory.png'}")


if __name__ == "__main__":
    main()
