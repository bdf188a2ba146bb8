"""AutoLoRA (the seed article, section 4.1, after Zhang et al., 2024), done as the paper means it.

Every adapter starts at ``max_rank`` and each of its rank-1 components j gets a selection
variable: the update is B diag(g) A with g_j = sigmoid(logit_j) (the article's Gumbel-softmax over
the components would make them compete for one slot; a sigmoid per component lets any number
survive). Training alternates, first-order, as AutoLoRA's bilevel search does: the factors and the
head take a step on a training batch, then the selection logits a step on a batch held out of that
training (a fifth of it), whose loss adds a sparsity term

    penalty * max(0, expected parameters - budget) / budget,  expected = sum_ij g_ij (in_i + out_i)

that pushes toward the budget and stops pushing once the gates fit it. The logits move by SGD
(momentum 0.9): Adam would give every logit the same step whatever its gradient, and the gates
would stay tied. At the end the gates are thresholded (:func:`hard_threshold`): components are
taken from the highest selection logit down while they fit the budget, so the map spends the
budget like every other strategy's. No floor on the gate value: under a tight budget the penalty's
momentum carries every gate close to 0 (at 5 % of uniform rank 8 on MiniLM all of them ended
below 0.05, and a floor left the empty map), while the logits still order the components.
The surviving count per module is the map, which is then retrained from scratch and promoted like
any other.

Written by hand: PEFT has no gated LoRA layer (AdaLoRA masks by sensitivity, not learned gates).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from rankgym.core import ModuleInfo
from rankgym.lora.inject import apply_rank_map, replace_module
from rankgym.lora.layer import LoRALayer
from rankgym.rankmap import RankMap
from rankgym.recipe import ALPHA_POLICY, Recipe
from rankgym.taskdata import Encoded
from rankgym.training import batch_inputs, init_adapters, task_loss, training_order


class GatedLoRA(nn.Module):
    """A :class:`LoRALayer` at its ``max_rank`` with one selection logit per rank component."""

    def __init__(self, layer: LoRALayer, initial_logit: float = 3.0) -> None:
        super().__init__()
        self.layer = layer
        layer.set_rank(layer.max_rank)
        self.logits = nn.Parameter(torch.full((layer.max_rank,), initial_logit, device=layer.lora_A.device))

    def gates(self) -> torch.Tensor:
        return torch.sigmoid(self.logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layer = self.layer
        h = nn.functional.linear(x.to(layer.lora_A.dtype), layer.lora_A) * self.gates()
        return layer.base(x) + nn.functional.linear(h, layer.lora_B * layer.scale).to(x.dtype)


def hard_threshold(logits: dict[str, np.ndarray], modules: Sequence[ModuleInfo], budget_params: int) -> dict[str, int]:
    """Ranks from selection logits: components from the highest logit down, each one that still fits ``budget_params``."""
    cost = {m.name: m.in_features + m.out_features for m in modules}
    candidates = sorted(((float(g), name) for name, values in logits.items() for g in values), reverse=True)
    ranks, spent = {m.name: 0 for m in modules}, 0
    for _, name in candidates:
        if spent + cost[name] <= budget_params:
            ranks[name] += 1
            spent += cost[name]
    return ranks


def autolora_ranks(model: nn.Module, modules: Sequence[ModuleInfo], train: Encoded, pad_id: int, budget_params: int, max_rank: int,
                   recipe: Recipe = Recipe(), seed: int = 0, gate_lr: float = 10.0, penalty: float = 1.0,
                   held_out: float = 0.2) -> tuple[dict[str, int], dict[str, np.ndarray]]:
    """Search the gates on ``train`` (a ``held_out`` share of it for the gates); returns the map and the final selection
    logits (the gates are their sigmoid)."""
    device = next(model.parameters()).device
    names = [m.name for m in modules]
    layers = apply_rank_map(model, RankMap({n: max_rank for n in names}, **ALPHA_POLICY), max_rank=max_rank)
    init_adapters(model, seed)
    gated = {}
    for name in names:
        gated[name] = GatedLoRA(layers[name])
        replace_module(model, name, gated[name])
    cost = torch.tensor([m.in_features + m.out_features for m in modules], dtype=torch.float32, device=device)

    order = np.random.default_rng(seed).permutation(len(train))
    split = int(len(train) * (1 - held_out))
    fit, gate_set = train.take(sorted(order[:split].tolist())), train.take(sorted(order[split:].tolist()))
    weights = [p for n, p in model.named_parameters() if p.requires_grad and not n.endswith(".logits")]
    optimizer = torch.optim.AdamW(weights, lr=recipe.lr, weight_decay=recipe.weight_decay)
    gate_optimizer = torch.optim.SGD([g.logits for g in gated.values()], lr=gate_lr, momentum=0.9)
    gate_batches = training_order(gate_set, recipe.batch_size, seed + 1)
    torch.manual_seed(seed)
    model.train()
    for step, idx in enumerate(training_order(fit, recipe.batch_size, seed)):
        loss = task_loss(model(**batch_inputs(fit, idx, pad_id, device)).logits.float(), fit.labels[idx].to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(weights, recipe.max_grad_norm or float("inf"))
        optimizer.step()

        held = gate_batches[step % len(gate_batches)]
        expected = sum((g.gates() * c).sum() for g, c in zip(gated.values(), cost))
        gate_loss = task_loss(model(**batch_inputs(gate_set, held, pad_id, device)).logits.float(), gate_set.labels[held].to(device))
        gate_loss = gate_loss + penalty * torch.relu(expected - budget_params) / budget_params
        gate_optimizer.zero_grad(set_to_none=True)
        gate_loss.backward()
        gate_optimizer.step()
    model.eval()
    logits = {name: g.logits.detach().cpu().numpy() for name, g in gated.items()}
    for name in names:  # put the plain layers back: the search's model is left as it found its wrappers
        replace_module(model, name, layers[name])
    return hard_threshold(logits, modules, budget_params), logits
