"""rankgym headroom: whether a budget binds, said before a search."""

import json

import numpy as np
from click.testing import CliRunner

from rankgym.cli import main
from rankgym.headroom import summarise


def test_the_sentence_follows_the_gap_against_the_pooled_seed_noise():
    scores = {"uniform-2": [0.80, 0.82], "prilora-2": [0.81, 0.83], "uniform-16": [0.82, 0.84]}
    found = summarise(scores, "uniform-16", [0, 1], 100, 800)
    assert found.best == "prilora-2" and abs(found.gap - 0.01) < 1e-12
    noise = np.sqrt(np.mean([np.var(v, ddof=1) for v in scores.values()]))  # pooled seed std, by numpy
    assert abs(found.noise - noise) < 1e-12 and found.pays is False
    assert "cannot gain more than 1.0 points" in found.sentence() and "unlikely to pay" in found.sentence()
    wide = summarise({"uniform-2": [0.70, 0.71], "uniform-16": [0.83, 0.84]}, "uniform-16", [0, 1], 100, 800)
    assert wide.pays is True and "can gain up to 13.0 points" in wide.sentence()
    one = summarise({"uniform-2": [0.70], "uniform-16": [0.83]}, "uniform-16", [0], 100, 800)
    assert one.noise is None and one.pays is None and "not measured" in one.sentence()


def test_headroom_command_on_tiny(tmp_path, sst2_dir):
    store = tmp_path / "h" / "store.sqlite"
    args = ["headroom", "RankSearch-tiny-sst2-v0", "--param-budget", "0.3", "--seeds", "2", "--store", str(store), "--json",
            "--env", "elastic_examples=64", "--env", "val_examples=64", "--env", "device='cpu'", "--env", f"data_dir='{sst2_dir}'"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found["seeds"] == [0, 1] and found["top"] == "uniform-8"
    assert set(found["scores"]) >= {"uniform-8", found["best"]} and any(k.startswith("eva-") for k in found["scores"])
    assert all(len(v) == 2 for v in found["scores"].values())
    assert found["budget_params"] == int(0.3 * found["reference_params"])
    assert len(list((store.parent / "elastic").glob("*.safetensors"))) == 2  # one adapter per seed, kept for reuse
    refused = CliRunner().invoke(main, ["headroom", "RankSearch-fake-v0", "--param-budget", "0.3"])
    assert refused.exit_code == 2 and "real model" in refused.output


def test_a_budgeted_elastic_search_says_first_whether_the_budget_binds(tmp_path, sst2_dir):
    run = tmp_path / "run"
    args = ["search", "RankSearch-tiny-sst2-v0", "--agent", "random", "--budget", "4", "--param-budget", "0.3", "--out", str(run),
            "--no-promote", "--env", "evaluator='elastic'", "--env", "elastic_examples=64", "--env", "val_examples=64",
            "--env", "device='cpu'", "--env", f"data_dir='{sst2_dir}'"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    headroom = json.loads((run / "summary.json").read_text())["headroom"]
    assert headroom["seeds"] == [0] and headroom["noise"] is None and f"headroom: {headroom['sentence']}" in result.output
    report = (run / "report" / "report.md").read_text()
    assert "## Headroom" in report and headroom["sentence"] in report
    rows = (run / "steps.csv").read_text().splitlines()
    assert len(rows) == 5  # the header and four maps: the heuristics count against the budget
