"""Real-score tables: many maps of one task scored by its elastic adapter, and the surrogate fitted to them.

    python benchmarks/score_tables.py --tasks cola --param-budget 16588 --maps 500
    python benchmarks/score_tables.py --tasks cola --param-budget 16588 --maps 500 --ship   # into rankgym/data

For each task, on one store (``--out/<task>/store.sqlite``; a killed run resumes where it stopped):
a random search of ``--maps`` elastic evaluations within the budget, which scores the free
heuristics first (uniform at the budget, PRILoRA, EVA) and then random maps projected onto the
budget, and the presets (``--agent presets``) on the same adapter; then ``rankgym surrogate``
writes the table and prints its held-out error (grouped 5-fold). ``--ship`` copies the table to
``rankgym/data/surrogate-minilm-<task>-elastic.json`` with the budget it was recorded at, which is
what ``RankSearch-minilm-<task>-surrogate-v0`` reads (:data:`rankgym.registry.SURROGATE_BUDGETS`
must name that budget). The elastic adapter is the one ``benchmarks/strategies.py`` and
``rankgym headroom`` train (seed 0, ranks 0..16 in steps of 1): copy its ``elastic/`` folder into
``--out/<task>/`` to reuse it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str) -> str:
    return subprocess.run([sys.executable, "-m", "rankgym.cli", *args], check=True, stdout=subprocess.PIPE, text=True).stdout


def search(agent: str, task: str, budget: float, maps: int, folder: Path, draws: str) -> None:
    out = folder / agent
    if (out / "summary.json").is_file():
        return
    if (out / "config.json").is_file():
        cli("search", "--resume", str(out), "--no-report")
        return
    cli("search", f"RankSearch-minilm-{task}-v0", "--agent", agent, "--budget", str(maps), "--seed", "0", "--no-promote", "--no-report",
        "--out", str(out), "--param-budget", str(budget), "--env", "rank_step=1", "--env", "evaluator='elastic'",
        "--env", f"store='{folder / 'store.sqlite'}'", "--env", f"elastic_draws='{draws}'")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["cola"])
    parser.add_argument("--param-budget", type=float, default=16588, help="a parameter count, or a fraction of uniform rank 16")
    parser.add_argument("--maps", type=int, default=500, help="evaluations of the random search (the heuristics included)")
    parser.add_argument("--elastic-draws", default="budget", choices=["grid", "budget"],
                        help="the elastic adapter's training draws (the env's default, budget; CoLA's shipped table was recorded with grid)")
    parser.add_argument("--out", default="runs/score-tables")
    parser.add_argument("--ship", action="store_true", help="copy each table into rankgym/data")
    args = parser.parse_args()
    budget = int(args.param_budget) if args.param_budget > 1 else args.param_budget
    for task in args.tasks:
        folder = Path(args.out) / task
        folder.mkdir(parents=True, exist_ok=True)
        started = time.time()
        search("random", task, budget, args.maps, folder, args.elastic_draws)
        search("presets", task, budget, args.maps, folder, args.elastic_draws)
        table = folder / f"surrogate-minilm-{task}-elastic.json"
        print(cli("surrogate", str(folder / "store.sqlite"), "--out", str(table), "--evaluator", "elastic").splitlines()[0])
        print(f"{task}: {time.time() - started:.0f} s")
        if args.ship:
            recorded = json.loads(table.read_text())
            recorded["param_budget"] = budget  # the maps cover this budget only: the env id defaults to it
            recorded["made_by"] = (f"benchmarks/score_tables.py --tasks {task} --param-budget {budget} --maps {args.maps} "
                                   f"--elastic-draws {args.elastic_draws}")
            (ROOT / "rankgym" / "data" / table.name).write_text(json.dumps(recorded, separators=(",", ":")) + "\n")
            print(f"shipped as rankgym/data/{table.name}")


if __name__ == "__main__":
    main()
