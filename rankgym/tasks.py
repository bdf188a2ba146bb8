"""Tasks: labelled text for training and validation, and the metric that scores a model on it.

``sst2`` reads a GLUE-layout folder (``<dir>/sst2/train.tsv``, ``validation.tsv``) given as an
option or ``$RANKGYM_DATA_DIR``, else the hub (``nyu-mll/glue`` with the ``datasets`` extra).
Any folder holding ``train`` and ``validation`` files in TSV or CSV is a task too.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from rankgym.errors import RankgymError

if TYPE_CHECKING:
    import torch

DATA_DIR_ENV = "RANKGYM_DATA_DIR"
TASKS = ("sst2",)


class TaskError(RankgymError, RuntimeError):
    """Task data that cannot be found or read."""


@dataclass
class Split:
    texts: list[str]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: list[int]) -> "Split":
        return Split([self.texts[i] for i in indices], [self.labels[i] for i in indices])


@dataclass
class TaskData:
    """A classification task: two splits, the number of labels and the metric's name."""

    name: str
    train: Split
    validation: Split
    num_labels: int
    metric: str = "accuracy"
    label_names: list[str] = field(default_factory=list)


@dataclass
class Encoded:
    """A tokenised split: unpadded token ids with their labels, kept resident between steps."""

    ids: list[torch.Tensor]
    labels: torch.Tensor

    @property
    def lengths(self) -> list[int]:
        return [len(x) for x in self.ids]

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, indices: list[int]) -> "Encoded":
        return Encoded([self.ids[i] for i in indices], self.labels[indices])


def _read_table(path: Path, text_column: str, label_column: str) -> tuple[list[str], list[str]]:
    delimiter = "\t" if path.suffix == ".tsv" else ","
    # GLUE's TSV files are not quoted: a quote character is part of the sentence.
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter=delimiter, quoting=quoting)
        missing = {text_column, label_column} - set(reader.fieldnames or ())
        if missing:
            raise TaskError(
                f"{path}: missing column {', '.join(map(repr, sorted(missing)))} (it has {', '.join(reader.fieldnames or [])}); "
                "name them with --text-column / --label-column"
            )
        rows = [(row[text_column], row[label_column]) for row in reader]
    return [t for t, _ in rows], [lab.strip() for _, lab in rows]


def _find(folder: Path, stem: str) -> Path | None:
    for suffix in (".tsv", ".csv"):
        if (folder / (stem + suffix)).is_file():
            return folder / (stem + suffix)
    return None


def load_folder(folder: str | Path, name: str | None = None, text_column: str = "sentence", label_column: str = "label") -> TaskData:
    """A task from a folder with ``train`` and ``validation`` files (``.tsv`` or ``.csv``).

    Labels may be integers or strings; strings are numbered in sorted order.
    """
    folder = Path(folder)
    train_file, val_file = _find(folder, "train"), _find(folder, "validation") or _find(folder, "dev")
    if not train_file or not val_file:
        raise TaskError(f"{folder}: needs train.tsv|csv and validation.tsv|csv (or dev.tsv|csv)")
    train_texts, train_raw = _read_table(train_file, text_column, label_column)
    val_texts, val_raw = _read_table(val_file, text_column, label_column)
    names = sorted(set(train_raw) | set(val_raw))
    if all(s.isdigit() for s in names):
        to_id = {s: int(s) for s in names}
        num_labels = max(to_id.values()) + 1
        names = [str(i) for i in range(num_labels)]
    else:
        to_id = {s: i for i, s in enumerate(names)}
        num_labels = len(names)
    return TaskData(
        name or folder.name,
        Split(train_texts, [to_id[s] for s in train_raw]),
        Split(val_texts, [to_id[s] for s in val_raw]),
        num_labels,
        label_names=names,
    )


def _load_sst2_hub() -> TaskData:
    try:
        import datasets
    except ImportError:
        raise TaskError(
            f"SST-2 not found: set {DATA_DIR_ENV} or --data-dir to a GLUE folder holding sst2/train.tsv, "
            "or `pip install rankgym[hub]` to download it from the Hugging Face hub"
        ) from None
    from rankgym.backbones import _hub_reachable

    if not _hub_reachable():
        raise TaskError(
            f"SST-2 not found: the Hugging Face hub is unreachable; set {DATA_DIR_ENV} or --data-dir to a GLUE folder holding sst2/train.tsv"
        )
    glue = datasets.load_dataset("nyu-mll/glue", "sst2")
    split = lambda s: Split(list(glue[s]["sentence"]), [int(x) for x in glue[s]["label"]])  # noqa: E731
    return TaskData("sst2", split("train"), split("validation"), 2, label_names=["0", "1"])


def load_task(
    task: str, data_dir: str | Path | None = None, text_column: str = "sentence", label_column: str = "label"
) -> TaskData:
    """Load ``sst2`` (GLUE folder, then hub) or a user's folder of ``train``/``validation`` TSV/CSV files."""
    if task in TASKS:
        data_dir = data_dir or os.environ.get(DATA_DIR_ENV)
        if data_dir:
            for folder in (Path(data_dir) / task, Path(data_dir)):
                if _find(folder, "train"):
                    return load_folder(folder, task, "sentence", "label")
            raise TaskError(f"{data_dir}: no {task}/train.tsv in this data directory (GLUE layout: <dir>/{task}/train.tsv)")
        return _load_sst2_hub()
    if Path(task).is_dir():
        return load_folder(task, None, text_column, label_column)
    raise TaskError(f"unknown task {task!r}: use one of {', '.join(TASKS)} or a folder with train/validation TSV or CSV files")


SCORE_SPLIT_SEED = 20261128  # one fixed split per task: every seed and evaluator scores on the same examples


def hold_out_score_split(data: TaskData, size: int | None = None, seed: int = SCORE_SPLIT_SEED) -> tuple[Split, Split]:
    """(training pool, score split): ``size`` examples held out of the training file, seeded.

    A search scores maps on the score split and never on the validation split, which only final,
    retrained numbers touch (the best of many noisy scores on one split flatters the winner).
    Every training subset is drawn from the pool, so no score example is ever trained on.
    ``size`` defaults to the validation split's size, at most 1,000.
    """
    import torch

    size = min(len(data.validation), 1000) if size is None else size
    if not 0 < size < len(data.train):
        raise TaskError(f"score split of {size} examples does not fit {data.name}'s {len(data.train)} training examples")
    order = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(seed)).tolist()
    return data.train.subset(sorted(order[size:])), data.train.subset(sorted(order[:size]))


_ENCODED: dict[tuple, Encoded] = {}


def encode(split: Split, tokenizer, max_length: int = 128) -> Encoded:
    """Tokenise a split once per process (cached by tokenizer, length and content) and reuse it."""
    import torch

    key = (tokenizer.name_or_path, len(tokenizer), max_length, hash(tuple(split.texts)), hash(tuple(split.labels)))
    if key not in _ENCODED:
        ids = tokenizer(split.texts, truncation=True, max_length=max_length)["input_ids"]
        _ENCODED[key] = Encoded([torch.tensor(x, dtype=torch.long) for x in ids], torch.tensor(split.labels, dtype=torch.long))
    return _ENCODED[key]
