"""Reading the JSON files users hand in (rank maps, PEFT configs, run folders).

Every problem is one :class:`~rankgym.errors.FileError` naming the file and what is wrong with it,
never a traceback from deep inside: a missing file, text that is not UTF-8, broken JSON, a key
given twice (JSON would keep the last value without a word), a missing field or a field of the
wrong type.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rankgym.errors import FileError


class _DuplicateKey(ValueError):
    pass


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise _DuplicateKey(key)
        seen[key] = value
    return seen


def read_json(path: str | Path, what: str = "a JSON file") -> Any:
    """The parsed content of ``path``; ``what`` names the file's role in the error message."""
    path = Path(path)
    if not path.is_file():
        raise FileError(f"{path}: no such file (expected {what})")
    try:
        return json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=_no_duplicate_keys)
    except UnicodeDecodeError as err:
        raise FileError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start}); {what} is JSON in UTF-8") from None
    except json.JSONDecodeError as err:
        raise FileError(f"{path}: not valid JSON ({err.msg} at line {err.lineno}, column {err.colno}); expected {what}") from None
    except _DuplicateKey as err:
        raise FileError(f"{path}: key {err.args[0]!r} appears twice; give each key once") from None
    except RecursionError:
        raise FileError(f"{path}: JSON nested too deeply to be {what}") from None


def require(data: Any, path: str | Path, fields: dict[str, type | tuple[type, ...]], what: str = "this file") -> dict[str, Any]:
    """``data`` as an object holding every field of ``fields`` with its type (bool is not an int)."""
    if not isinstance(data, dict):
        raise FileError(f"{path}: expected a JSON object, got {type(data).__name__}; is it {what}?")
    for key, kind in fields.items():
        value = data.get(key)
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if key not in data or (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
            names = " or ".join(k.__name__ for k in kinds)
            raise FileError(f"{path}: field {key!r} should be {names}, got {value!r}; is it {what}, unedited?")
    return data
