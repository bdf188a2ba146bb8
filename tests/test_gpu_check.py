"""The GPU check's CPU smoke mode: the same code path as on a GPU, so the check is ready when a GPU is lent."""

import importlib.util
import json
from pathlib import Path

import numpy as np

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def load_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_synthetic_lengths_follow_the_sst2_quantiles(tmp_path):
    check = load_check()
    lengths = np.array(check.sampled_lengths(check.VALIDATION_LENGTHS, 20000, 0))
    measured = np.percentile(lengths, np.arange(0, 101, 5))
    assert np.abs(measured - np.array(check.VALIDATION_LENGTHS)).max() <= 1.0
    folder = check.synthetic_sst2(tmp_path, 40, 10)
    rows = (folder / "sst2" / "validation.tsv").read_text().splitlines()
    assert rows[0] == "sentence\tlabel" and len(rows) == 11 and len((folder / "sst2" / "train.tsv").read_text().splitlines()) == 51


def test_cpu_smoke_writes_every_figure_and_judges_the_targets_on_them(tmp_path):
    out = tmp_path / "check.json"
    load_check().main(["--cpu-smoke", "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["mode"] == "cpu-smoke" and result["device"].startswith("cpu")
    variants = {(r["variant"], r["k"]) for r in result["bench_fp32"]["results"]}
    assert variants == {("peft", 1), ("peft-rankgym-recipe", 1), ("rankgym", 1), ("rankgym-batched", 2)}
    assert {(r["variant"], r["k"]) for r in result["bench_bf16"]["results"]} == {("rankgym", 1), ("rankgym-batched", 2)}
    assert result["bench_bf16"]["dtype"] == "bf16" and all(r["metric"] == r["metric"] for r in result["bench_bf16"]["results"])
    assert [r["dtype"] for r in result["elastic"]] == ["fp32", "bf16"] and all(r["maps"] == 5 for r in result["elastic"])
    rows = {(r["variant"], r["k"]): r for r in result["bench_fp32"]["results"]}
    peft, single = rows[("peft", 1)], rows[("rankgym", 1)]
    targets = result["targets"]
    assert targets["single_vs_peft"]["measured"] == peft["seconds_per_config"] / single["seconds_per_config"]
    assert targets["single_vs_peft"]["met"] == (targets["single_vs_peft"]["measured"] >= 5.0)
    elastic = min(r["seconds_per_map_median"] for r in result["elastic"])
    assert targets["elastic_seconds_per_map"] == {"target": 0.2, "measured": elastic, "met": elastic <= 0.2}
