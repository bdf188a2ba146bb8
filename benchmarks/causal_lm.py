"""Causal-LM tasks on tiny random decoders: what an evaluation costs and what a fine-tune learns.

    python benchmarks/causal_lm.py                 # GPT-2, Llama and Qwen2, two layers of width 64
    python benchmarks/causal_lm.py --families llama --examples 256

No pretrained decoder can be loaded offline here, so the models are random two-layer ones built from
a config (``save_pretrained``, then loaded by path with ``--backbone auto``, as a user's checkpoint
is) and the task is synthetic (:func:`lookup_task`, prompt/response JSON Lines). Per model it
prints the seconds of one ``finetune`` evaluation and of one ``elastic`` evaluation (after the
adapter's one training run, whose seconds are given too), the validation NLL per response token
of the base model and after a uniform rank-8 fine-tune, and the exact-match rate of that
fine-tune. The figures are this machine's: compare them within one run.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, Qwen2Config

from rankgym.backbones import byte_level_tokenizer
from rankgym.evaluators.elastic import ElasticEvaluator
from rankgym.evaluators.finetune import FinetuneEvaluator
from rankgym.recipe import Recipe

WIDTH = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=256, vocab_size=300,
             num_key_value_heads=2, max_position_embeddings=128)
CONFIGS = {
    "gpt2": lambda: GPT2Config(n_layer=2, n_head=2, n_embd=64, vocab_size=300, n_positions=128),
    "llama": lambda: LlamaConfig(**WIDTH),
    "qwen2": lambda: Qwen2Config(**WIDTH),
}


def lookup_task(folder: Path, examples: int, seed: int = 0) -> Path:
    """Answer a key's fixed value: ``{"prompt": "some filler key =", "response": "value"}``, 16 keys, each
    value three letters; the filler words vary, so the model has to find the key (a frozen random
    two-layer model learns this through its adapters in a few hundred steps; reversing a word it does not)."""
    rng = random.Random(seed)
    letters = "abcdefghijklmnop"
    keys = ["".join(rng.choice(letters) for _ in range(4)) for _ in range(16)]
    values = {k: "".join(rng.choice(letters) for _ in range(3)) for k in keys}
    fillers = ["the", "a", "one", "my", "this", "our", "some", "any"]

    def line() -> str:
        key = rng.choice(keys)
        return json.dumps({"prompt": f"{rng.choice(fillers)} {rng.choice(fillers)} {key} =", "response": values[key]}) + "\n"

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.jsonl").write_text("".join(line() for _ in range(examples)))
    (folder / "validation.jsonl").write_text("".join(line() for _ in range(128)))
    return folder


def checkpoint(folder: Path, family: str) -> Path:
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(CONFIGS[family]()).save_pretrained(folder)
    byte_level_tokenizer().save_pretrained(folder)
    return folder


def measure(family: str, task: Path, model: Path, recipe: Recipe, maps: int) -> dict:
    common = dict(backbone="auto", task=str(task), model_name_or_path=str(model), device="cpu", max_rank=8)
    by_nll = FinetuneEvaluator(recipe=recipe, score_on="validation", **common)
    by_match = FinetuneEvaluator(recipe=recipe, score_on="validation", metric="exact_match", **common)  # the metric is fixed per evaluator
    uniform = by_nll.template().replace({m.name: 8 for m in by_nll.modules})
    nll, match = by_nll.evaluate(uniform), by_match.evaluate(uniform)
    row: dict = {"family": family, "modules": len(by_nll.modules), "nll_base": -by_nll.evaluate(by_nll.template()).metric,
                 "nll_rank8": -nll.metric, "exact_match_rank8": match.metric,
                 "finetune_seconds_neg_nll": nll.seconds, "finetune_seconds_exact_match": match.seconds}
    elastic = ElasticEvaluator(recipe=recipe, **common)
    start = time.perf_counter()
    elastic.ensure_trained()
    row["elastic_adapter_seconds"] = time.perf_counter() - start
    rng = random.Random(1)
    seconds = [elastic.evaluate(elastic.template().replace({m.name: rng.randint(0, 8) for m in elastic.modules})).seconds
               for _ in range(maps)]
    row["elastic_seconds_per_map"] = sum(seconds) / len(seconds)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--families", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--examples", type=int, default=512, help="training lines of the lookup task")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--maps", type=int, default=20, help="random maps the elastic evaluator scores")
    parser.add_argument("--out", default="runs/causal_lm.json")
    args = parser.parse_args()
    recipe = Recipe(train_examples=args.examples, epochs=args.epochs, lr=3e-3, batch_size=16)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        task = lookup_task(Path(tmp) / "lookup", args.examples + 128)  # 128 of them become the score split
        for family in args.families:
            rows.append(measure(family, task, checkpoint(Path(tmp) / family, family), recipe, args.maps))
            r = rows[-1]
            print(f"{family:6s} {r['modules']:3d} modules | finetune {r['finetune_seconds_neg_nll']:6.2f} s (exact match "
                  f"{r['finetune_seconds_exact_match']:6.2f} s) | elastic adapter {r['elastic_adapter_seconds']:6.2f} s, "
                  f"{r['elastic_seconds_per_map']:.3f} s a map | NLL {r['nll_base']:.3f} -> {r['nll_rank8']:.3f} | "
                  f"exact match {r['exact_match_rank8']:.3f}", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"recipe": recipe.to_dict(), "rows": rows}, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
