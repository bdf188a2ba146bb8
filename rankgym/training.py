"""One LoRA fine-tune and its validation: the work behind every evaluation.

Training batches are grouped by length (transformers' ``get_length_grouped_indices``, what
``Trainer(group_by_length=True)`` uses) and padded to their own longest sentence; validation runs
in length-sorted batches. SST-2 is short and uneven, so padding is most of the cost otherwise.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm
from transformers.trainer_pt_utils import get_length_grouped_indices

from rankgym import metrics
from rankgym.backbones import head_modules, init_head
from rankgym.errors import MapFailure
from rankgym.lora.inject import lora_layers
from rankgym.recipe import Recipe
from rankgym.taskdata import Encoded


class TrainingDiverged(MapFailure, RuntimeError):
    """The training loss became NaN or infinite."""


@dataclass
class FinetuneResult:
    metric: float
    val_loss: float
    train_loss: float
    seconds: float
    steps: int
    losses: list[float] = field(default_factory=list, repr=False)  # training loss at every step
    error: str | None = None


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


def training_order(data: Encoded, batch_size: int, seed: int, epochs: int = 1) -> list[list[int]]:
    """``epochs`` passes over ``data`` in batches grouped by length, the batches of each pass in seeded order."""
    if epochs > 1:
        return [batch for epoch in range(epochs) for batch in training_order(data, batch_size, seed + 7919 * epoch)]
    g = torch.Generator().manual_seed(seed + 1)
    # Mega-batches of 50 batches, transformers' cap, at every size: its rule for small sets (4
    # mega-batches) leaves 20 % padding at 1,024 SST-2 examples, against 6 % here.
    order = get_length_grouped_indices(data.lengths, batch_size, mega_batch_mult=50, generator=g)
    batches = [order[k : k + batch_size] for k in range(0, len(order), batch_size)]
    shuffle = torch.randperm(len(batches), generator=g).tolist()  # no long-to-short curriculum
    return [batches[i] for i in shuffle]


def batches_per_epoch(data: Encoded, batch_size: int) -> int:
    """How many batches one pass of :func:`training_order` makes over ``data``."""
    return math.ceil(len(data) / batch_size)


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def task_loss(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy for class labels, mean squared error for float targets (one output)."""
    if labels.is_floating_point():
        return nn.functional.mse_loss(logits.squeeze(-1), labels, reduction=reduction)
    return nn.functional.cross_entropy(logits, labels, reduction=reduction)


def lm_loss(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Next-token cross-entropy over the positions whose target is not -100 (a causal LM's response tokens)."""
    return nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), targets[:, 1:].flatten(), ignore_index=-100, reduction=reduction)


def batch_targets(data: Encoded, idx: list[int], device: torch.device) -> torch.Tensor:
    """Per-position targets of examples ``idx``, right-padded with -100 like :func:`pad_batch` pads the ids."""
    return pad_batch([data.targets[i] for i in idx], -100, device)[0]


def batch_losses(model: nn.Module, data: Encoded, idx: list[int], pad_id: int, device: torch.device, copies: int = 1) -> list[torch.Tensor]:
    """The mean training loss of each of ``copies`` configurations on examples ``idx``."""
    inputs = batch_inputs(data, idx, pad_id, device)
    if data.targets is not None:
        if copies > 1:
            raise ValueError("causal-LM tasks train one configuration at a time")
        return [lm_loss(model(**inputs).logits.float(), batch_targets(data, idx, device))]
    logits = _forward(model, inputs, copies)
    labels = data.labels[idx].to(device)
    return [task_loss(logits[c], labels) for c in range(copies)]


def predictions(logits: torch.Tensor, regression: bool) -> torch.Tensor:
    return logits.squeeze(-1) if regression else logits.argmax(-1)


def batch_inputs(data: Encoded, idx: list[int], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    """The model's inputs for examples ``idx``: ids and mask, and segment ids for BERT-style sentence pairs."""
    input_ids, mask = pad_batch([data.ids[i] for i in idx], pad_id, device)
    inputs = {"input_ids": input_ids, "attention_mask": mask}
    if data.types is not None:
        inputs["token_type_ids"] = pad_batch([data.types[i] for i in idx], 0, device)[0]
    return inputs


def _forward(model: nn.Module, inputs: dict[str, torch.Tensor], copies: int) -> torch.Tensor:
    """Logits of shape (copies, batch, labels): the batch repeated once per configuration."""
    if copies > 1:
        inputs = {k: v.repeat(copies, 1) for k, v in inputs.items()}
    return model(**inputs).logits.float().reshape(copies, -1, model.config.num_labels)


def default_eval_batch_size(device: torch.device) -> int:
    """Validation batch size when the recipe leaves it open: small sorted batches are fastest on a CPU."""
    return 32 if device.type == "cpu" else 256


@torch.no_grad()
def evaluate_copies(model: nn.Module, data: Encoded, pad_id: int, batch_size: int | None = None, limit: int | None = None,
                    copies: int = 1) -> list[tuple[float, float]]:
    """(task metric, mean loss) of each of ``copies`` configurations, in length-sorted batches.

    The metric is ``data.metric`` (accuracy, Matthews correlation, F1, Pearson or Spearman) over
    the first ``limit`` examples; the loss is cross-entropy, or squared error for float targets.
    A causal-LM split (``data.targets``) gives minus the mean NLL per response token and the NLL, or
    (scored by ``exact_match``) the fraction of greedy answers equal to their reference and the NLL.
    """
    device = _device_of(model)
    batch_size = batch_size or default_eval_batch_size(device)
    was_training = model.training
    model.eval()
    n = len(data) if limit is None else min(limit, len(data))
    order = sorted(range(n), key=lambda i: len(data.ids[i]))
    if data.targets is not None:  # causal LM: the mean NLL per response token; the metric is its negative, or exact match
        total = sum(lm_loss(model(**batch_inputs(data, order[k : k + batch_size], pad_id, device)).logits.float(),
                            batch_targets(data, order[k : k + batch_size], device), reduction="sum").item()
                    for k in range(0, n, batch_size))
        nll = total / max(1, int(data.labels[:n].sum()))
        metric = -nll if data.answer_key is None else float(np.mean(exact_matches(model, data, order, pad_id, batch_size)))
        model.train(was_training)
        return [(metric, nll)] * copies
    preds, losses = predict(model, data, list(range(n)), pad_id, batch_size, copies)
    model.train(was_training)
    labels = data.labels[:n].numpy()
    return [(metrics.compute(data.metric, preds[c], labels), float(losses[c].sum()) / n) for c in range(copies)]


@torch.no_grad()
def predict(model: nn.Module, data: Encoded, idx: list[int], pad_id: int, batch_size: int,
            copies: int = 1) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Each configuration's predictions of examples ``idx`` (in that order) and each example's loss
    (cross-entropy, i.e. minus the log-probability of the gold label, or the squared error), run in
    length-sorted batches (a classification or regression split; the model in eval mode)."""
    device = _device_of(model)
    order = sorted(range(len(idx)), key=lambda j: len(data.ids[idx[j]]))
    preds = [torch.empty(len(idx), dtype=data.labels.dtype) for _ in range(copies)]
    losses = [torch.empty(len(idx), dtype=torch.float64) for _ in range(copies)]
    for k in range(0, len(idx), batch_size):
        positions = order[k : k + batch_size]
        batch = [idx[j] for j in positions]
        labels = data.labels[batch].to(device)
        logits = _forward(model, batch_inputs(data, batch, pad_id, device), copies)
        for c in range(copies):
            losses[c][positions] = task_loss(logits[c], labels, reduction="none").double().cpu()
            preds[c][positions] = predictions(logits[c], data.regression).to(preds[c].dtype).cpu()
    return [p.numpy() for p in preds], [x.numpy() for x in losses]


def prompt_length(targets: torch.Tensor) -> int:
    """Where a causal-LM example's response starts: its prompt positions are the leading -100 targets."""
    scored = (targets != -100).nonzero()
    return int(scored[0]) if len(scored) else len(targets)


@torch.no_grad()
def exact_matches(model: nn.Module, data: Encoded, idx: list[int], pad_id: int, batch_size: int) -> list[bool]:
    """Whether the greedy answer to each example's prompt (``idx``) equals its reference, whitespace stripped.

    Each answer is generated up to its reference's length (end-of-text included) plus
    :data:`rankgym.instruct.ANSWER_MARGIN` tokens and ends at the first end-of-text. Prompts are
    left-padded so that every row's answer starts at the same column (what ``generate`` expects of
    a decoder); ``generate`` then derives the positions from the attention mask.
    """
    from rankgym.instruct import ANSWER_MARGIN

    key, device = data.answer_key, _device_of(model)
    out: list[bool] = []
    for k in range(0, len(idx), batch_size):
        batch = idx[k : k + batch_size]
        starts = [prompt_length(data.targets[i]) for i in batch]
        limits = [len(data.ids[i]) - s + ANSWER_MARGIN for i, s in zip(batch, starts)]
        width = max(starts)
        input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, (i, s) in enumerate(zip(batch, starts)):
            input_ids[row, width - s :] = data.ids[i][:s]
            mask[row, width - s :] = 1
        generated = model.generate(input_ids=input_ids.to(device), attention_mask=mask.to(device), max_new_tokens=max(limits),
                                   do_sample=False, pad_token_id=pad_id, eos_token_id=key.eos_id)[:, width:].cpu()
        for row, (i, limit) in enumerate(zip(batch, limits)):
            answer = generated[row, :limit].tolist()
            if key.eos_id in answer:
                answer = answer[: answer.index(key.eos_id)]
            out.append(key.decode(answer).strip() == key.answers[i])
    return out


def evaluate(model: nn.Module, data: Encoded, pad_id: int, batch_size: int | None = None, limit: int | None = None) -> tuple[float, float]:
    """(task metric, mean loss) over ``data`` in length-sorted batches."""
    return evaluate_copies(model, data, pad_id, batch_size, limit)[0]


def module_generator(seed: int, name: str) -> torch.Generator:
    """The random generator of one module's factors, seeded by (seed, module name).

    One generator per module, not one consumed in module order: changing one module's rank then
    leaves every other module's initial factors and the head as they were, so two maps that differ
    in one module compare under common random numbers.
    """
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


def init_adapters(model: nn.Module, seed: int) -> None:
    """Seeded fresh adapters (at their current ranks, each module by (seed, name)) and a task head (by seed)."""
    for name, layer in lora_layers(model).items():
        layer.reset_adapter(layer.rank, module_generator(seed, name))
    init_head(model, torch.Generator().manual_seed(seed))


def clip_per_copy(params: list[nn.Parameter], copies: int, max_norm: float) -> None:
    """Clip each configuration's gradient to ``max_norm`` on its own, as it would be clipped alone.

    With ``copies > 1`` every trainable tensor is stacked along dim 0, one slice per configuration
    slot (batched adapters and heads, which may hold more slots than configurations in the batch),
    so one global norm would couple the configurations.
    """
    if copies == 1:
        torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)
        return
    grads = [p.grad for p in params if p.grad is not None]
    norms = torch.stack([g.reshape(g.shape[0], -1).pow(2).sum(1) for g in grads]).sum(0).sqrt()  # one per slot
    factor = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(factor.view(-1, *([1] * (g.dim() - 1))))


def finetune(
    model: nn.Module,
    train: Encoded,
    validation: Encoded,
    pad_id: int,
    recipe: Recipe = Recipe(),
    seed: int = 0,
    progress: bool = False,
    description: str = "finetune",
    before_step: Callable[[int], None] | None = None,
    after_step: Callable[[int], None] | None = None,
) -> FinetuneResult:
    """Train the model's trainable parameters with AdamW for ``recipe``'s budget, then validate.

    ``train`` is the whole training set of this run (see :func:`training_subset`). The adapters are
    trained as they are (call :func:`init_adapters` first for a fresh start).
    Raises :class:`TrainingDiverged` on a NaN or infinite loss.
    """
    result = finetune_copies(model, train, validation, pad_id, recipe, seed, progress, description, copies=1, before_step=before_step,
                             after_step=after_step)[0]
    if result.error:
        raise TrainingDiverged(result.error)
    return result


def finetune_copies(
    model: nn.Module,
    train: Encoded,
    validation: Encoded,
    pad_id: int,
    recipe: Recipe = Recipe(),
    seed: int = 0,
    progress: bool = False,
    description: str = "finetune",
    copies: int = 1,
    before_step: Callable[[int], None] | None = None,
    after_step: Callable[[int], None] | None = None,
) -> list[FinetuneResult]:
    """:func:`finetune` for a model holding ``copies`` configurations (batched LoRA layers and heads).

    Every batch is repeated once per configuration; each configuration's loss is the mean over its
    own slice, and the sum of those losses is back-propagated, so each configuration's gradients,
    and (AdamW being elementwise) its updates, are those it would get alone. A configuration whose
    loss becomes NaN or infinite stops counting and is reported with its error.
    ``before_step(step)`` runs before every optimizer step's forward (the elastic evaluator draws
    its ranks there); ``after_step(step)`` after every optimizer step, gradients still in place
    (AdaLoRA's budget allocation runs there).
    """
    start = time.perf_counter()
    device = _device_of(model)
    torch.manual_seed(seed)  # dropout masks
    params = [p for p in model.parameters() if p.requires_grad]
    # nothing to train (a language model's empty map: rankgym's layers all at rank 0, no head): the base
    # model is validated as it is. Models without rankgym's layers (PEFT's, for AdaLoRA) train their params.
    layers = lora_layers(model)
    trainable = bool(params) and (not layers or bool(head_modules(model)) or any(layer.rank for layer in layers.values()))
    batches = training_order(train, recipe.batch_size, seed, recipe.epochs) if trainable else []
    optimizer = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay, foreach=True)
    warmup = max(1, int(recipe.warmup * len(batches)))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (len(batches) - s) / max(1, len(batches) - warmup)))
    )
    model.train()
    losses: list[list[float]] = [[] for _ in range(copies)]
    errors: list[str | None] = [None] * copies
    bar = tqdm(batches, desc=description, unit="batch", disable=not progress, leave=False)
    for step, idx in enumerate(bar):
        if before_step is not None:
            before_step(step)
        per_copy = batch_losses(model, train, idx, pad_id, device, copies)
        values = torch.stack(per_copy).tolist()
        for c, value in enumerate(values):
            if errors[c] is None and not math.isfinite(value):
                errors[c] = f"training loss became {value} at step {step}; lower the learning rate"
            losses[c].append(value)
        if all(errors):
            break
        optimizer.zero_grad(set_to_none=True)
        sum(loss for loss, error in zip(per_copy, errors) if error is None).backward()
        if recipe.max_grad_norm is not None:
            clip_per_copy(params, copies, recipe.max_grad_norm)
        optimizer.step()
        schedule.step()
        if after_step is not None:
            after_step(step)
        if progress and step % 10 == 0:
            bar.set_postfix(loss=f"{values[0]:.3f}")
    bar.close()
    if all(errors):  # nothing left to validate
        scores = [(math.nan, math.nan)] * copies
    else:
        scores = evaluate_copies(model, validation, pad_id, recipe.eval_batch_size, recipe.val_examples, copies)
    seconds = time.perf_counter() - start
    return [
        FinetuneResult(math.nan if errors[c] else scores[c][0], scores[c][1], sum(losses[c]) / max(1, len(losses[c])),
                       seconds, len(losses[c]), losses[c], errors[c])
        for c in range(copies)
    ]
