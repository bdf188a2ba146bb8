"""Tasks: labelled text for training and validation, and the metric that scores a model on it.

The GLUE tasks ``sst2``, ``cola``, ``mrpc``, ``rte`` and ``stsb`` read the original GLUE files
(``<dir>/<task>/train.tsv`` and ``dev.tsv``, or SST-2's ``validation.tsv``) from ``--data-dir`` or
``$RANKGYM_DATA_DIR``, quirks included (CoLA has no header, MRPC's header starts with a byte-order
mark, RTE's labels are strings, STS-B's target is a float), else the hub (``nyu-mll/glue`` with
the ``datasets`` extra). Any folder holding ``train`` and ``validation`` (or ``dev``) files in TSV
or CSV is a task too: one text column or two (a sentence pair), class labels or float targets; one
holding ``train.jsonl`` is a causal-LM task (:mod:`rankgym.instruct`).
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

from rankgym.instruct import is_jsonl_task, load_jsonl_folder
from rankgym.metrics import check
from rankgym.taskdata import Encoded, Split, TaskData, TaskError

DATA_DIR_ENV = "RANKGYM_DATA_DIR"


@dataclass(frozen=True)
class GlueTask:
    """Where a GLUE task's original files keep their columns (names, or positions without a header)."""

    validation_file: str
    header: bool
    text: tuple  # one column, or two for a sentence pair
    label: str | int
    metric: str
    label_names: tuple[str, ...] = ()  # string labels, in the hub's order (their ids)
    regression: bool = False


GLUE: dict[str, GlueTask] = {
    "sst2": GlueTask("validation", True, ("sentence",), "label", "accuracy"),
    "cola": GlueTask("dev", False, (3,), 1, "matthews"),
    "mrpc": GlueTask("dev", True, ("#1 String", "#2 String"), "Quality", "f1"),
    "rte": GlueTask("dev", True, ("sentence1", "sentence2"), "label", "accuracy", ("entailment", "not_entailment")),
    "stsb": GlueTask("dev", True, ("sentence1", "sentence2"), "score", "pearson", regression=True),
}
TASKS = tuple(GLUE)


def _rows(path: Path, header: bool, columns: tuple) -> list[tuple[int, list[str]]]:
    """(line number, the named columns) of every row; names are resolved through the header."""
    delimiter = "\t" if path.suffix == ".tsv" else ","
    # GLUE's TSV files are not quoted: a quote character is part of the sentence.
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:  # utf-8-sig: MRPC's header starts with a byte-order mark
            rows = list(csv.reader(f, delimiter=delimiter, quoting=quoting))
    except UnicodeDecodeError as err:
        raise TaskError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start}); save it as UTF-8") from None
    except csv.Error as err:  # a NUL byte, an unterminated quote
        raise TaskError(f"{path}: not readable as {'TSV' if delimiter == chr(9) else 'CSV'} ({err})") from None
    first = 1
    if header:
        if not rows:
            raise TaskError(f"{path}: empty file; it needs a header line and examples")
        names, rows, first = rows[0], rows[1:], 2
        missing = [c for c in columns if c not in names]
        if missing:
            raise TaskError(f"{path}: missing column {', '.join(map(repr, sorted(missing)))} (it has {', '.join(names)}); "
                            "name them with --text-column / --label-column")
        columns = tuple(names.index(c) for c in columns)
    out = []
    for line, row in enumerate(rows, first):
        if not row:
            continue
        if len(row) <= max(columns):
            raise TaskError(f"{path}:{line}: {len(row)} columns, expected at least {max(columns) + 1}")
        out.append((line, [row[c] for c in columns]))
    if not out:
        raise TaskError(f"{path}: no examples" + (" after the header line" if header else ""))
    return out


def _read_split(path: Path, header: bool, text: tuple, label, regression: bool | None,
                label_names: tuple[str, ...] = ()) -> tuple[Split, bool]:
    """A split (labels still as written, or floats) and whether its labels are float targets."""
    rows = _rows(path, header, (*text, label))
    texts = [r[0] for _, r in rows]
    pairs = [r[1] for _, r in rows] if len(text) == 2 else None
    raw = [(line, r[-1].strip()) for line, r in rows]
    if regression is None:  # a user's folder: float targets when some label is a float and none a word
        regression = any("." in v for _, v in raw) and all(_is_float(v) for _, v in raw)
    if regression:
        for line, value in raw:
            if not _is_float(value):
                raise TaskError(f"{path}:{line}: target {value!r} in column {label!r} is not a number (a regression task)")
        return Split(texts, [float(v) for _, v in raw], pairs), True
    if label_names:
        for line, value in raw:
            if value not in label_names:
                raise TaskError(f"{path}:{line}: label {value!r} in column {label!r} is none of {', '.join(label_names)}")
    return Split(texts, [v for _, v in raw], pairs), False


def _is_float(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def _find(folder: Path, stem: str) -> Path | None:
    for suffix in (".tsv", ".csv"):
        if (folder / (stem + suffix)).is_file():
            return folder / (stem + suffix)
    return None


def _number_labels(train: Split, validation: Split, label_names: tuple[str, ...] = ()) -> tuple[list[str], int]:
    """Turn string labels into ids in place: given names in order, integers as themselves, else sorted names."""
    raw = set(train.labels) | set(validation.labels)
    if label_names:
        names = list(label_names)
        to_id = {s: i for i, s in enumerate(names)}
    elif all(s.isdigit() for s in raw):
        to_id = {s: int(s) for s in raw}
        names = [str(i) for i in range(max(to_id.values()) + 1)]
    else:
        names = sorted(raw)
        to_id = {s: i for i, s in enumerate(names)}
    for split in (train, validation):
        split.labels = [to_id[s] for s in split.labels]
    return names, len(names)


def load_folder(folder: str | Path, name: str | None = None, text_column: str = "sentence", label_column: str = "label",
                regression: bool | None = None, header: bool = True, metric: str | None = None) -> TaskData:
    """A task from a folder with ``train`` and ``validation`` (or ``dev``) files (``.tsv`` or ``.csv``).

    ``text_column`` names one column, or two separated by a comma for sentence pairs (column
    positions, counted from 0, when ``header=False``). Labels may be integers or strings (strings
    are numbered in sorted order) or float targets (``regression=True``, or detected when
    ``None``: a label with a decimal point and no word makes it a regression task).
    """
    folder = Path(folder)
    train_file, val_file = _find(folder, "train"), _find(folder, "validation") or _find(folder, "dev")
    if not train_file or not val_file:
        raise TaskError(f"{folder}: needs train.tsv|csv and validation.tsv|csv (or dev.tsv|csv)")
    text = tuple(c.strip() for c in text_column.split(","))
    if len(text) > 2:
        raise TaskError(f"--text-column takes one column or two (a sentence pair), got {text_column!r}")
    label: str | int = label_column
    if not header:
        try:
            text, label = tuple(int(c) for c in text), int(label_column)
        except ValueError:
            raise TaskError(f"{folder}: without a header, name columns by position (e.g. --text-column 3 --label-column 1)") from None
    train, is_regression = _read_split(train_file, header, text, label, regression)
    validation, _ = _read_split(val_file, header, text, label, is_regression)
    if is_regression:
        return TaskData(name or folder.name, train, validation, 1, metric or "pearson")
    names, num_labels = _number_labels(train, validation)
    return TaskData(name or folder.name, train, validation, num_labels, metric or "accuracy", names)


def load_glue_folder(task: str, folder: Path) -> TaskData:
    """A GLUE task from its original files, quirks and all."""
    spec = GLUE[task]
    files = [folder / "train.tsv", folder / f"{spec.validation_file}.tsv"]
    if not files[1].is_file() and (folder / "dev.tsv").is_file():
        files[1] = folder / "dev.tsv"
    train, _ = _read_split(files[0], spec.header, spec.text, spec.label, spec.regression, spec.label_names)
    validation, _ = _read_split(files[1], spec.header, spec.text, spec.label, spec.regression, spec.label_names)
    if spec.regression:
        return TaskData(task, train, validation, 1, spec.metric)
    names, num_labels = _number_labels(train, validation, spec.label_names)
    return TaskData(task, train, validation, num_labels, spec.metric, names)


def _load_glue_hub(task: str) -> TaskData:
    where = f"set {DATA_DIR_ENV} or --data-dir to a folder holding the GLUE files ({task}/train.tsv)"
    try:
        import datasets
    except ImportError:
        raise TaskError(f"{task} not found: {where}, or `pip install rankgym[hub]` to download it from the Hugging Face hub") from None
    from rankgym.backbones import _hub_reachable

    if not _hub_reachable():
        raise TaskError(f"{task} not found: the Hugging Face hub is unreachable; {where}")
    spec, glue = GLUE[task], datasets.load_dataset("nyu-mll/glue", task)
    columns = ("sentence",) if len(spec.text) == 1 else ("sentence1", "sentence2")

    def split(name: str) -> Split:
        part = glue[name]
        labels = [float(x) for x in part["label"]] if spec.regression else [int(x) for x in part["label"]]
        return Split(list(part[columns[0]]), labels, list(part[columns[1]]) if len(columns) == 2 else None)

    num_labels = 1 if spec.regression else glue["train"].features["label"].num_classes
    names = [] if spec.regression else list(spec.label_names or map(str, range(num_labels)))
    return TaskData(task, split("train"), split("validation"), num_labels, spec.metric, names)


def load_task(task: str, data_dir: str | Path | None = None, text_column: str = "sentence", label_column: str = "label",
              regression: bool | None = None, header: bool = True, metric: str | None = None) -> TaskData:
    """A GLUE task (its folder under the data directory, then the hub) or a user's folder of TSV/CSV files
    or causal-LM JSON Lines, scored by ``metric`` (default: the task's own; see :data:`rankgym.metrics.BY_KIND`)."""
    data = _load_task(task, data_dir, text_column, label_column, regression, header, metric)
    if metric is not None:
        data.metric = check(metric, data.kind, data.num_labels)
    return data


def _load_task(task, data_dir, text_column, label_column, regression, header, metric) -> TaskData:
    if task in TASKS:
        data_dir = data_dir or os.environ.get(DATA_DIR_ENV)
        if data_dir:
            for folder in (Path(data_dir) / task, Path(data_dir)):
                if (folder / "train.tsv").is_file():
                    return load_glue_folder(task, folder)
            raise TaskError(f"{data_dir}: no {task}/train.tsv in this data directory (GLUE layout: <dir>/{task}/train.tsv)")
        return _load_glue_hub(task)
    if Path(task).is_dir():
        if is_jsonl_task(task):
            return load_jsonl_folder(task, metric=metric)
        return load_folder(task, None, text_column, label_column, regression, header)
    raise TaskError(f"unknown task {task!r}: use one of {', '.join(TASKS)}, a folder with train/validation TSV or CSV files, "
                    "or one with train/validation JSON Lines (a causal-LM task)")


def standardized(splits: list[Split], reference: Split) -> list[Split]:
    """Float targets in units of ``reference``'s standard deviation around its mean.

    A fresh head starts near 0 while STS-B's targets average 2.7: at AdamW's per-step size the
    bias alone needs thousands of steps to get there. Pearson and Spearman correlations do not
    change under this affine map, so metrics are the same; the loss is in standard units.
    """
    import statistics

    mean, std = statistics.fmean(reference.labels), statistics.pstdev(reference.labels) or 1.0
    return [Split(s.texts, [(y - mean) / std for y in s.labels], s.pairs) for s in splits]


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


def _joined_pairs(tokenizer, first: list[str], second: list[str], max_length: int) -> list[list[int]]:
    """a <eos> b for tokenizers whose pair encoding only concatenates (GPT-2's), so the two texts
    stay apart; the longer text is trimmed first when the pair is too long."""
    sep = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    out = []
    for a, b in zip(tokenizer(first)["input_ids"], tokenizer(second)["input_ids"]):
        while len(a) + len(b) + 1 > max_length:
            a, b = (a[:-1], b) if len(a) >= len(b) else (a, b[:-1])
        out.append(a + [sep] + b)
    return out


def encode(split: Split, tokenizer, max_length: int = 128, metric: str = "accuracy") -> Encoded:
    """Tokenise a split once per process (cached by tokenizer, length and content) and reuse it.

    Sentence pairs go through the tokenizer's own pair encoding (BERT: [CLS] a [SEP] b [SEP]), or
    are joined by the end-of-text token where that encoding only concatenates (GPT-2).
    """
    import torch

    pairs = tuple(split.pairs) if split.pairs is not None else None
    key = (tokenizer.name_or_path, len(tokenizer), max_length, hash(tuple(split.texts)), hash(pairs), hash(tuple(split.labels)), metric)
    if key not in _ENCODED:
        types = None
        if split.pairs is not None and tokenizer.num_special_tokens_to_add(pair=True) == 0:
            ids = _joined_pairs(tokenizer, split.texts, split.pairs, max_length)
        else:
            encoded = tokenizer(split.texts, split.pairs, truncation=True, max_length=max_length)
            ids = encoded["input_ids"]
            if split.pairs is not None and "token_type_ids" in encoded:
                types = [torch.tensor(t, dtype=torch.long) for t in encoded["token_type_ids"]]
        regression = any(isinstance(y, float) for y in split.labels)
        labels = torch.tensor(split.labels, dtype=torch.float32 if regression else torch.long)
        _ENCODED[key] = Encoded([torch.tensor(x, dtype=torch.long) for x in ids], labels, metric, types)
    return _ENCODED[key]
