"""Every file a user hands in, mutated or truncated (205 inputs): a one-line error naming the file,
exit code 2, no traceback, and nothing half-written; an input that is still valid just works.

Inputs: rank maps and PEFT configs (`finetune --rank-map`), task folders (`finetune --task`), and
run folders (`report`, `export`, `search --resume`). Mutations are seeded: byte-level (truncation,
deletion, insertion of bytes that are not UTF-8 or that break the syntax, swapped lines) and, for
JSON, structural (a field removed, given another type or a bad value, a key given twice).
"""

import json
import random
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from rankgym.cli import main

BAD_VALUES = [None, "x", -1, 0, 1.5, True, [], {}, [1, 2], {"a": 1}, 10**30, "", "16"]
BYTES = [b"\xff", b"\xfe\xff", b"{", b"}", b"[", b'"', b",", b":", b"\t", b"\n", b"\x00", b"-", b"9", b"e", b"\\"]


def byte_mutation(data: bytes, rng: random.Random) -> bytes:
    op = rng.randrange(6)
    k = rng.randrange(len(data) + 1)
    if op == 0:  # truncated, as by a killed writer
        return data[:k]
    if op == 1:
        return data[:k] + data[k + rng.randrange(1, 20):]
    if op == 2:
        return data[:k] + rng.choice(BYTES) + data[k:]
    if op == 3:
        lines = data.split(b"\n")
        i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
        lines[i], lines[j] = lines[j], lines[i]
        return b"\n".join(lines)
    if op == 4:
        return data[:k] + data[k:k + 40] + data[k:]  # a span repeated
    return b"" if rng.random() < 0.5 else bytes(rng.randrange(256) for _ in range(64))


def paths(value, prefix=()):
    """Every (path, value) inside a JSON value."""
    yield prefix, value
    if isinstance(value, dict):
        for k, v in value.items():
            yield from paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from paths(v, prefix + (i,))


def json_mutation(text: str, rng: random.Random) -> bytes:
    data = json.loads(text)
    if rng.random() < 0.15:  # a key given twice: JSON would keep the last one silently
        first = text.index('"', text.index("{") + 1)
        end = text.index("\n", first)
        line = text[first:end].rstrip(",")
        return (text[:first] + line + ",\n  " + text[first:]).encode()
    path, _ = rng.choice([p for p in paths(data) if p[0]])
    parent = data
    for key in path[:-1]:
        parent = parent[key]
    if isinstance(parent, dict) and rng.random() < 0.3:
        del parent[path[-1]]
    else:
        parent[path[-1]] = rng.choice(BAD_VALUES)
    return json.dumps(data, indent=2).encode()


def mutate(file: Path, rng: random.Random) -> None:
    data = file.read_bytes()
    structural = file.suffix == ".json" and rng.random() < 0.6
    file.write_bytes(json_mutation(data.decode(), rng) if structural else byte_mutation(data, rng))


def parses(file: Path) -> bool:
    try:
        json.loads(file.read_bytes().decode())
        return True
    except (UnicodeDecodeError, ValueError):
        return False


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file() and "-wal" not in p.name
            and "-shm" not in p.name}  # the store too: a refused command writes nothing, evaluations included


def check(result, names: tuple[str, ...], not_created: tuple[Path, ...] = ()) -> bool:
    """Exit 0, or exit 2 with one line naming the file; True where the input was refused."""
    assert result.exit_code in (0, 2), f"exit {result.exit_code}: {result.output[-2000:]} {result.exception!r}"
    assert "Traceback" not in result.output
    if result.exit_code == 0:
        return False
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert any(name in lines[0] for name in names), f"{lines[0]!r} names none of {names}"
    for path in not_created:
        assert not path.exists(), f"{path} was left behind by a failed command"
    return True


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """A small task folder, a trained rank map and PEFT adapter on it, and a finished fake search."""
    root = tmp_path_factory.mktemp("sources")
    task = root / "task"
    task.mkdir()
    words = ["good", "bad", "fine", "awful", "great", "dull", "bright", "grim"]
    for name, n in (("train", 48), ("validation", 16)):
        rows = ["sentence\tlabel"] + [f"a {words[i % 8]} film number {i}\t{i % 2}" for i in range(n)]
        (task / f"{name}.tsv").write_text("\n".join(rows) + "\n")
    trained = root / "trained"
    result = CliRunner().invoke(main, ["finetune", "--backbone", "tiny", "--task", str(task), "--uniform", "2", "--train-examples", "8",
                                       "--out", str(trained), "--peft-out", str(root / "peft")])
    assert result.exit_code == 0, result.output
    run = root / "run"
    result = CliRunner().invoke(main, ["search", "RankSearch-fake-v0", "--agent", "random", "--budget", "4", "--out", str(run)])
    assert result.exit_code == 0, result.output
    return {"task": task, "rank_map": trained / "rank_map.json", "peft": root / "peft" / "adapter_config.json", "run": run}


def finetune(task: Path, rank_map: Path, out: Path):
    return CliRunner().invoke(main, ["finetune", "--backbone", "tiny", "--task", str(task), "--rank-map", str(rank_map),
                                     "--train-examples", "8", "--val-examples", "8", "--out", str(out)])


@pytest.mark.parametrize("kind", ["rank_map", "peft"])
def test_mutated_rank_maps_and_peft_configs(sources, tmp_path, kind):
    rng = random.Random(f"{kind}-20261128")
    refused, broken = 0, 0
    for i in range(60 if kind == "rank_map" else 40):
        file = tmp_path / f"{i}" / sources[kind].name
        file.parent.mkdir()
        shutil.copy(sources[kind], file)
        mutate(file, rng)
        must_refuse = not parses(file)
        broken += must_refuse
        out = tmp_path / f"out{i}"
        was_refused = check(finetune(sources["task"], file, out), (str(file),), (out,))
        assert was_refused or not must_refuse, f"{file.name} is no longer JSON, yet finetune accepted it"
        refused += was_refused
    # the rest may train: PEFT ignores many of its fields, and a changed rank is still a rank map
    assert broken and refused >= broken


def test_mutated_task_files(sources, tmp_path):
    rng = random.Random("task-20261128")
    refused, broken = 0, 0
    for i in range(50):
        folder = tmp_path / f"task{i}"
        shutil.copytree(sources["task"], folder)
        file = folder / rng.choice(["train.tsv", "validation.tsv"])
        data = file.read_bytes()
        lines = data.split(b"\n")
        j = rng.randrange(1, len(lines) - 1)
        edits = [
            lambda: byte_mutation(data, rng),
            lambda: b"\n".join(lines[:j] + [lines[j].replace(b"\t", b" ")] + lines[j + 1:]),  # a row without its label
            lambda: b"\n".join(lines[:j] + [lines[j].rsplit(b"\t", 1)[0] + b"\tpositive?"] + lines[j + 1:]),  # a label that is not one
            lambda: b"\n".join([lines[0].replace(b"label", b"lable")] + lines[1:]),  # the label column renamed
            lambda: b"\n".join(lines[1:]),  # no header
            lambda: lines[0] + b"\n",  # a header and no examples
        ]
        edit = rng.randrange(len(edits))
        file.write_bytes(edits[edit]())
        must_refuse = edit in (3, 5)  # no label column, no examples: no task can be read (the others may still be one)
        broken += must_refuse
        out = tmp_path / f"out{i}"
        was_refused = check(finetune(folder, sources["rank_map"], out), (str(folder),), (out,))
        assert was_refused or not must_refuse, f"edit {edit} of {file.name} leaves no task, yet finetune accepted it"
        refused += was_refused
    assert broken and refused >= broken


@pytest.mark.parametrize("command", ["report", "export", "resume"])
def test_mutated_run_folders(sources, tmp_path, command):
    rng = random.Random(f"{command}-20261128")
    files = {"report": ["summary.json", "best_rank_map.json", "steps.csv", "store.sqlite"],
             "export": ["best_rank_map.json"],
             "resume": ["config.json", "store.sqlite"]}[command]
    refused, broken = 0, 0
    for i in range({"report": 20, "export": 15, "resume": 20}[command]):
        run = tmp_path / f"run{i}"
        shutil.copytree(sources["run"], run)
        file = run / rng.choice(files)
        if file.suffix == ".sqlite":
            file.write_bytes(byte_mutation(b"SQLite format 3\x00" + bytes(200), rng) if rng.random() < 0.5 else b"not a database" * 50)
        else:
            mutate(file, rng)
        must_refuse = file.suffix == ".sqlite" or (file.suffix == ".json" and not parses(file))
        broken += must_refuse
        before = snapshot(run)
        out = tmp_path / f"out{i}"
        if command == "report":
            result = CliRunner().invoke(main, ["report", str(run), "--out", str(out)])
        elif command == "export":
            result = CliRunner().invoke(main, ["export", str(run), "--peft", str(out)])
        else:
            result = CliRunner().invoke(main, ["search", "--resume", str(run), "--no-report"])
        was_refused = check(result, (str(run),), (out,))
        assert was_refused or not must_refuse, f"{file.name} is no longer JSON / a database, yet {command} accepted it"
        if was_refused:
            assert snapshot(run) == before, "a refused command changed the run folder"
            refused += 1
    # Other mutations may be accepted: provenance fields change freely, and the report does not read steps.csv's
    # rank_map column (most of that file's bytes), so how many land there depends on the run's content.
    assert broken and refused >= broken


def test_mutated_causal_lm_task_files(tmp_path):
    """JSON Lines task folders: a line that is not JSON, a missing key, an empty response, bytes that are not
    UTF-8 are refused naming file:line; other byte mutations either still read or are refused the same way."""
    rng = random.Random("jsonl-20261202")
    source = tmp_path / "source"
    source.mkdir()
    for name, n in (("train", 24), ("validation", 8)):
        (source / f"{name}.jsonl").write_text("".join(json.dumps({"prompt": f"{i}+1=", "response": str(i + 1)}) + "\n" for i in range(n)))
    rank_map = tmp_path / "rank_map.json"
    result = CliRunner().invoke(main, ["finetune", "--backbone", "tiny", "--task", str(source), "--uniform", "1", "--train-examples", "8",
                                       "--out", str(tmp_path / "trained")])
    assert result.exit_code == 0, result.output
    shutil.copy(tmp_path / "trained" / "rank_map.json", rank_map)
    refused, broken = 0, 0
    for i in range(24):
        folder = tmp_path / f"task{i}"
        shutil.copytree(source, folder)
        file = folder / rng.choice(["train.jsonl", "validation.jsonl"])
        lines = file.read_bytes().split(b"\n")
        j = rng.randrange(len(lines) - 1)
        edits = [
            lambda: byte_mutation(file.read_bytes(), rng),
            lambda: lines[j][: len(lines[j]) // 2],  # a line cut short: not JSON
            lambda: json.dumps({"prompt": "1+1="}).encode(),  # no response
            lambda: json.dumps({"prompt": "1+1=", "response": "  "}).encode(),  # an empty response
            lambda: lines[j][:5] + b"\xff\xfe" + lines[j][5:],  # not UTF-8
        ]
        edit = rng.randrange(len(edits))
        new = edits[edit]()
        file.write_bytes(new if edit == 0 else b"\n".join(lines[:j] + [new] + lines[j + 1:]))
        broken += edit > 0
        out = tmp_path / f"out{i}"
        where = f"{file}:{j + 1}" if edit else str(folder)
        was_refused = check(finetune(folder, rank_map, out), (where,), (out,))
        assert was_refused or not edit, f"edit {edit} of {file.name} line {j + 1} is not a valid line, yet finetune accepted it"
        refused += was_refused
    assert broken and refused >= broken
