"""`rankgym search`, resume, export, retraining and the report, as a user runs them."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from click.testing import CliRunner
from peft import LoraConfig

from rankgym.cli import main
from rankgym.core import ModuleInfo, adapter_params
from rankgym.rankmap import RankMap
from rankgym.report import pareto_front
from rankgym.strategies import preset_ranks, spectral_ranks

ARTEFACTS = ("config.json", "steps.csv", "store.sqlite", "best_rank_map.json", "adapter_config.json", "summary.json")


def search(*args):
    result = CliRunner().invoke(main, ["search", *args])
    assert result.exit_code == 0, result.output
    return result


def steps(run):
    with (Path(run) / "steps.csv").open() as f:
        return list(csv.DictReader(f))


def test_random_search_writes_every_artefact_and_a_loadable_peft_config(tmp_path):
    run = tmp_path / "random"
    result = search("RankSearch-fake-v0", "--agent", "random", "--budget", "40", "--seed", "3", "--out", str(run))
    for name in ARTEFACTS + ("report/report.md", "report/report.html", "report/best_reward.png", "report/metric_vs_params.png"):
        assert (run / name).is_file(), name
    rows = steps(run)
    assert len(rows) == 40 and [int(r["step"]) for r in rows] == list(range(1, 41))
    assert set(rows[0]) >= {"step", "metric", "params", "reward", "seconds", "cache_hit", "rank_map"}
    summary = json.loads((run / "summary.json").read_text())
    assert summary["evaluations"] == 40
    # every logged number, recomputed by the fake evaluator itself from the logged map (seed 3, as the run)
    env = gym.make("RankSearch-fake-v0", seed=3).unwrapped
    template = env.evaluator.template()
    for row in rows:
        rank_map = template.replace(json.loads(row["rank_map"]))
        metric = env.evaluator.evaluate(rank_map).metric
        assert float(row["metric"]) == pytest.approx(metric) and float(row["score"]) == pytest.approx(metric - env.lam * env.cost(rank_map))
    assert summary["best_reward"] == pytest.approx(max(env.evaluator.evaluate(template.replace(json.loads(r["rank_map"]))).metric
                                                       - env.lam * env.cost(template.replace(json.loads(r["rank_map"]))) for r in rows))
    assert "best map:" in result.output and "report.md" in result.output

    best = RankMap.load(run / "best_rank_map.json")
    assert best.provenance["score"] == summary["best_reward"]
    out = tmp_path / "peft"
    exported = CliRunner().invoke(main, ["export", str(run), "--peft", str(out)])
    assert exported.exit_code == 0, exported.output
    config = LoraConfig.from_pretrained(str(out))
    assert RankMap.from_peft_config(config).ranks == {n: r for n, r in best.ranks.items() if r > 0}
    assert config.task_type == "SEQ_CLS" and "config only" in exported.output and "--peft-out" in exported.output


def test_resume_refuses_a_changed_search_and_an_existing_folder(tmp_path):
    run = tmp_path / "r"
    search("RankSearch-fake-v0", "--agent", "random", "--budget", "5", "--out", str(run), "--no-report")
    again = CliRunner().invoke(main, ["search", "RankSearch-fake-v0", "--agent", "random", "--budget", "5", "--out", str(run)])
    assert again.exit_code != 0 and "--resume" in again.output
    bad = CliRunner().invoke(main, ["search", "--resume", str(tmp_path)])
    assert bad.exit_code != 0 and "no config.json" in bad.output


def test_baselines_are_labelled_rows(tmp_path):
    run = tmp_path / "presets"
    search("RankSearch-fake-v0", "--agent", "presets", "--out", str(run), "--no-report")
    assert [r["label"] for r in steps(run)] == ["preset-low", "preset-medium", "preset-high"]
    assert json.loads(steps(run)[2]["rank_map"])["encoder.layer.0.mlp_out"] == 64  # above the env's max_rank


def test_presets_map_gpt2_fused_attention_to_the_same_parameter_budget():
    qkv = ModuleInfo("h.0.attn.c_attn", "qkv", 0, 768, 2304)
    mlp = ModuleInfo("h.0.mlp.c_fc", "mlp_in", 0, 768, 3072)
    assert preset_ranks([qkv, mlp], "medium") == [12, 16]
    separate = [ModuleInfo(f"h.0.attn.{k}", k, 0, 768, 768) for k in ("query", "key", "value")]
    assert adapter_params([qkv], [12]) == adapter_params(separate, preset_ranks(separate, "medium"))  # one fused = three separate


def test_spectral_rule_respects_the_budget_and_keeps_proportions():
    mods = [ModuleInfo(f"m{i}", "query", i, 64, 64, tuple(np.linspace(1, 0.01, 64) ** p)) for i, p in enumerate((1, 4, 12))]
    raw = [m.energy_rank(0.9) for m in mods]
    assert raw[0] > raw[1] > raw[2]
    ranks = spectral_ranks(mods, 0.9, budget_params=8 * 3 * 128)
    assert sum(r * 128 for r in ranks) <= 8 * 3 * 128 and ranks[0] >= ranks[1] >= ranks[2]
    s = np.linalg.svd(np.random.default_rng(0).standard_normal((20, 20)), compute_uv=False)
    assert ModuleInfo("x", "query", 0, 20, 20, tuple(s)).energy_rank(0.9) == int(np.argmax(np.cumsum(s) / s.sum() >= 0.9)) + 1


def test_pareto_front_against_brute_force():
    rng = np.random.default_rng(0)
    params, metric = rng.integers(0, 100, 60), rng.random(60)
    front = set(pareto_front(params, metric).tolist())
    dominated = {i for i in range(60) for j in range(60)
                 if params[j] <= params[i] and metric[j] >= metric[i] and (params[j], metric[j]) != (params[i], metric[i])}
    assert front == set(range(60)) - dominated


TINY_FAST = ["--env", "train_examples=32", "--env", "val_examples=32", "--env", "device='cpu'"]


def test_sigkill_midway_then_resume_gives_the_uninterrupted_run(tmp_path, sst2_dir):
    args = ["RankSearch-tiny-sst2-v0", "--agent", "ppo-steps", "--budget", "24", "--seed", "1", "--no-report", "--no-promote", *TINY_FAST]
    env = dict(os.environ, RANKGYM_DATA_DIR=str(sst2_dir))
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    cmd = [sys.executable, "-m", "rankgym.cli", "search"]
    subprocess.run(cmd + args + ["--out", str(whole)], env=env, check=True, capture_output=True, timeout=600)

    proc = subprocess.Popen(cmd + args + ["--out", str(killed)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    import sqlite3

    while time.time() < deadline:  # kill once about half the evaluations are logged
        time.sleep(0.5)
        if (killed / "store.sqlite").exists():
            try:
                done = sqlite3.connect(killed / "store.sqlite").execute("SELECT COUNT(*) FROM steps WHERE kind='step'").fetchone()[0]
            except sqlite3.OperationalError:
                continue
            if done >= 10:
                break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "summary.json").exists()

    subprocess.run(cmd + ["--resume", str(killed), "--no-report"], env=env, check=True, capture_output=True, timeout=600)
    resumed, reference = steps(killed), steps(whole)
    assert [int(r["step"]) for r in resumed] == list(range(1, len(resumed) + 1))  # no gaps
    keys = [(r["worker"], r["kind"], r["rank_map"]) for r in resumed]
    assert keys == [(r["worker"], r["kind"], r["rank_map"]) for r in reference]  # same evaluations, none repeated
    assert [r["metric"] for r in resumed] == [r["metric"] for r in reference]
    assert json.loads((killed / "best_rank_map.json").read_text())["ranks"] == json.loads((whole / "best_rank_map.json").read_text())["ranks"]


@pytest.mark.slow
def test_ppo_search_on_tiny_with_budget_64_writes_every_artefact(tmp_path, sst2_dir):
    run = tmp_path / "ppo"
    search("RankSearch-tiny-sst2-v0", "--agent", "ppo-steps", "--budget", "64", "--out", str(run), "--env", f"data_dir='{sst2_dir}'",
           "--promote-examples", "1024")
    for name in ARTEFACTS + ("report/report.md",):
        assert (run / name).is_file(), name
    assert any((run / "checkpoints").glob("*.zip"))
    assert json.loads((run / "summary.json").read_text())["evaluations"] == 64


def test_report_compares_runs_and_analyze_writes_spectral_ranks(tmp_path):
    runs = []
    for agent in ("random", "uniform"):
        run = tmp_path / agent
        search("RankSearch-fake-v0", "--agent", agent, "--budget", "12", "--out", str(run), "--no-report")
        runs.append(str(run))
    result = CliRunner().invoke(main, ["report", *runs, "--out", str(tmp_path / "cmp")])
    assert result.exit_code == 0, result.output
    table = (tmp_path / "cmp" / "report.md").read_text()
    assert table.count("| random |") == 1 and table.count("| uniform |") == 1
    assert {p.name for p in (tmp_path / "cmp").glob("*.png")} >= {"best_reward.png", "metric_vs_params.png", "best_map_0.png"}

    analyzed = CliRunner().invoke(main, ["analyze", "--backbone", "tiny", "--out", str(tmp_path / "spectra")])
    assert analyzed.exit_code == 0, analyzed.output
    ranks = json.loads((tmp_path / "spectra" / "spectral_ranks.json").read_text())
    assert len(ranks) == 8 and all(row["r80"] <= row["r90"] <= row["r95"] <= min(row["shape"]) for row in ranks.values())
    assert (tmp_path / "spectra" / "spectra.png").is_file()


def test_envs_lists_every_id():
    result = CliRunner().invoke(main, ["envs"])
    assert result.exit_code == 0
    for env_id in ("RankSearch-gpt2-sst2-v0", "RankSearch-minilm-sst2-v0", "RankSearch-tiny-sst2-v0", "RankSearch-fake-v0",
                   "RankSearch-fake-calibrated-v0", "RankSearch-minilm-sst2-surrogate-v0"):
        assert env_id in result.output


def test_a_resume_that_diverges_from_the_log_stops_naming_the_step(tmp_path):
    import sqlite3

    run = tmp_path / "r"
    search("RankSearch-fake-v0", "--agent", "random", "--budget", "8", "--out", str(run), "--no-report")
    computed = [r["metric"] for r in steps(run)]
    db = sqlite3.connect(run / "store.sqlite")
    db.execute("UPDATE steps SET metric = 0.123 WHERE step = 3")  # as if step 3 had been computed differently
    db.commit()
    stopped = CliRunner().invoke(main, ["search", "--resume", str(run), "--no-report"])
    assert stopped.exit_code != 0
    assert "diverges from the logged one at step 3" in stopped.output and "--allow-divergence" in stopped.output
    branched = CliRunner().invoke(main, ["search", "--resume", str(run), "--no-report", "--allow-divergence"])
    assert branched.exit_code == 0, branched.output
    rows = steps(run)
    assert [r["metric"] for r in rows] == computed and [int(r["step"]) for r in rows[:2]] == [1, 2]


def test_prilora_rises_linearly_with_depth_at_uniform_cost():
    modules = [ModuleInfo(f"layer.{layer}.{k}", k, layer, 64, 64) for layer in range(5) for k in ("query", "value")]
    from rankgym.strategies import prilora_ranks

    ranks = prilora_ranks(modules, 8)
    assert ranks[::2] == [4, 6, 8, 10, 12]  # PRILoRA's 4 -> 12 for a mean of 8, by hand
    assert ranks[::2] == ranks[1::2]
    assert adapter_params(modules, ranks) == adapter_params(modules, [8] * 10)


@pytest.mark.parametrize("agent", ["random", "tpe"])
def test_searches_under_a_budget_start_from_the_free_heuristics(tmp_path, agent):
    run = tmp_path / agent
    search("RankSearch-fake-calibrated-v0", "--agent", agent, "--budget", "6", "--param-budget", "0.3", "--out", str(run),
           "--no-report")
    rows = steps(run)
    labels = [r["label"] for r in rows]
    assert labels[0].startswith("uniform-") and labels[1].startswith("prilora-"), labels  # the fake has no model for EVA
    config = json.loads((run / "config.json").read_text())
    assert config["env_kwargs"]["param_budget"] == 0.3
    ranks = [json.loads(r["rank_map"]) for r in rows[:2]]
    modules = [ModuleInfo(f"encoder.layer.{i // 6}.{k}", k, i // 6, 1536 if k == "mlp_out" else 384, 1536 if k == "mlp_in" else 384)
               for i, k in enumerate(["query", "key", "value", "attn_out", "mlp_in", "mlp_out"] * 6)]
    uniform, prilora = ([r[m.name] for m in modules] for r in ranks)
    # uniform: one rank everywhere; PRILoRA: never lower in a deeper block; both on the env's grid (step 2) and within 30 %
    assert len(set(uniform)) == 1 and all(a <= b for a, b in zip(prilora, prilora[6:]))
    assert all(r % 2 == 0 for r in uniform + prilora)
    reference = sum(16 * (m.in_features + m.out_features) for m in modules)  # uniform max_rank 16, by hand
    assert all(sum(r * (m.in_features + m.out_features) for r, m in zip(map_, modules)) <= 0.3 * reference
               for map_ in (uniform, prilora))


@pytest.mark.parametrize("bad,why", [("max_rank=abc", "should be a whole number"), ("lam=x", "should be a number or None"),
                                     ("seed=1.5", "should be a whole number"), ("rslora=1", "should be True or False")])
def test_a_refused_start_is_one_line_and_leaves_nothing_behind(tmp_path, bad, why):
    run = tmp_path / "run"
    result = CliRunner().invoke(main, ["search", "RankSearch-fake-v0", "--agent", "random", "--budget", "2", "--out", str(run),
                                       "--env", bad, "--no-report"])
    assert result.exit_code == 2 and why in result.output and "Traceback" not in result.output
    assert not run.exists()  # so the corrected command may use the same folder
    search("RankSearch-fake-v0", "--agent", "random", "--budget", "2", "--out", str(run), "--no-report")
    assert (run / "config.json").is_file()


def test_resume_refuses_options_it_would_ignore(tmp_path):
    run = tmp_path / "run"
    search("RankSearch-fake-v0", "--agent", "random", "--budget", "3", "--out", str(run), "--no-report")
    before = (run / "steps.csv").read_text()
    refused = CliRunner().invoke(main, ["search", "--resume", str(run), "--budget", "10"])
    assert refused.exit_code == 2 and "--budget cannot change it" in refused.output and "--env store=" in refused.output
    assert (run / "steps.csv").read_text() == before
    search("--resume", str(run), "--no-report")  # --resume alone, and its own switches, still work


def test_a_shared_store_is_honoured_across_runs(tmp_path, sst2_dir):
    shared = tmp_path / "shared" / "store.sqlite"
    shared.parent.mkdir()
    common = ["RankSearch-tiny-sst2-v0", "--agent", "random", "--budget", "2", "--no-promote", "--no-report",
              "--env", "train_examples=32", "--env", "val_examples=32", "--env", "device='cpu'", "--env", f"data_dir='{sst2_dir}'",
              "--env", f"store='{shared}'"]
    search(*common, "--out", str(tmp_path / "a"))
    search(*common, "--out", str(tmp_path / "b"))
    second = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert second["trained"] == 0 and second["cache_hits"] == second["evaluations"] == 2  # every map came from the shared store
    assert len(steps(tmp_path / "b")) == 2  # and each run keeps its own step log


def test_a_second_search_into_the_same_folder_is_refused_naming_the_holder(tmp_path):
    from rankgym.errors import ConfigError
    from rankgym.run import RunDir

    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", f"from rankgym.run import RunDir; held = RunDir({str(run)!r}, {{}}); print('held', flush=True); "
                                                     "import time; time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ConfigError, match=f"another search \\(pid {holder.pid}\\) is running"):
            RunDir(run, {"agent": "random"})
    finally:
        holder.kill()
        holder.wait()
    RunDir(run, {"agent": "random"}).release()  # free once the holder is gone


def test_the_first_evaluations_predict_the_search_duration_on_this_machine(monkeypatch, capsys):
    import rankgym.harness as run

    clock = iter([100.0, 106.0])  # the bar starts at 100 s; three evaluations later it is 106 s: 2 s each
    monkeypatch.setattr(run.time, "perf_counter", lambda: next(clock))
    progress = run.Progress(64, "test")
    info = {"error": None, "score": 0.5, "metric": 0.5}
    for _ in range(4):
        progress("map", info, 0.5)
    progress.close()
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("expected")]
    assert lines == ["expected: about 2 min more for the other 61 evaluations (2.0 s each so far on this machine; promotion comes after)"]
    assert [run.duration(s) for s in (40, 720, 9000)] == ["40 s", "12 min", "2.5 h"]


def test_every_agent_is_in_one_registry_and_an_unknown_setting_is_refused_not_ignored(tmp_path):
    from rankgym import agents, defaults
    from rankgym.harness import SearchArgs

    for name, (module, _) in agents.AGENTS.items():  # each entry names a script with Args and run
        script = __import__(f"rankgym.agents.{module}", fromlist=["Args", "run"])
        assert issubclass(script.Args, SearchArgs) and callable(script.run), name
    assert SearchArgs().budget == defaults.BUDGET == 64  # the CLI's --budget default is the same constant
    for agent, message in (("random", "it takes none"), ("tpe", "it takes none"), ("growth", "it takes")):
        result = CliRunner().invoke(main, ["search", "RankSearch-fake-v0", "--agent", agent, "--budget", "2", "--set", "temperature=2",
                                           "--out", str(tmp_path / agent), "--no-report"])
        assert result.exit_code == 2 and f"unknown --set temperature for {agent}; {message}" in result.output, result.output
        assert not (tmp_path / agent).exists()
