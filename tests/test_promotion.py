"""Promotion: a search's answer is its top maps retrained with seeds and validated, as `rankgym finetune` would."""

import json
import shutil
import sqlite3
import statistics

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from peft import PeftModel
from safetensors.torch import load_file

from rankgym.backbones import load_backbone
from rankgym.cli import main
from rankgym.evaluators.finetune import FinetuneEvaluator
from rankgym.promotion import candidates, choose
from rankgym.rankmap import RankMap
from rankgym.recipe import Recipe

TINY_FAST = ["--env", "train_examples=32", "--env", "val_examples=32", "--env", "device='cpu'"]


def finetune_metric(tmp_path, sst2_dir, seed, *args):
    result = CliRunner().invoke(main, ["finetune", "--backbone", "tiny", *args, "--train-examples", "64", "--seed", str(seed),
                                       "--device", "cpu", "--data-dir", str(sst2_dir), "--out", str(tmp_path / f"ft{seed}{args[0]}"),
                                       "--peft-out", str(tmp_path / f"peft{seed}{args[0]}"), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1])["metric"]


def stored(run):
    return sqlite3.connect(run / "store.sqlite").execute("SELECT COUNT(*) FROM evaluations").fetchone()[0]


def test_promotion_retrains_with_the_seeds_and_matches_rankgym_finetune(tmp_path, sst2_dir):
    run = tmp_path / "run"
    args = ["search", "RankSearch-tiny-sst2-v0", "--agent", "random", "--budget", "3", "--seed", "2", "--out", str(run),
            "--promote", "1", "--promote-seeds", "2", "--promote-examples", "64", "--no-report", *TINY_FAST,
            "--env", f"data_dir='{sst2_dir}'"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "promoted (2 seeds x 64 examples" in result.output and "winner" in result.output
    summary = json.loads((run / "summary.json").read_text())
    table = summary["promotion"]
    assert table["seeds"] == [0, 1] and table["split"] == "validation" and table["recipe"]["train_examples"] == 64
    labels = [row["label"] for row in table["rows"]]
    assert labels == ["search #1", "uniform-4"]  # the best search score, then the map every episode starts from
    for row in table["rows"]:
        assert len(row["values"]) == 2 and len(row["seconds"]) == 2 and all(s > 0 for s in row["seconds"])
        assert row["mean"] == pytest.approx(np.mean(row["values"])) and row["std"] == pytest.approx(np.std(row["values"], ddof=1))

    # every promoted number is what `rankgym finetune` gives for that map and seed
    winner = next(row for row in table["rows"] if row["label"] == table["winner"])
    best = RankMap.load(run / "best_rank_map.json")
    assert best.ranks == winner["ranks"] and best.provenance["promoted_mean"] == winner["mean"]
    for seed in (0, 1):
        assert finetune_metric(tmp_path, sst2_dir, seed, "--rank-map", str(run / "best_rank_map.json")) == winner["values"][seed]
    uniform = table["rows"][1]
    assert finetune_metric(tmp_path, sst2_dir, 1, "--uniform", "4") == uniform["values"][1]
    # chosen on the score split: each retrain's score there is what a finetune evaluator scoring that split gives
    assert table["chosen_on"] == "score" and table["reported_on"] == "validation"
    evaluator = FinetuneEvaluator("tiny", "sst2", Recipe(train_examples=64), seed=1, device="cpu", max_rank=8, score_on="score",
                                  data_dir=str(sst2_dir))
    assert evaluator.evaluate(evaluator.template().replace(uniform["ranks"])).metric == uniform["score_values"][1]
    assert winner is choose(table["rows"])[0] or winner == choose(table["rows"])[0]

    # the run keeps the winner's trained adapter: exactly what `rankgym finetune --seed 0 --peft-out` writes, and PEFT loads it
    adapter = run / "peft_adapter"
    assert summary["adapter"] == str(adapter) and not (run / "peft_adapter.candidates").exists()
    ours, theirs = load_file(adapter / "adapter_model.safetensors"), load_file(tmp_path / "peft0--rank-map" / "adapter_model.safetensors")
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    base, _ = load_backbone("tiny", None, 2, 0)
    model = PeftModel.from_pretrained(base, str(adapter))
    assert RankMap.from_peft_config(model.peft_config["default"]).ranks == {n: r for n, r in best.ranks.items() if r > 0}
    exported = CliRunner().invoke(main, ["export", str(run), "--peft", str(tmp_path / "exported")])
    assert exported.exit_code == 0 and "trained adapter" in exported.output
    assert (tmp_path / "exported" / "adapter_model.safetensors").read_bytes() == (adapter / "adapter_model.safetensors").read_bytes()

    # resuming the finished run promotes again from the store: nothing is retrained
    before = stored(run)
    resumed = CliRunner().invoke(main, ["search", "--resume", str(run)])
    assert resumed.exit_code == 0, resumed.output
    assert stored(run) == before
    assert json.loads((run / "summary.json").read_text())["promotion"]["rows"] == table["rows"]
    report = (run / "report" / "report.md").read_text()
    assert "## Promotion of random" in report and f"{winner['mean']:.4f} ± {winner['std']:.4f}" in report

    # where the store answers the winner's retrain and its adapter is gone, it is trained once more: the same adapter
    shutil.rmtree(adapter)
    resumed = CliRunner().invoke(main, ["search", "--resume", str(run), "--no-report"])
    assert resumed.exit_code == 0, resumed.output
    again = load_file(adapter / "adapter_model.safetensors")
    assert stored(run) == before and all(torch.equal(again[k], ours[k]) for k in ours)


def test_no_promote_answers_with_the_best_search_score(tmp_path, sst2_dir):
    run = tmp_path / "run"
    result = CliRunner().invoke(main, ["search", "RankSearch-tiny-sst2-v0", "--agent", "random", "--budget", "2", "--out", str(run),
                                       "--no-promote", "--no-report", *TINY_FAST, "--env", f"data_dir='{sst2_dir}'"])
    assert result.exit_code == 0, result.output
    summary = json.loads((run / "summary.json").read_text())
    assert summary["promotion"] is None and "promoted" not in result.output
    assert RankMap.load(run / "best_rank_map.json").provenance["score"] == summary["best_reward"]


def test_candidates_are_distinct_best_first_and_end_with_the_initial_map():
    def row(score, ranks, label=None):
        return {"score": score, "metric": score, "error": None, "label": label, "rank_map": json.dumps(ranks)}

    rows = [row(0.5, {"a": 2, "b": 2}), row(0.9, {"a": 4, "b": 0}), row(0.9, {"b": 0, "a": 4}), row(0.7, {"a": 8, "b": 8}, "uniform-8"),
            {**row(0.99, {"a": 16, "b": 16}), "error": "NaN"}]
    chosen = candidates(rows, 2, {"a": 2, "b": 2})
    assert [c["label"] for c in chosen] == ["search #1", "uniform-8", "uniform-2"]
    assert chosen[-1]["search_score"] == 0.5  # the initial map's own search score, found in the log
    again = candidates(rows, 3, {"a": 2, "b": 2})
    assert [c["label"] for c in again] == ["search #1", "uniform-8", "search #3 (= uniform-2)"]
    labelled = candidates([row(0.9, {"a": 2, "b": 2}, "uniform-2")], 1, {"a": 2, "b": 2}, [("prilora-2", {"a": 2, "b": 2})])
    assert [(c["label"], c["roles"]) for c in labelled] == [("uniform-2 (= prilora-2)", ["search", "uniform", "heuristic"])]
    stopped = candidates([{**row(0.95, {"a": 1, "b": 0}), "fraction": 0.25}, row(0.6, {"a": 0, "b": 1})], 1, {"a": 2, "b": 2})
    assert [c["label"] for c in stopped] == ["search #1", "uniform-2"] and stopped[0]["ranks"] == {"a": 0, "b": 1}  # an estimate is no score


def promoted_row(label, params, score_values, values):
    std = statistics.stdev(score_values) if len(score_values) > 1 else 0.0
    return {"label": label, "params": params, "score_values": score_values, "score_mean": statistics.fmean(score_values),
            "score_std": std, "choice": statistics.fmean(score_values), "values": values}


def test_the_winner_is_chosen_on_the_score_split_not_on_validation():
    # the two splits disagree: b leads on validation by far, a on the score split beyond both spreads
    a = promoted_row("a", 100, [0.80, 0.81, 0.82], [0.60, 0.61, 0.62])
    b = promoted_row("b", 200, [0.70, 0.71, 0.72], [0.90, 0.91, 0.92])
    assert choose([a, b]) == (a, [])
    # the choice never reads the validation numbers: without them it is the same
    assert choose([{k: v for k, v in row.items() if k != "values"} for row in (a, b)])[0]["label"] == "a"


def test_leaders_within_the_seed_spread_tie_and_the_smaller_map_wins():
    big = promoted_row("big", 500, [0.830, 0.840, 0.850], [0.84, 0.84, 0.84])       # mean 0.840, std 0.010
    small = promoted_row("small", 100, [0.825, 0.832, 0.839], [0.83, 0.83, 0.83])   # 0.008 behind: inside the spread
    far = promoted_row("far", 50, [0.700, 0.705, 0.710], [0.70, 0.70, 0.70])         # far behind
    winner, tied = choose([big, small, far])
    assert winner["label"] == "small" and tied == ["big"]
    # one seed each: no spread, so only an exact tie ties, and the better map wins
    one = [promoted_row("x", 500, [0.84], [0.8]), promoted_row("y", 100, [0.83], [0.9])]
    assert choose(one) == (one[0], [])
    assert choose([promoted_row("nan", 10, [float("nan")], [0.9])]) == (None, [])


def test_promotion_under_a_budget_retrains_the_free_heuristics_once(tmp_path, sst2_dir):
    run = tmp_path / "run"
    args = ["search", "RankSearch-tiny-sst2-v0", "--agent", "random", "--budget", "2", "--out", str(run), "--param-budget", "0.5",
            "--promote", "1", "--promote-seeds", "1", "--promote-examples", "32", "--no-report", *TINY_FAST,
            "--env", f"data_dir='{sst2_dir}'"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    table = json.loads((run / "summary.json").read_text())["promotion"]
    names = set()  # a row's own name and the names of the maps it equals ("search #1 (= uniform-4)")
    for row in table["rows"]:
        first, *same = row["label"].split(" (= ")
        names |= {first, *(n.rstrip(")") for n in same)}
    assert any(n.startswith("prilora-") for n in names) and any(n.startswith("eva-") for n in names), names
    reference = 8 * sum(i + o for i, o in [(64, 192), (64, 64), (64, 256), (256, 64)] * 2)  # uniform max_rank 8 on tiny's 8 modules
    assert all(row["params"] <= 0.5 * reference for row in table["rows"])
    cache = json.loads((run / "heuristics.json").read_text())
    assert len(cache) == 1  # one budget, one entry
    [(key, maps)] = cache.items()
    assert {label for label, _ in maps} <= names
    # a resume finds the maps in the cache: the cached entry is what it uses, untouched
    before = (run / "heuristics.json").read_bytes()
    assert CliRunner().invoke(main, ["search", "--resume", str(run), "--no-report"]).exit_code == 0
    assert (run / "heuristics.json").read_bytes() == before


def test_successive_halving_stops_candidates_far_behind_and_completes_the_rows_it_compares(tmp_path, sst2_dir):
    run = tmp_path / "run"
    args = ["search", "RankSearch-tiny-sst2-v0", "--agent", "random", "--budget", "4", "--seed", "1", "--out", str(run),
            "--promote", "3", "--promote-seeds", "3", "--promote-examples", "32", "--promote-halving", "0.000001", "--no-report",
            *TINY_FAST, "--env", f"data_dir='{sst2_dir}'"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    table = json.loads((run / "summary.json").read_text())["promotion"]
    rows = {row["label"]: row for row in table["rows"]}
    winner, uniform = rows[table["winner"]], next(row for row in table["rows"] if "uniform" in row["roles"])
    assert len(winner["values"]) == len(uniform["values"]) == 3 and winner["stopped"] is None and uniform["stopped"] is None
    stopped = [row for row in table["rows"] if row["stopped"]]
    assert stopped, "with a margin of a millionth of a spread, some candidate falls behind"
    for row in stopped:
        assert len(row["values"]) == len(row["score_values"]) == row["seeds"] < 3 and "behind the leader" in row["stopped"]
    # every retrain is stored once per split: what ran is what the table shows
    retrains = sum(row["seeds"] for row in table["rows"])
    assert stored(run) - 4 == 2 * retrains  # the search's 4 evaluations, then two splits per retrain


def test_a_failed_retrain_is_replayed_on_resume_and_retrained_with_retry_failed(tmp_path, sst2_dir, monkeypatch):
    run = tmp_path / "run"
    args = ["search", "RankSearch-tiny-sst2-v0", "--agent", "random", "--budget", "2", "--out", str(run), "--promote", "1",
            "--promote-seeds", "1", "--promote-examples", "32", "--no-report", *TINY_FAST, "--env", f"data_dir='{sst2_dir}'"]
    real = FinetuneEvaluator.evaluate_both
    calls = []

    def out_of_memory(self, rank_map):
        calls.append(rank_map.key())
        raise MemoryError("out of memory in a retrain")

    monkeypatch.setattr(FinetuneEvaluator, "evaluate_both", out_of_memory)
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    rows = json.loads((run / "summary.json").read_text())["promotion"]["rows"]
    assert rows and all(row["errors"] == ["seed 0: MemoryError: out of memory in a retrain"] for row in rows)
    failed = len(calls)
    assert failed == len(rows)

    (run / "summary.json").unlink()  # a resume of a run that died in its promotion
    assert CliRunner().invoke(main, ["search", "--resume", str(run), "--no-report"]).exit_code == 0
    assert len(calls) == failed  # the stored failures are replayed, nothing retrained

    (run / "summary.json").unlink()
    monkeypatch.setattr(FinetuneEvaluator, "evaluate_both", real)
    result = CliRunner().invoke(main, ["search", "--resume", str(run), "--retry-failed", "--no-report"])
    assert result.exit_code == 0, result.output
    rows = json.loads((run / "summary.json").read_text())["promotion"]["rows"]
    assert all(not row["errors"] and np.isfinite(row["mean"]) for row in rows)


def test_a_halving_replay_on_a_full_table_stops_the_row_far_behind_and_keeps_the_winner():
    from rankgym.promotion import replay_halving

    def row(label, roles, params, scores, values):
        mean, std = statistics.fmean(scores), statistics.stdev(scores)
        return {"label": label, "roles": roles, "ranks": {"a": params}, "params": params, "score_values": scores, "score_mean": mean,
                "score_std": std, "choice": mean, "values": values, "mean": statistics.fmean(values), "std": statistics.stdev(values),
                "seeds": 3}

    rows = [row("search #1", ["search"], 3, [0.80, 0.81, 0.80], [0.79, 0.80, 0.80]),  # the leader
            row("search #2", ["search"], 2, [0.60, 0.61, 0.60], [0.60, 0.61, 0.61]),  # far behind at every seed
            row("uniform-1", ["uniform"], 4, [0.70, 0.71, 0.70], [0.70, 0.70, 0.71]),
            row("eva-1", ["heuristic"], 4, [0.75, 0.74, 0.75], [0.74, 0.74, 0.75])]
    replay = replay_halving({"seeds": [0, 1, 2], "rows": rows}, halving=3.0)
    # seed 0: 4 retrains; the leader, uniform and the best heuristic (eva) get seeds 1 and 2 (6); search #2 is
    # 0.2 behind the leader after seed 1 with a pooled spread of about 0.006: it stops after one seed
    assert replay["stopped"] == ["search #2"] and replay["retrains"] == 4 + 6 and replay["full_retrains"] == 12
    assert replay["winner"] == replay["full_winner"] == "search #1" and replay["same"] and replay["validation_gap"] == 0
    with pytest.raises(ValueError, match="--promote-halving 0"):
        replay_halving({"seeds": [0, 1, 2], "rows": [{**rows[0], "seeds": 1}]}, halving=3.0)
