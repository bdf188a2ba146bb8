"""The data types of a task, below the loaders (:mod:`rankgym.tasks` for GLUE and TSV/CSV folders,
:mod:`rankgym.instruct` for causal-LM JSON Lines), so that neither loader imports the other's module."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from rankgym.errors import RankgymError

if TYPE_CHECKING:
    import torch


class TaskError(RankgymError, RuntimeError):
    """Task data that cannot be found or read."""


@dataclass
class Split:
    """Examples: a text (and, for sentence pairs, a second text) and a label (class id or float target)."""

    texts: list[str]
    labels: list
    pairs: list[str] | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: list[int]) -> "Split":
        pairs = [self.pairs[i] for i in indices] if self.pairs is not None else None
        return Split([self.texts[i] for i in indices], [self.labels[i] for i in indices], pairs)


@dataclass
class TaskData:
    """A task: two splits, the number of labels (1: regression, 0: a causal-LM task, whose labels are
    the responses, see :mod:`rankgym.instruct`) and the metric (higher is better)."""

    name: str
    train: Split
    validation: Split
    num_labels: int
    metric: str = "accuracy"
    label_names: list[str] = field(default_factory=list)

    @property
    def regression(self) -> bool:
        return self.num_labels == 1

    @property
    def causal_lm(self) -> bool:
        return self.num_labels == 0

    @property
    def kind(self) -> str:
        return "causal_lm" if self.causal_lm else "regression" if self.regression else "classification"


@dataclass
class AnswerKey:
    """What ``exact_match`` compares a causal LM's greedy answers with: each kept example's reference
    response (whitespace stripped), the tokenizer's ``decode`` and its end-of-text id (where an answer stops)."""

    answers: list[str]
    decode: Callable[[list[int]], str]
    eos_id: int

    def take(self, indices: list[int]) -> "AnswerKey":
        return AnswerKey([self.answers[i] for i in indices], self.decode, self.eos_id)


@dataclass
class Encoded:
    """A tokenised split: unpadded token ids with their labels and the task's metric, kept resident."""

    ids: list[torch.Tensor]
    labels: torch.Tensor  # long class ids, or float targets for regression
    metric: str = "accuracy"
    types: list[torch.Tensor] | None = None  # segment ids of sentence pairs, where the tokenizer makes them (BERT)
    targets: list[torch.Tensor] | None = None  # causal LM: each position's label (-100: not scored); labels count them
    answer_key: AnswerKey | None = None  # causal LM scored by exact_match

    @property
    def lengths(self) -> list[int]:
        return [len(x) for x in self.ids]

    @property
    def regression(self) -> bool:
        return self.labels.is_floating_point()

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, indices: list[int]) -> "Encoded":
        types = [self.types[i] for i in indices] if self.types is not None else None
        targets = [self.targets[i] for i in indices] if self.targets is not None else None
        key = self.answer_key.take(indices) if self.answer_key is not None else None
        return Encoded([self.ids[i] for i in indices], self.labels[indices], self.metric, types, targets, key)
