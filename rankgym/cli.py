"""The ``rankgym`` command. Heavy imports happen inside each subcommand so ``--help`` is instant."""

from __future__ import annotations

import json
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import click

from rankgym import __version__


def fail(message: str) -> None:
    """Exit with a one-line error (no traceback): what is wrong and how to fix it."""
    raise click.ClickException(message)


@contextmanager
def user_errors():
    """Turn rankgym's user-fixable errors into one-line CLI errors."""
    from rankgym.errors import RankgymError

    try:
        yield
    except RankgymError as err:
        raise click.ClickException(str(err)) from None


def default_out(*parts: str) -> Path:
    return Path("runs") / ("__".join(parts + (time.strftime("%Y%m%d-%H%M%S"),)))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="rankgym")
def main() -> None:
    """Choose LoRA ranks per layer by search: fine-tune, search, export, report."""


@main.command()
@click.option("--backbone", default="minilm", show_default=True, help="gpt2, distilgpt2, minilm or tiny.")
@click.option("--task", default="sst2", show_default=True, help="sst2, or a folder with train/validation TSV or CSV.")
@click.option("--rank-map", "rank_map_path", type=click.Path(), help="Rank map JSON (e.g. a search's best_rank_map.json).")
@click.option("--uniform", type=int, help="Give every default module this rank instead of a rank map.")
@click.option("--alpha", type=float, default=8.0, show_default=True, help="lora_alpha with --uniform.")
@click.option("--train-examples", type=int, default=8192, show_default=True, help="Training examples (one pass).")
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--lr", type=float, default=3e-3, show_default=True, help="AdamW learning rate.")
@click.option("--val-examples", type=int, default=None, help="Validate on the first N examples (default: all).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--data-dir", envvar="RANKGYM_DATA_DIR", help="GLUE-layout folder (or $RANKGYM_DATA_DIR).")
@click.option("--model-name-or-path", help="Local checkpoint folder (or hub id) instead of the default.")
@click.option("--text-column", default="sentence", show_default=True, help="Text column of a task folder.")
@click.option("--label-column", default="label", show_default=True, help="Label column of a task folder.")
@click.option("--out", type=click.Path(), help="Run folder (default: runs/finetune__BACKBONE__TASK__TIME).")
@click.option("--json", "as_json", is_flag=True, help="End with one JSON line: metric, trainable_params, seconds, out.")
def finetune(backbone, task, rank_map_path, uniform, alpha, train_examples, batch_size, lr, val_examples, seed, device,
             data_dir, model_name_or_path, text_column, label_column, out, as_json) -> None:
    """Train a rank map with rankgym's LoRA layers, validate it, and save the adapter."""
    from rankgym.evaluators.finetune import FinetuneEvaluator
    from rankgym.lora.inject import save_adapter
    from rankgym.rankmap import RankMap
    from rankgym.training import Recipe

    if (rank_map_path is None) == (uniform is None):
        fail("give exactly one of --rank-map FILE or --uniform R")
    with user_errors():
        recipe = Recipe(train_examples=train_examples, batch_size=batch_size, lr=lr, val_examples=val_examples)
        rank_map = RankMap.load(rank_map_path) if rank_map_path else None
        policy = dict(alpha=rank_map.alpha, alpha_mode=rank_map.alpha_mode, rslora=rank_map.rslora) if rank_map else dict(alpha=alpha)
        max_rank = max(rank_map.ranks.values()) if rank_map else uniform
        evaluator = FinetuneEvaluator(backbone, task, recipe, seed, device, max(max_rank, 1), model_name_or_path=model_name_or_path,
                                      data_dir=data_dir, text_column=text_column, label_column=label_column,
                                      progress=not as_json, **policy)
        if rank_map is None:
            rank_map = RankMap.uniform([m.name for m in evaluator.modules], uniform, alpha=alpha)
        rank_map.validate(evaluator.model)
        click.echo(f"{backbone} on {evaluator.data.name}: {sum(r > 0 for r in rank_map.ranks.values())} adapted modules, "
                   f"{evaluator.trainable_params(rank_map):,} adapter parameters, {recipe.train_examples} examples, "
                   f"device {evaluator.device}", err=as_json)
        result = evaluator.evaluate(rank_map)
    out_dir = Path(out) if out else default_out("finetune", backbone, evaluator.data.name)
    rank_map.provenance.update(backbone=backbone, task=evaluator.data.name, metric=evaluator.data.metric, value=result.metric, seed=seed)
    save_adapter(evaluator.model, out_dir, rank_map)
    summary = {"metric": result.metric, "trainable_params": result.params, "seconds": round(result.seconds, 2), "out": str(out_dir)}
    (out_dir / "result.json").write_text(json.dumps({**summary, "recipe": recipe.to_dict(), "seed": seed, **evaluator.identity()}, indent=2))
    click.echo(f"validation {evaluator.data.metric} {result.metric:.4f} | trainable adapter parameters {result.params:,} | "
               f"{result.seconds:.1f} s | saved to {out_dir}", err=as_json)
    if as_json:
        click.echo(json.dumps(summary))


@main.command()
def envs() -> None:
    """List the registered environment ids with backbone, task, evaluator and default budget."""
    from rankgym.registry import EnvConfig, env_ids

    defaults = EnvConfig()
    rows = [("id", "backbone", "task", "evaluator", "train examples", "episode steps", "max rank")]
    for env_id, kwargs in env_ids().items():
        get = lambda k: kwargs.get(k, getattr(defaults, k))  # noqa: E731
        budget = "closed form" if get("evaluator") == "fake" else str(get("train_examples"))
        rows.append((env_id, get("backbone"), get("task"), get("evaluator"), budget, str(get("max_episode_steps")), str(get("max_rank"))))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    click.echo("\nOverride any option at gym.make, e.g. gym.make(id, lam=0.2, device='cpu', store='runs/store.sqlite').")


if __name__ == "__main__":
    sys.exit(main())
