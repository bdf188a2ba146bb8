"""The shipped LoRA layer: a frozen linear map plus a rank-r update whose rank can change in place.

The factors are allocated once at ``max_rank``; the active rank ``r`` is a prefix of the
components, so growing or shrinking never reallocates and nothing has to be rebuilt or recompiled
when ranks change. Output = base(x) + scale(r) * B[:, :r] A[:r] x.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

AlphaMode = Literal["fixed", "ratio"]
ShrinkMode = Literal["prefix", "svd"]


def adaptable(module: nn.Module) -> bool:
    """Whether rankgym can put a LoRA adapter on ``module``."""
    return isinstance(module, (nn.Linear, Conv1D))


def base_shape(module: nn.Module) -> tuple[int, int]:
    """(in_features, out_features) of an ``nn.Linear`` or of GPT-2's ``Conv1D`` (weight in × out)."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if isinstance(module, Conv1D):
        return module.weight.shape[0], module.weight.shape[1]
    raise TypeError(f"cannot adapt a {type(module).__name__}: only nn.Linear and transformers Conv1D")


def lora_scale(r: int, alpha: float, alpha_mode: AlphaMode = "fixed", rslora: bool = False) -> float:
    """The factor in front of B·A: lora_alpha / r (or / sqrt(r) for rsLoRA).

    ``alpha_mode="fixed"`` uses ``alpha`` as lora_alpha for every rank (PEFT's ``lora_alpha``);
    ``"ratio"`` uses lora_alpha = alpha * r, so the scale does not change with the rank.
    """
    if r == 0:
        return 0.0
    lora_alpha = alpha * r if alpha_mode == "ratio" else alpha
    return lora_alpha / (math.sqrt(r) if rslora else r)


def factor_dtype(base_dtype: torch.dtype) -> torch.dtype:
    """Adapters train in fp32 over a half-precision base (bf16 / fp16 factors lose small updates)."""
    return torch.float32 if base_dtype in (torch.float16, torch.bfloat16) else base_dtype


def initial_A(rows: int, in_features: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Fresh rows of A as PEFT initialises them (kaiming_uniform_(a=sqrt(5)): U(-1/sqrt(in), 1/sqrt(in)))."""
    bound = 1.0 / math.sqrt(in_features)
    return torch.empty(rows, in_features, dtype=torch.float32).uniform_(-bound, bound, generator=generator)


class LoRALayer(nn.Module):
    """A frozen ``nn.Linear`` or ``Conv1D`` with a LoRA update of adjustable rank.

    Args:
        base: the module to adapt; its parameters are frozen.
        rank: active rank r (0 = no adapter: the module is exactly ``base``).
        max_rank: rank the factors are allocated at; ``rank`` may later grow up to it.
        alpha: lora_alpha (``alpha_mode="fixed"``) or lora_alpha / r (``"ratio"``).
        rslora: scale by alpha / sqrt(r) instead of alpha / r.
        dropout: dropout on the adapter's input (off by default, as an evaluation wants).
    """

    def __init__(
        self,
        base: nn.Module,
        rank: int,
        max_rank: int | None = None,
        alpha: float = 8.0,
        alpha_mode: AlphaMode = "fixed",
        rslora: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = base_shape(base)
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        self.max_rank = max(rank, max_rank or rank)
        self._check_rank(self.max_rank)
        self.alpha, self.alpha_mode, self.rslora = alpha, alpha_mode, rslora
        weight = base.weight
        dtype = factor_dtype(weight.dtype)
        self.lora_A = nn.Parameter(torch.zeros(self.max_rank, self.in_features, dtype=dtype, device=weight.device))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, self.max_rank, dtype=dtype, device=weight.device))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False
        self.rank = 0
        self.reset_adapter(rank)

    # -- rank ------------------------------------------------------------------------------
    def _check_rank(self, r: int) -> None:
        limit = min(self.in_features, self.out_features)
        if not isinstance(r, int) or r < 0 or r > limit:
            raise ValueError(f"rank {r!r} is out of range: a {self.in_features}x{self.out_features} layer takes 0..{limit}")

    def _reserve(self, rank: int) -> None:
        """Reallocate the factors when ``rank`` exceeds ``max_rank`` (the one case that allocates)."""
        if rank <= self.max_rank:
            return
        extra = rank - self.max_rank
        with torch.no_grad():
            self.lora_A = nn.Parameter(torch.cat([self.lora_A, self.lora_A.new_zeros(extra, self.in_features)]))
            self.lora_B = nn.Parameter(torch.cat([self.lora_B, self.lora_B.new_zeros(self.out_features, extra)], dim=1))
        self.max_rank = rank

    @property
    def scale(self) -> float:
        return lora_scale(self.rank, self.alpha, self.alpha_mode, self.rslora)

    def _init_components(self, start: int, stop: int, generator: torch.Generator | None = None) -> None:
        """Fresh components start..stop: A as PEFT initialises it (Kaiming-uniform), B = 0."""
        with torch.no_grad():
            self.lora_A[start:stop] = initial_A(stop - start, self.in_features, generator).to(self.lora_A)
            self.lora_B[:, start:stop] = 0

    def reset_adapter(self, rank: int, generator: torch.Generator | None = None) -> None:
        """Re-initialise the adapter in place at ``rank`` (B = 0, so the layer equals its base)."""
        self._check_rank(rank)
        self._ensure_unmerged()
        self._reserve(rank)
        with torch.no_grad():
            self.lora_A.zero_()
            self.lora_B.zero_()
        self._init_components(0, rank, generator)
        self.rank = rank

    def set_rank(self, rank: int, shrink: ShrinkMode = "prefix", generator: torch.Generator | None = None) -> None:
        """Change the active rank in place (above ``max_rank`` the factors are reallocated first).

        Growing adds components with zero B columns and rescales the kept ones so that
        scale · B·A, and hence the output, is unchanged. Shrinking keeps the first ``rank``
        components (``"prefix"``) or replaces the adapter by the best rank-``rank`` approximation
        of the current update scale · B·A (``"svd"``, Eckart–Young).
        """
        self._check_rank(rank)
        self._ensure_unmerged()
        self._reserve(rank)
        old, old_scale = self.rank, self.scale
        if rank == old:
            return
        if rank > old:
            self._init_components(old, rank, generator)
            if old > 0:
                with torch.no_grad():
                    self.lora_B[:, :old] *= old_scale / lora_scale(rank, self.alpha, self.alpha_mode, self.rslora)
        elif shrink == "svd" and rank > 0:
            delta = self.delta_weight().float()  # out x in, scale included
            u, s, vh = torch.linalg.svd(delta, full_matrices=False)
            root = (s[:rank] / lora_scale(rank, self.alpha, self.alpha_mode, self.rslora)).sqrt()
            with torch.no_grad():
                self.lora_B[:, :rank] = (u[:, :rank] * root).to(self.lora_B)
                self.lora_A[:rank] = (root[:, None] * vh[:rank]).to(self.lora_A)
        with torch.no_grad():  # inactive components are kept at zero so that they cost and leak nothing
            self.lora_A[rank:] = 0
            self.lora_B[:, rank:] = 0
        self.rank = rank

    def use_prefix(self, rank: int) -> None:
        """Use the first ``rank`` components, leaving every factor as it is (weight sharing).

        Unlike :meth:`set_rank`, nothing is zeroed or rescaled: the elastic evaluator trains all
        ``max_rank`` components as nested prefixes and switches between them at every step.
        """
        if not 0 <= rank <= self.max_rank:
            raise ValueError(f"prefix rank {rank} is outside 0..max_rank={self.max_rank}")
        self._ensure_unmerged()
        self.rank = rank

    # -- maths -------------------------------------------------------------------------------
    def delta_weight(self) -> torch.Tensor:
        """The update scale · B_r A_r as an out × in matrix (what merging adds to an ``nn.Linear``)."""
        r = self.rank
        return self.scale * (self.lora_B[:, :r] @ self.lora_A[:r])

    def trainable_parameters(self) -> int:
        """Adapter parameters at the active rank: r · (in + out)."""
        return self.rank * (self.in_features + self.out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        if self.rank == 0 or self.merged:
            return out
        r = self.rank
        h = nn.functional.linear(self.dropout(x).to(self.lora_A.dtype), self.lora_A[:r])
        # the scale goes into the small out x r factor, not over the large output
        return out + nn.functional.linear(h, self.lora_B[:, :r] * self.scale).to(out.dtype)

    def _base_delta(self) -> torch.Tensor:
        delta = self.delta_weight()
        return delta.t() if isinstance(self.base, Conv1D) else delta

    def merge(self) -> None:
        """Add the update into the frozen weight; forward then costs what the base costs."""
        if self.merged:
            return
        with torch.no_grad():
            self.base.weight += self._base_delta().to(self.base.weight.dtype)
        self.merged = True

    def unmerge(self, original: torch.Tensor | None = None) -> None:
        """Undo :meth:`merge`: subtract the update, or copy back ``original`` (the weight before merging).

        Subtracting leaves float rounding in the weight; a caller that merges thousands of times
        (the elastic evaluator) keeps the original and restores it exactly.
        """
        if not self.merged:
            return
        with torch.no_grad():
            if original is None:
                self.base.weight -= self._base_delta().to(self.base.weight.dtype)
            else:
                self.base.weight.copy_(original)
        self.merged = False

    def _ensure_unmerged(self) -> None:
        if self.merged:
            raise RuntimeError("this layer is merged; call unmerge() before changing its adapter")

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, rank={self.rank}, max_rank={self.max_rank}, alpha={self.alpha}, alpha_mode={self.alpha_mode}, rslora={self.rslora}"
