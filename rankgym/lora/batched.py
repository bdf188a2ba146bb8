"""K LoRA configurations on one frozen base: the batch holds K copies of the data, slice k goes
through configuration k's adapters. One forward and backward then trains K rank maps at once.

Adapters are stacked at a common ``max_rank`` and masked to each configuration's rank, so changing
the ranks never reallocates or recompiles. PEFT has no such mode (its adapters are one per module
and switch per call), hence this module.
"""

from __future__ import annotations

import torch
from torch import nn

from rankgym.lora.layer import AlphaMode, base_shape, factor_dtype, initial_A, lora_scale


class BatchedLoRALayer(nn.Module):
    """A frozen ``nn.Linear`` / ``Conv1D`` plus ``k`` adapters, one per slice of the batch.

    Args:
        base: the module to adapt (frozen).
        k: number of configurations (the batch is k equal slices).
        max_rank: rank the stacked factors are allocated at.
        alpha / alpha_mode / rslora: the alpha policy (as :class:`~rankgym.lora.layer.LoRALayer`).
    """

    def __init__(self, base: nn.Module, k: int, max_rank: int, alpha: float = 8.0, alpha_mode: AlphaMode = "fixed",
                 rslora: bool = False) -> None:
        super().__init__()
        self.in_features, self.out_features = base_shape(base)
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        self.k, self.max_rank = k, max_rank
        self.alpha, self.alpha_mode, self.rslora = alpha, alpha_mode, rslora
        w = base.weight
        dtype = factor_dtype(w.dtype)
        self.lora_A = nn.Parameter(torch.zeros(k, max_rank, self.in_features, dtype=dtype, device=w.device))
        self.lora_B = nn.Parameter(torch.zeros(k, self.out_features, max_rank, dtype=dtype, device=w.device))
        self.register_buffer("mask", torch.zeros(k, max_rank, dtype=dtype, device=w.device), persistent=False)
        self.ranks = [0] * k
        self.active = k  # configurations in the current batch (the first `active` slices)

    def set_ranks(self, ranks: list[int], generators: list[torch.Generator]) -> None:
        """Fresh adapters for ``len(ranks)`` configurations: configuration i gets rank ranks[i], A drawn as
        the single layer draws it, B = 0. The batch must then hold ``len(ranks)`` slices."""
        if len(ranks) > self.k or max(ranks) > self.max_rank:
            raise ValueError(f"{len(ranks)} configurations with ranks up to {max(ranks)} do not fit k={self.k}, max_rank={self.max_rank}")
        with torch.no_grad():
            self.lora_A.zero_()
            self.lora_B.zero_()
            self.mask.zero_()
            for i, (r, g) in enumerate(zip(ranks, generators)):
                self.lora_A[i, :r] = initial_A(r, self.in_features, g).to(self.lora_A)
                self.mask[i, :r] = lora_scale(r, self.alpha, self.alpha_mode, self.rslora)
        self.ranks, self.active = list(ranks), len(ranks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        r, n = max(self.ranks), self.active
        if r == 0:
            return out
        xs = x.reshape(n, -1, self.in_features).to(self.lora_A.dtype)
        h = torch.bmm(xs, self.lora_A[:n, :r].transpose(1, 2)) * self.mask[:n, None, :r]  # mask holds each scale
        return out + torch.bmm(h, self.lora_B[:n, :, :r].transpose(1, 2)).reshape(out.shape).to(out.dtype)


class BatchedLinear(nn.Module):
    """``k`` independent copies of a task head's linear layer (fp32), one per slice of the batch.

    ``pretrained``: every copy starts from the layer's own weights (a pretrained pooler), kept in
    ``initial``; otherwise the evaluator draws each copy's start.
    """

    def __init__(self, head: nn.Linear, k: int, pretrained: bool = False) -> None:
        super().__init__()
        self.k, self.in_features, self.out_features = k, head.in_features, head.out_features
        weight, bias = head.weight.detach().float(), head.bias.detach().float() if head.bias is not None else None
        self.weight = nn.Parameter(weight[None].repeat(k, 1, 1).clone())
        self.bias = nn.Parameter(bias[None].repeat(k, 1).clone()) if bias is not None else None
        self.initial = (weight.clone(), bias.clone() if bias is not None else None) if pretrained else None
        self.active = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape, n = x.shape[:-1], self.active
        x = x.to(self.weight.dtype)  # a bf16 or fp16 base feeds the fp32 head
        y = torch.bmm(x.reshape(n, -1, self.in_features), self.weight[:n].transpose(1, 2))
        if self.bias is not None:
            y = y + self.bias[:n, None, :]
        return y.reshape(*shape, self.out_features)
