"""The ``rankgym`` command. Each subcommand imports what it needs (models, agents) only when it runs."""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from pathlib import Path

import click

from rankgym import __version__, defaults
from rankgym.agents import AGENTS
from rankgym.recipe import ALPHA_POLICY, Recipe, full_recipe


class UserError(click.ClickException):
    """A one-line error with exit code 2, as for a bad command line: the input must change, not rankgym."""

    exit_code = 2


def fail(message: str) -> None:
    """Exit with a one-line error (no traceback): what is wrong and how to fix it."""
    raise UserError(message)


@contextmanager
def user_errors():
    """Turn rankgym's user-fixable errors into one-line CLI errors."""
    from rankgym.errors import RankgymError

    try:
        yield
    except RankgymError as err:
        raise UserError(" ".join(str(err).split("\n"))) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="rankgym")
def main() -> None:
    """Choose LoRA ranks per layer by search: fine-tune, search, export, report."""


@main.command()
@click.option("--backbone", default="minilm", show_default=True, help="gpt2, distilgpt2, minilm, tiny, or auto (your model).")
@click.option("--task", default="sst2", show_default=True, help="sst2, cola, mrpc, rte, stsb, or a folder with train/validation TSV or CSV.")
@click.option("--rank-map", "rank_map_path", type=click.Path(), help="Rank map JSON (e.g. a search's best_rank_map.json), or a PEFT LoRA adapter_config.json or its folder.")
@click.option("--uniform", type=int, help="Give every default module this rank instead of a rank map.")
@click.option("--alpha", type=float, default=ALPHA_POLICY["alpha"], show_default=True, help="lora_alpha with --uniform.")
@click.option("--alpha-mode", type=click.Choice(["fixed", "ratio"]), default=ALPHA_POLICY["alpha_mode"], show_default=True,
              help="With --uniform: fixed (scale alpha / r) or ratio (scale alpha at every rank).")
@click.option("--rslora/--no-rslora", default=ALPHA_POLICY["rslora"], show_default=True, help="With --uniform: scale by 1 / sqrt(r).")
@click.option("--train-examples", type=int, default=None, help=f"Training subset size (default: the task's recipe, else {Recipe.train_examples:,}).")
@click.option("--epochs", type=int, default=None, help="Passes over the training subset (default: the task's recipe, else 1).")
@click.option("--batch-size", type=int, default=Recipe.batch_size, show_default=True)
@click.option("--lr", type=float, default=None, help=f"AdamW learning rate (default: the task's recipe, else {Recipe.lr:g}).")
@click.option("--max-grad-norm", type=float, default=Recipe.max_grad_norm, show_default=True, help="Gradient clipping (0: off).")
@click.option("--val-examples", type=int, default=None, help="Validate on the first N examples (default: all).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--data-dir", envvar="RANKGYM_DATA_DIR", help="GLUE-layout folder (or $RANKGYM_DATA_DIR).")
@click.option("--model-name-or-path", help="Local checkpoint folder (or hub id) instead of the default; with --backbone auto, the model.")
@click.option("--target-modules", multiple=True, help="Module name or regex to adapt (repeatable; PEFT's convention), instead of the defaults.")
@click.option("--dtype", type=click.Choice(["fp32", "bf16", "fp16"]), default="fp32", show_default=True,
              help="The frozen base's precision (adapters and head stay fp32).")
@click.option("--text-column", default="sentence", show_default=True, help="Text column of a task folder; 'a,b' for sentence pairs.")
@click.option("--label-column", default="label", show_default=True, help="Label column of a task folder.")
@click.option("--regression/--classification", default=None, help="A task folder's labels are float targets (default: detected).")
@click.option("--metric", help="Score by this metric instead of the task's own: accuracy, matthews, f1 (classes); pearson, spearman "
                               "(regression); neg_nll, exact_match (causal LM).")
@click.option("--gradient-checkpointing", is_flag=True, help="Recompute activations in the backward pass: less memory, "
                                                                "about a third more compute, the same numbers.")
@click.option("--out", type=click.Path(), help="Run folder (default: runs/finetune__BACKBONE__TASK__TIME).")
@click.option("--peft-out", type=click.Path(), help="Also write the trained adapter here for PEFT (PeftModel.from_pretrained).")
@click.option("--curve", is_flag=True, help="Also score the score split and validation after every epoch (the metric against "
                                             "epochs, in result.json); the final numbers are the same.")
@click.option("--json", "as_json", is_flag=True, help="End with one JSON line: metric, trainable_params, seconds, out.")
def finetune(backbone, task, rank_map_path, uniform, alpha, alpha_mode, rslora, train_examples, epochs, batch_size, lr, max_grad_norm,
             val_examples, seed, device, data_dir, model_name_or_path, target_modules, dtype, text_column, label_column, regression, metric,
             gradient_checkpointing, curve, out, peft_out, as_json) -> None:
    """Train a rank map with rankgym's LoRA layers, validate it, and save the adapter.

    Training never sees the score split a search scores maps on (held out of the training file),
    so numbers from here and from a search's promotion are the same computation.
    """
    from dataclasses import replace

    from rankgym.errors import RankgymError
    from rankgym.evaluators.finetune import FinetuneEvaluator
    from rankgym.lora.inject import save_adapter
    from rankgym.rankmap import RankMap

    if (rank_map_path is None) == (uniform is None):
        fail("give exactly one of --rank-map FILE or --uniform R")
    with user_errors():
        recipe = replace(full_recipe(task, train_examples=train_examples, epochs=epochs, batch_size=batch_size, lr=lr,
                                     val_examples=val_examples), max_grad_norm=max_grad_norm or None)
        rank_map = RankMap.load(rank_map_path) if rank_map_path else None
        policy = (dict(alpha=rank_map.alpha, alpha_mode=rank_map.alpha_mode, rslora=rank_map.rslora) if rank_map
                  else dict(alpha=alpha, alpha_mode=alpha_mode, rslora=rslora))
        max_rank = max(rank_map.ranks.values()) if rank_map else uniform
        evaluator = FinetuneEvaluator(backbone, task, recipe, seed, device, max(max_rank, 1), score_on="validation",
                                      model_name_or_path=model_name_or_path,
                                      data_dir=data_dir, text_column=text_column, label_column=label_column, regression=regression,
                                      metric=metric, gradient_checkpointing=gradient_checkpointing, progress=not as_json,
                                      target_modules=target_modules, dtype=dtype, **policy)
        if rank_map is None:
            rank_map = RankMap.uniform([m.name for m in evaluator.modules], uniform, **policy)
        if peft_out and not any(rank_map.ranks.values()):
            fail("--peft-out writes a PEFT adapter, but every module has rank 0 here; give a rank above 0 or drop --peft-out")
        try:
            rank_map.validate(evaluator.model)
        except RankgymError as err:
            fail(f"{rank_map_path}: {err}")
        click.echo(f"{backbone} on {evaluator.data.name}: {sum(r > 0 for r in rank_map.ranks.values())} adapted modules, "
                   f"{evaluator.trainable_params(rank_map):,} adapter parameters, {len(evaluator.train_set):,} examples x {recipe.epochs} epochs, "
                   f"device {evaluator.device}", err=as_json)
        result, points = evaluator.evaluate_curve(rank_map) if curve else (evaluator.evaluate(rank_map), None)
    from rankgym.metrics import describe
    from rankgym.run import run_folder

    for point in points or []:
        click.echo(f"epoch {point['epoch']:3d}: score split {describe(evaluator.data.metric, point['score'])}, "
                   f"validation {describe(evaluator.data.metric, point['validation'])}", err=as_json)

    out_dir = Path(out) if out else run_folder("finetune", backbone, evaluator.data.name)
    rank_map.provenance.update(backbone=backbone, task=evaluator.data.name, metric=evaluator.data.metric, value=result.metric, seed=seed)
    save_adapter(evaluator.model, out_dir, rank_map)
    if peft_out:
        evaluator.save_peft_adapter(peft_out, rank_map)
    summary = {"metric": result.metric, "trainable_params": result.params, "seconds": round(result.seconds, 2), "out": str(out_dir)}
    extra = {"curve": points} if curve else {}
    (out_dir / "result.json").write_text(json.dumps({**summary, "recipe": recipe.to_dict(), "seed": seed, **extra, **evaluator.identity()},
                                                    indent=2))

    click.echo(f"validation {describe(evaluator.data.metric, result.metric)} | trainable adapter parameters {result.params:,} | "
               f"{result.seconds:.1f} s | saved to {out_dir}" + (f", PEFT adapter in {peft_out}" if peft_out else ""), err=as_json)
    if as_json:
        click.echo(json.dumps(summary))


def run_agent(env_id: str, agent: str, budget: int, seed: int, out: str | None, resume: bool, env_kwargs: dict,
              hyperparams: dict, n_envs: int, devices: tuple[str, ...], promote: dict, retry_failed: bool = False,
              allow_divergence: bool = False) -> dict:
    """Dispatch to the agent scripts in agents/ (shipped as rankgym.agents), through their registry."""
    from rankgym.agents import run

    common = dict(env_id=env_id, budget=budget, seed=seed, out=out, resume=resume, env_kwargs=env_kwargs, retry_failed=retry_failed,
                  allow_divergence=allow_divergence, **promote)
    return run(agent, common, hyperparams, n_envs, devices)


@main.command()
@click.argument("env_id", required=False)
@click.option("--agent", type=click.Choice(AGENTS), default="ppo", show_default=True)
@click.option("--budget", type=click.IntRange(1), default=defaults.BUDGET, show_default=True, help="Evaluations to spend (environment steps or maps).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", type=click.Path(), help="Run folder (default runs/ENV__AGENT__SEED__TIME).")
@click.option("--resume", "resume_dir", type=click.Path(), help="Continue a killed run from its folder.")
@click.option("--env", "env_options", multiple=True, metavar="KEY=VALUE", help="gym.make override (repeatable), e.g. --env lam=0.2.")
@click.option("--set", "hp_options", multiple=True, metavar="KEY=VALUE", help="PPO hyperparameter override (repeatable).")
@click.option("--n-envs", type=click.IntRange(1), default=1, show_default=True, help="ppo-steps: parallel environments (on one device their maps train together; with several --devices, one spawned process each).")
@click.option("--devices", multiple=True, help="ppo-steps: one device per worker, cycled (repeatable).")
@click.option("--ray", "ray_address", is_flag=False, flag_value="local", default=None, metavar="[ADDRESS]",
              help="Evaluate on Ray workers: --ray starts a local cluster, --ray auto joins a running one, or give its address.")
@click.option("--workers", type=click.IntRange(1), default=2, show_default=True, help="With --ray: evaluation workers (one GPU each on GPU clusters).")
@click.option("--worker-cpus", type=click.IntRange(1), default=1, show_default=True, help="With --ray: CPUs (torch threads) per CPU worker.")
@click.option("--param-budget", type=float, help="At most this fraction (0, 1] of uniform rank max_rank's adapter parameters, "
              "or this many parameters (> 1); maps over it are scaled down onto it and the reward is the metric.")
@click.option("--promote", type=int, default=defaults.PROMOTE, show_default=True, help="Top maps retrained with the full recipe at the end.")
@click.option("--promote-seeds", type=int, default=defaults.PROMOTE_SEEDS, show_default=True, help="Seeds of every promotion retrain.")
@click.option("--promote-examples", type=int, default=None, help="Training examples of a promotion retrain (default: the task's full recipe).")
@click.option("--promote-halving", type=click.FloatRange(0), default=defaults.PROMOTE_HALVING, show_default=True,
              help="After each seed, candidates this many seed spreads behind the leader stop (0: every candidate gets every seed).")
@click.option("--no-promote", is_flag=True, help="Answer with the best search score, without retraining.")
@click.option("--retry-failed", is_flag=True, help="With --resume: evaluate maps whose stored evaluation failed again.")
@click.option("--allow-divergence", is_flag=True, help="With --resume: where the rerun differs from the log, replace the log from there.")
@click.option("--report/--no-report", default=True, show_default=True, help="Write the report at the end.")
def search(env_id, agent, budget, seed, out, resume_dir, env_options, hp_options, n_envs, devices, ray_address, workers, worker_cpus,
           param_budget, promote, promote_seeds, promote_examples, promote_halving, no_promote, retry_failed, allow_divergence,
           report) -> None:
    """Search rank maps on ENV_ID with an agent; writes a run folder with the answer and a report.

    The answer is promoted: the top maps by search score (scored on examples held out of training)
    and the uniform map the search starts from are retrained with the full recipe and several seeds,
    and validated on the validation split; best_rank_map.json is the winner.
    """
    from rankgym.errors import RankgymError

    with user_errors():
        if resume_dir:
            from click.core import ParameterSource

            from rankgym.run import load_config

            ctx = click.get_current_context()
            kept = ("resume_dir", "retry_failed", "allow_divergence", "report")
            typed = [p.opts[0] if p.opts else p.name for p in ctx.command.params
                     if p.name not in kept and ctx.get_parameter_source(p.name) == ParameterSource.COMMANDLINE]
            if typed:  # never ignore what the user typed: the run's config.json decides a resumed search
                fail(f"--resume continues {resume_dir} as its config.json says, so {', '.join(typed)} cannot change it; "
                     f"for more evaluations start a new run with --env store={Path(resume_dir) / 'store.sqlite'} to reuse these")
            saved = load_config(resume_dir)
            if saved["agent"] not in AGENTS:
                fail(f"{Path(resume_dir) / 'config.json'}: agent {saved['agent']!r} is none of {', '.join(AGENTS)}")
            env_id, agent, budget, seed = saved["env_id"], saved["agent"], saved["budget"], saved["seed"]
            env_kwargs, hyperparams, n_envs = saved.get("env_kwargs", {}), saved.get("hyperparams", {}), saved.get("n_envs", 1)
            devices = tuple(saved.get("devices", ()))
            promotion = {k: saved[k] for k in ("promote", "promote_seeds", "promote_examples", "promote_halving") if k in saved}
            out = resume_dir
        else:
            if not env_id:
                fail("give an ENV_ID (see `rankgym envs`) or --resume RUN_DIR")
            from rankgym.harness import key_values

            env_kwargs, hyperparams = key_values(env_options), key_values(hp_options)
            if param_budget is not None:
                env_kwargs["param_budget"] = param_budget
            if ray_address:
                env_kwargs.update(ray_workers=workers, worker_cpus=worker_cpus, ray_address=None if ray_address == "local" else ray_address)
                if agent == "ppo-steps" and n_envs == 1:
                    n_envs = workers  # one environment per worker: their steps evaluate side by side
            if min(promote, promote_seeds, promote_examples or 1) < 0 or (promote and not (promote_seeds and promote_examples != 0)):
                fail("--promote, --promote-seeds and --promote-examples must be >= 1 (or --no-promote)")
            promotion = dict(promote=0 if no_promote else promote, promote_seeds=promote_seeds, promote_examples=promote_examples,
                             promote_halving=promote_halving)
        import gymnasium as gym

        import rankgym  # noqa: F401

        if env_id not in gym.registry:
            fail(f"unknown environment {env_id!r}" + (f" in {Path(resume_dir) / 'config.json'}" if resume_dir else "")
                 + "; `rankgym envs` lists them (a task folder's ids register with $RANKGYM_TASKS=FOLDER)")
        try:
            summary = run_agent(env_id, agent, budget, seed, out, bool(resume_dir), env_kwargs, hyperparams, n_envs, devices, promotion,
                                retry_failed, allow_divergence)
        except RankgymError as err:
            if resume_dir:  # the folder's config.json decided the search: name it
                fail(f"cannot resume {resume_dir}: {err}")
            raise
        run_dir = Path(summary["run"])
        if report:
            from rankgym.report import write_report

            write_report([run_dir], run_dir / "report")
    click.echo(f"{'best map:':12s} reward {summary['best_reward']:.4f} | metric {summary['best_metric']:.4f} (search score) | "
               f"{summary['best_params']:,} adapter parameters")
    if summary.get("promotion"):
        table = summary["promotion"]
        recipe = table["recipe"]
        epochs = f" x {recipe['epochs']} epochs" if recipe.get("epochs", 1) > 1 else ""
        click.echo(f"promoted ({len(table['seeds'])} seeds x {recipe['train_examples']:,} examples{epochs}; {table['metric']}, "
                   f"chosen on the score split, reported on the validation split):")
        for row in table["rows"]:
            mark = "winner" if row["label"] == table["winner"] else ("ties" if row["label"] in table.get("tied", []) else "")
            searched = f"search {row['search_metric']:.4f}" if row["search_metric"] is not None else "not searched"
            chosen = f"score {row['score_mean']:.4f} ± {row['score_std']:.4f} | " if "score_mean" in row else ""
            seeds = f" | {row['seeds']} seed{'s' if row['seeds'] != 1 else ''}, stopped" if row.get("stopped") else ""
            click.echo(f"  {row['label']:28s} {chosen}validation {row['mean']:.4f} ± {row['std']:.4f} | {row['params']:>9,} adapter "
                       f"parameters | {searched}{seeds}  {mark}")
        if any(row.get("stopped") for row in table["rows"]):
            click.echo("stopped rows fell more than --promote-halving seed spreads behind the leader on the score split (summary.json says by how much)")
        if table.get("tied"):
            click.echo(f"the leaders tie within the seed spread on the score split ({', '.join([table['winner'], *table['tied']])}): "
                       "the answer is the one with the fewest adapter parameters")
    elif summary.get("initial_metric") is not None:
        rank = summary.get("initial_uniform_rank")
        name = f"uniform rank {rank}" if rank is not None else "initial map"
        click.echo(f"{name + ':':12s} reward {summary['initial_reward']:.4f} | metric {summary['initial_metric']:.4f} | "
                   f"{summary['initial_params']:,} adapter parameters (the map every episode starts from)")
    click.echo(f"{summary['evaluations']} evaluations ({summary['trained']} computed, {summary['cache_hits']} from the store) "
               f"in {summary['seconds']:.0f} s")
    if summary.get("pool"):
        pool = summary["pool"]
        click.echo(f"Ray workers: evaluations {pool['evaluations_per_worker']}, busy {[f'{u:.0%}' for u in pool['utilisation']]} of the search")
    if summary.get("adapter"):
        click.echo(f"trained adapter of the winner (seed 0): {summary['adapter']}  (peft.PeftModel.from_pretrained(model, that folder))")
    click.echo(f"run folder: {run_dir}" + (f"  report: {run_dir / 'report' / 'report.md'}" if report else ""))


@main.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--peft", "peft_dir", type=click.Path(), required=True, help="Folder to write the PEFT adapter (or config) to.")
def export(run_dir, peft_dir) -> None:
    """Write the answer of RUN_DIR for PEFT: the promoted winner's trained adapter, or its LoraConfig alone.

    A promoted search keeps its winner's seed-0 retrain (RUN_DIR/peft_adapter): that adapter is
    copied. A run without one (--no-promote, an older run) gives the config only (task_type SEQ_CLS, CAUSAL_LM for a language model).
    """
    import shutil

    from rankgym.rankmap import RankMap

    with user_errors():
        best = RankMap.load(Path(run_dir) / "best_rank_map.json")
        config = best.to_peft_config()  # SEQ_CLS, or CAUSAL_LM for a language model (the map records it)
        trained = Path(run_dir) / "peft_adapter"
        if trained.is_dir():
            loaded = RankMap.load(trained)
            if loaded.ranks != {n: r for n, r in best.ranks.items() if r > 0}:
                fail(f"{trained} holds another map than {Path(run_dir) / 'best_rank_map.json'}; was the run folder edited?")
            shutil.copytree(trained, peft_dir, dirs_exist_ok=True)
        else:
            config.save_pretrained(peft_dir)
    active = sum(r > 0 for r in best.ranks.values())
    ranks = f"{active} modules, ranks {min(config.rank_pattern.values())}..{max(config.rank_pattern.values())}"
    if trained.is_dir():
        click.echo(f"wrote the winner's trained adapter (seed 0 of the promotion) to {peft_dir}: {ranks}; "
                   f"load with peft.PeftModel.from_pretrained(model, {str(peft_dir)!r})")
        return
    click.echo(f"wrote {Path(peft_dir) / 'adapter_config.json'}: {ranks}; load with peft.LoraConfig.from_pretrained({str(peft_dir)!r})")
    click.echo("config only: this run holds no trained adapter (it was not promoted); for one PEFT loads, run "
               f"`rankgym finetune --rank-map {Path(run_dir) / 'best_rank_map.json'} --peft-out DIR`")


@main.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--out", type=click.Path(), help="Report folder (default: RUN_DIR/report for one run, runs/report__TIME for several).")
def report(run_dirs, out) -> None:
    """Plot and tabulate one or more search runs (PNG plots, report.md, report.html)."""
    from rankgym.report import write_report
    from rankgym.run import run_folder

    with user_errors():
        folder = write_report(list(run_dirs), out or (Path(run_dirs[0]) / "report" if len(run_dirs) == 1 else run_folder("report")))
    click.echo(f"wrote {folder / 'report.md'} and {folder / 'report.html'}")


@main.command()
@click.option("--backbone", default="minilm", show_default=True)
@click.option("--model-name-or-path", help="Local checkpoint folder (or hub id).")
@click.option("--out", type=click.Path(), help="Folder (default runs/analyze__BACKBONE__TIME).")
def analyze(backbone, model_name_or_path, out) -> None:
    """Singular-value spectra of the adapted weights and their 80/90/95 % ranks (plots and JSON)."""
    from rankgym.backbones import get_backbone, load_backbone, module_infos
    from rankgym.report import analyze_backbone
    from rankgym.run import run_folder

    with user_errors():
        model, _ = load_backbone(backbone, model_name_or_path)
        table = analyze_backbone(module_infos(model, get_backbone(backbone, model_name_or_path)), out_dir := Path(out or run_folder("analyze", backbone)))
    for name, row in list(table.items())[:6]:
        click.echo(f"{name:50s} {row['kind']:9s} r80={row['r80']:4d} r90={row['r90']:4d} r95={row['r95']:4d}")
    click.echo(f"... {len(table)} modules; wrote {out_dir / 'spectral_ranks.json'} and {out_dir / 'spectra.png'}")


@main.command()
@click.option("--backbone", default="minilm", show_default=True, help="minilm, tiny, gpt2, distilgpt2.")
@click.option("--random-init", is_flag=True, help="GPT-2 small's architecture with random weights (no download).")
@click.option("--device", default="auto", show_default=True)
@click.option("--train-examples", type=int, default=512, show_default=True)
@click.option("--val-examples", type=int, default=None, help="Validate on the first N (default: all 872).")
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--rank", type=int, default=8, show_default=True, help="Uniform rank on every default module.")
@click.option("--k", "ks", type=int, multiple=True, help="Batched configurations (repeatable; default 1 4, and 16 on a GPU).")
@click.option("--data-dir", envvar="RANKGYM_DATA_DIR")
@click.option("--model-name-or-path")
@click.option("--json", "json_path", type=click.Path(), help="Also write the results as JSON here.")
def bench(backbone, random_init, device, train_examples, val_examples, batch_size, rank, ks, data_dir, model_name_or_path,
          json_path) -> None:
    """Seconds per evaluation: PEFT as a user writes it, rankgym's evaluator, and the batched evaluator."""
    import torch

    from rankgym.bench import run_bench

    if not ks:
        ks = (1, 4, 16) if torch.cuda.is_available() and device != "cpu" else (1, 4)
    with user_errors():
        report = run_bench(backbone, device, train_examples, batch_size, rank, tuple(ks), val_examples, data_dir,
                           model_name_or_path, random_init, progress=click.echo)
    click.echo(f"device: {report['device']}; {report['backbone']}, {report['rank_map']}, {report['train_examples']} training "
               f"+ {report['val_examples']} validation examples, batch {report['batch_size']}")
    if json_path:
        Path(json_path).write_text(json.dumps(report, indent=2) + "\n")
        click.echo(f"wrote {json_path}")


@main.command()
@click.argument("store", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", type=click.Path(), required=True, help="Table to write (JSON), for evaluator=surrogate, surrogate_table=OUT.")
@click.option("--backbone", help="Pick the recorded context by backbone ...")
@click.option("--task", help="... task ...")
@click.option("--evaluator", help="... and evaluator (e.g. elastic).")
def surrogate(store, out, backbone, task, evaluator) -> None:
    """Fit a surrogate to the evaluations of STORE: write its table and print its held-out error."""
    from rankgym.evaluators.surrogate import main_table
    from rankgym.registry import SURROGATE_ID

    with user_errors():
        error = main_table(store, out, backbone=backbone, task=task, evaluator=evaluator)
    click.echo(f"wrote {out}: {error['maps']} evaluations; held out (5-fold, grouped by map): mean absolute error "
               f"{error['mae']:.4f} (metric std {error['spread']:.4f}), Kendall's tau {error['kendall_tau']:.3f}")
    click.echo(f"use it: gym.make({SURROGATE_ID!r}, surrogate_table={out!r})")


@main.command()
@click.option("--tasks", required=True, help="Tasks sharing the budget, e.g. 'sst2 rte mrpc' (space or comma separated).")
@click.option("--param-budget", type=int, required=True, help="Total adapter parameters over all tasks.")
@click.option("--backbone", default="minilm", show_default=True)
@click.option("--weights", help="One weight per task for the weighted mean (default: equal).")
@click.option("--out", type=click.Path(), default="runs/allocate", show_default=True, help="Folder: one rank map and PEFT config per task, split.json.")
@click.option("--env", "env_options", multiple=True, metavar="KEY=VALUE", help="gym.make override of every task's env (repeatable).")
def allocate(tasks, param_budget, backbone, weights, out, env_options) -> None:
    """Split one adapter budget across tasks by their measured metric per parameter (one map per task)."""
    from rankgym.allocate import allocate as split
    from rankgym.harness import key_values

    names = [t for t in tasks.replace(",", " ").split() if t]
    if not names:
        fail(f"--tasks {tasks!r} names no task; give them space or comma separated, e.g. --tasks 'sst2 rte'")
    with user_errors():
        try:
            factors = [float(w) for w in weights.replace(",", " ").split()] if weights else None
        except ValueError:
            fail(f"--weights takes numbers, one per task, got {weights!r}")
        result = split(names, param_budget, backbone, factors, out, env_kwargs=key_values(env_options))
    s = result.summary
    click.echo(f"{param_budget:,} adapter parameters over {', '.join(result.tasks)} ({s['per_rank']:,} per uniform rank); score split, "
               f"{'weighted ' if weights else ''}mean metric:")
    click.echo(f"  {'task':10s} {'measured split':>24s} {'equal split':>24s} {'article (6.2)':>24s}")
    for t in result.tasks:  # a task folder under its folder's name
        cells = [(s["split"][t]["params"], s["split"][t]["score"]), (s["equal_split"]["split"][t]["params"], s["equal_split"]["split"][t]["score"]),
                 (s["article"]["split"][t]["params"], s["article"]["split"][t]["score"])]
        click.echo(f"  {t:10s} " + " ".join(f"{p or 0:>12,} {m if m is not None else float('nan'):>11.4f}" for p, m in cells))
    values = [s["value"], s["equal_split"]["value"], s["article"]["value"]]
    click.echo(f"  {'mean':10s} " + " ".join(f"{'':>12s} {v if v is not None else float('nan'):>11.4f}" for v in values))
    click.echo(f"wrote {out}/<task>/rank_map.json, peft/ and {out}/split.json")


@main.command()
@click.argument("env_id")
@click.option("--param-budget", type=float, required=True, help="Adapter parameters: a fraction (0, 1] of uniform max_rank, or a count.")
@click.option("--seeds", type=click.IntRange(1), default=2, show_default=True, help="Elastic adapters (seeds 0 .. N-1): 2 or more measure the noise.")
@click.option("--env", "env_options", multiple=True, metavar="KEY=VALUE", help="gym.make override (repeatable), e.g. max_rank=16.")
@click.option("--store", default="runs/headroom/store.sqlite", show_default=True,
              help="Store whose folder keeps the adapters; a search's own store reuses its adapter.")
@click.option("--json", "as_json", is_flag=True, help="End with one JSON line holding every figure.")
def headroom(env_id, param_budget, seeds, env_options, store, as_json) -> None:
    """Does the budget bind? The best free heuristic at the budget against uniform max_rank, by elastic scores."""
    import gymnasium as gym

    import rankgym  # noqa: F401  (registers the ids)
    from rankgym.headroom import headroom as measure
    from rankgym.registry import EnvConfig
    from rankgym.harness import key_values

    with user_errors():
        if env_id not in gym.registry:
            fail(f"unknown environment id {env_id!r}; `rankgym envs` lists them")
        Path(store).parent.mkdir(parents=True, exist_ok=True)
        config = EnvConfig.for_env(env_id, {**key_values(env_options), "param_budget": param_budget, "store": store})
        found = measure(config, list(range(seeds)), on_seed=lambda s: click.echo(f"adapter seed {s} scored", err=as_json))
    click.echo(f"{env_id} at {found.budget_params:,} adapter parameters ({found.budget_params / found.reference_params:.1%} of "
               f"uniform-{config.max_rank}), elastic scores on the score split, seeds {found.seeds}:", err=as_json)
    for label, values in found.scores.items():
        mark = "  best heuristic" if label == found.best else ("  no budget" if label == found.top else "")
        click.echo(f"  {label:20s} {sum(values) / len(values):.4f}  ({', '.join(f'{v:.4f}' for v in values)}){mark}", err=as_json)
    click.echo(found.sentence(), err=as_json)
    if as_json:
        click.echo(json.dumps(found.to_dict()))


@main.command()
def envs() -> None:
    """List the registered environment ids with backbone, task, evaluator and default budget."""
    from rankgym.registry import EnvConfig, env_ids
    from rankgym.tasks import GLUE

    defaults = EnvConfig()
    rows = [("id", "backbone", "task", "metric", "evaluator", "train examples", "episode steps", "max rank")]
    for env_id, kwargs in env_ids().items():
        get = lambda k: kwargs.get(k, getattr(defaults, k))  # noqa: E731
        budget = {"fake": "closed form", "surrogate": "fitted table"}.get(get("evaluator"), str(get("train_examples")))
        metric = GLUE[get("task")].metric if get("task") in GLUE else "closed form"
        rows.append((env_id, get("backbone"), get("task"), metric, get("evaluator"), budget, str(get("max_episode_steps")),
                     str(get("max_rank"))))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    click.echo("\nOverride any option at gym.make, e.g. gym.make(id, lam=0.2, device='cpu', store='runs/store.sqlite').")
    click.echo("The auto ids adapt your own model: gym.make('RankSearch-auto-sst2-v0', model_name_or_path='DIR or hub id'), "
               "or `rankgym search RankSearch-auto-sst2-v0 --env model_name_or_path=DIR`; model types with a module table: "
               "bert, roberta, xlm-roberta, electra, deberta-v2, gpt2, llama, mistral, qwen2 (others: --env target_modules=[...]).")


if __name__ == "__main__":
    sys.exit(main())
