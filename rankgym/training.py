"""One LoRA fine-tune and its validation: the work behind every evaluation.

Training batches are grouped by length (transformers' ``get_length_grouped_indices``, what
``Trainer(group_by_length=True)`` uses) and padded to their own longest sentence; validation runs
in length-sorted batches. SST-2 is short and uneven, so padding is most of the cost otherwise.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers.trainer_pt_utils import get_length_grouped_indices

from rankgym.backbones import init_head
from rankgym.errors import RankgymError
from rankgym.lora.inject import lora_layers
from rankgym.tasks import Encoded


class TrainingDiverged(RankgymError, RuntimeError):
    """The training loss became NaN or infinite."""


@dataclass(frozen=True)
class Recipe:
    """A fixed training budget, so that evaluations of different rank maps compare.

    Attributes:
        train_examples: examples seen in training (one pass over a seeded subset of that size).
        batch_size: training batch size.
        lr: AdamW learning rate for the adapters and the head.
        weight_decay: AdamW weight decay.
        warmup: fraction of steps with a linear warm-up; the rate then decays linearly to 0.
        max_length: tokens kept per sentence.
        eval_batch_size: validation batch size.
        val_examples: validate on the first N validation examples (None: all of them).
    """

    train_examples: int = 8192
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 0.0
    warmup: float = 0.06
    max_length: int = 128
    eval_batch_size: int = 128
    val_examples: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class FinetuneResult:
    metric: float
    val_loss: float
    train_loss: float
    seconds: float
    steps: int


def pad_batch(ids: list[torch.Tensor], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad to the longest sequence: (input_ids, attention_mask)."""
    length = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), length), dtype=torch.long)
    for row, x in enumerate(ids):
        input_ids[row, : len(x)] = x
        mask[row, : len(x)] = 1
    return input_ids.to(device), mask.to(device)


def training_subset(size: int, recipe: Recipe, seed: int) -> list[int]:
    """The fixed, seeded training subset of ``recipe.train_examples`` indices out of ``size``."""
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(size, generator=g)[: min(recipe.train_examples, size)].tolist()


def training_order(data: Encoded, batch_size: int, seed: int) -> list[list[int]]:
    """One pass over ``data`` in batches grouped by length, the batches in seeded order."""
    g = torch.Generator().manual_seed(seed + 1)
    order = get_length_grouped_indices(data.lengths, batch_size, generator=g)
    batches = [order[k : k + batch_size] for k in range(0, len(order), batch_size)]
    shuffle = torch.randperm(len(batches), generator=g).tolist()  # no long-to-short curriculum
    return [batches[i] for i in shuffle]


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def evaluate(model: nn.Module, data: Encoded, pad_id: int, batch_size: int = 128, limit: int | None = None) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) over ``data`` in length-sorted batches."""
    device = _device_of(model)
    was_training = model.training
    model.eval()
    n = len(data) if limit is None else min(limit, len(data))
    order = sorted(range(n), key=lambda i: len(data.ids[i]))
    correct, loss_sum = 0, 0.0
    for k in range(0, n, batch_size):
        idx = order[k : k + batch_size]
        input_ids, mask = pad_batch([data.ids[i] for i in idx], pad_id, device)
        labels = data.labels[idx].to(device)
        logits = model(input_ids=input_ids, attention_mask=mask).logits.float()
        loss_sum += nn.functional.cross_entropy(logits, labels, reduction="sum").item()
        correct += (logits.argmax(-1) == labels).sum().item()
    model.train(was_training)
    return correct / n, loss_sum / n


def init_adapters(model: nn.Module, seed: int) -> None:
    """Seeded fresh adapters (at their current ranks) and a fresh task head."""
    g = torch.Generator().manual_seed(seed)
    for layer in lora_layers(model).values():
        layer.reset_adapter(layer.rank, g)
    init_head(model, g)


def finetune(
    model: nn.Module,
    train: Encoded,
    validation: Encoded,
    pad_id: int,
    recipe: Recipe = Recipe(),
    seed: int = 0,
    progress: bool = False,
    description: str = "finetune",
) -> FinetuneResult:
    """Train the model's trainable parameters with AdamW for ``recipe``'s budget, then validate.

    ``train`` is the whole training set of this run (see :func:`training_subset`). The adapters are
    trained as they are (call :func:`init_adapters` first for a fresh start).
    Raises :class:`TrainingDiverged` on a NaN or infinite loss.
    """
    start = time.perf_counter()
    device = _device_of(model)
    torch.manual_seed(seed)  # dropout masks
    batches = training_order(train, recipe.batch_size, seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay, foreach=True)
    warmup = max(1, int(recipe.warmup * len(batches)))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (len(batches) - s) / max(1, len(batches) - warmup)))
    )
    model.train()
    loss_sum = 0.0
    bar = tqdm(batches, desc=description, unit="batch", disable=not progress, leave=False)
    for step, idx in enumerate(bar):
        input_ids, mask = pad_batch([train.ids[i] for i in idx], pad_id, device)
        logits = model(input_ids=input_ids, attention_mask=mask).logits.float()
        loss = nn.functional.cross_entropy(logits, train.labels[idx].to(device))
        if not math.isfinite(loss.item()):
            raise TrainingDiverged(f"training loss became {loss.item()} at step {step}; lower the learning rate")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        loss_sum += loss.item()
        if progress and step % 10 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    metric, val_loss = evaluate(model, validation, pad_id, recipe.eval_batch_size, recipe.val_examples)
    return FinetuneResult(metric, val_loss, loss_sum / max(1, len(batches)), time.perf_counter() - start, len(batches))
