"""The training recipe of an evaluation: budget, optimiser settings and alpha policy (no torch here,
so that the registry, imported by ``import rankgym``, stays light)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from rankgym.errors import ConfigError

# The alpha policy evaluations use unless told otherwise. rsLoRA's scale alpha / sqrt(r) keeps the
# size of an update about the same at every rank, so one learning rate suits every map: with
# PEFT's alpha 8 / r, rank 2 (scale 4) collapsed to the majority class on one seed in three at the
# full budget, while maps with few parameters (query+value only) were under-trained at the env's
# budget (0.75 vs 0.81 with this policy). Measured with benchmarks/fidelity.py (README).
ALPHA_POLICY = {"alpha": 4.0, "alpha_mode": "fixed", "rslora": True}


@dataclass(frozen=True)
class Recipe:
    """A fixed training budget, so that evaluations of different rank maps compare.

    The defaults are the full recipe (``rankgym finetune``, promotion, the elastic adapter). The
    environments' short budgets train faster (``EnvConfig.lr``): 32 steps at this rate leave
    maps under-trained.

    Attributes:
        train_examples: size of the seeded training subset (capped at the training pool).
        epochs: passes over that subset, each in its own seeded order; the learning-rate schedule
            spans all of them. Small tasks (RTE, MRPC, CoLA) need several: one pass is 70-240 steps.
        batch_size: training batch size.
        lr: AdamW learning rate for the adapters and the head.
        weight_decay: AdamW weight decay.
        warmup: fraction of steps with a linear warm-up; the rate then decays linearly to 0.
        max_grad_norm: clip each configuration's gradient to this L2 norm (None: no clipping).
        max_length: tokens kept per sentence.
        eval_batch_size: validation batch size (None: 32 on a CPU, where small sorted batches are
            fastest, 256 on a GPU); it changes only float rounding.
        val_examples: validate on the first N validation examples (None: all of them).
    """

    train_examples: int = 8192
    epochs: int = 1
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup: float = 0.06
    max_grad_norm: float | None = 1.0
    max_length: int = 128
    eval_batch_size: int | None = None
    val_examples: int | None = None

    def __post_init__(self) -> None:
        for name in ("train_examples", "epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a whole number >= 1, got {value!r}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr!r}")

    def to_dict(self) -> dict:
        return asdict(self)


# The full recipe of each GLUE task where the default does not suit it (`rankgym finetune --task`,
# promotion, the elastic adapter), chosen on the score split by benchmarks/recipes.py (README,
# "A recipe per task"; MiniLM, uniform rank 8, seed 0). The small tasks need several epochs: one
# pass over RTE's training pool is 70 steps. CoLA: Matthews 0.296 / 0.375 / 0.367 after 2 / 4 / 8
# epochs; RTE: accuracy 0.621 after 5 epochs at 256 tokens (its premises are long; 0.603 at lr
# 5e-4; 12 epochs level off at 0.59 from the fifth, seeds 0-2, so more passes do not pay); MRPC:
# F1 0.837 / 0.840 after 3 / 6 epochs. Where settings score within a point, the cheaper one is
# kept: the score splits hold 277-1,000 examples, a point is inside their noise.
# SST-2 and STS-B keep the default (one pass over 8,192 examples).
TASK_RECIPES: dict[str, dict] = {
    "cola": dict(epochs=4),
    "rte": dict(epochs=5, max_length=256),
    "mrpc": dict(epochs=3),
}


def full_recipe(task: str, **overrides) -> Recipe:
    """The full recipe of ``task`` (its :data:`TASK_RECIPES` entry over the defaults), with the
    ``overrides`` that are not None on top: what a user typed wins over the task's choice."""
    return Recipe(**{**TASK_RECIPES.get(task, {}), **{k: v for k, v in overrides.items() if v is not None}})
