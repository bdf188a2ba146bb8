"""The GPU check: every GPU figure rankgym needs, in one command that fits a few minutes of a lent GPU.

    make gpu-wheels                                  # here, once: gymnasium's wheels into .whl/gpu (ignored by git)
    python benchmarks/gpu_check.py --out $OUT/gpu_check.json          # on the GPU machine (torch, transformers, peft)
    python benchmarks/gpu_check.py --cpu-smoke --out /tmp/smoke.json  # the same code path on a CPU, tiny backbone, < 1 minute

It installs what the GPU machine lacks from ``.whl/gpu`` (``pip --no-index``), then measures, in
one run, on GPT-2 small's architecture (random init from its config: all 48 Conv1D modules, rank 8)
and a synthetic task with SST-2's token lengths (2,048 training examples, 872 scored; the data
stays here, the lengths are the quantiles below):

- ``rankgym bench``: PEFT as a user writes it, PEFT with rankgym's recipe, rankgym's ``finetune``
  evaluator, and the ``batched`` evaluator at K = 4 and 16, fp32 base; then rankgym's rows again on
  a bf16 frozen base (adapters and head fp32);
- the elastic evaluator: adapter training seconds and seconds per scored map over 100 random maps,
  fp32 and bf16;
- the peak GPU memory of every row, and the targets (one configuration at least 5x PEFT as a user
  writes it, K = 16 at least 20x per configuration, an elastic map in at most 0.2 s).

Everything goes to one JSON file (``--out``) with the card's name, so a second run still fits in
the time a GPU is lent. Levers not measured yet (length buckets so shapes repeat, fused AdamW,
``torch.compile`` or CUDA graphs per bucket) are listed in the JSON as such.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WHEELS = ROOT / ".whl" / "gpu"
NEEDED = ("gymnasium",)  # what `import rankgym` needs beyond torch, transformers, peft (tqdm, numpy, safetensors come with them)

# Token lengths of SST-2 (all-MiniLM-L6-v2's WordPiece, [CLS] and [SEP] included) at the 0, 5, ..., 100th
# percentiles, measured on shared/data/sst2: the training phrases, then the validation sentences.
TRAIN_LENGTHS = [3, 4, 4, 5, 6, 6, 7, 8, 8, 9, 10, 11, 13, 14, 16, 18, 20, 23, 27, 33, 66]
VALIDATION_LENGTHS = [4, 10, 12, 14, 16, 17, 19, 20, 21, 23, 24, 26, 27, 29, 30, 32, 34, 37, 40, 44, 55]
TARGETS = {"single_vs_peft": 5.0, "batched16_vs_peft": 20.0, "elastic_seconds_per_map": 0.2}
NOT_MEASURED = ["length buckets so shapes repeat", "fused AdamW", "torch.compile per bucket", "CUDA graphs per bucket"]


def ensure_dependencies() -> list[str]:
    """Install the missing packages of :data:`NEEDED` from the carried wheels; the names installed."""
    missing = [name for name in NEEDED if importlib.util.find_spec(name) is None]
    if missing:
        if not WHEELS.is_dir():
            sys.exit(f"gpu_check: {', '.join(missing)} missing and no wheels in {WHEELS}; run `make gpu-wheels` where a registry is reachable")
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--find-links", str(WHEELS), *missing], check=True)
    return missing


def sampled_lengths(quantiles: list[int], n: int, seed: int) -> list[int]:
    """``n`` lengths drawn from the piecewise-linear distribution the quantiles describe."""
    import numpy as np

    u = np.random.default_rng(seed).random(n) * (len(quantiles) - 1)
    low = np.floor(u).astype(int)
    high = np.minimum(low + 1, len(quantiles) - 1)
    q = np.asarray(quantiles, dtype=float)
    return np.maximum(1, np.round(q[low] + (u - low) * (q[high] - q[low]))).astype(int).tolist()


def synthetic_sst2(folder: Path, train: int, validation: int) -> Path:
    """An SST-2-layout folder of random letters, one byte-level token each, with SST-2's lengths and random labels.

    The training file holds ``train`` examples plus the score split rankgym holds out of it (the
    validation split's size).
    """
    import numpy as np

    rng = np.random.default_rng(0)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz    "))

    def write(path: Path, lengths: list[int]) -> None:
        rows = ["sentence\tlabel"] + [f"{''.join(rng.choice(letters, size=n)).strip() or 'a'}\t{rng.integers(2)}" for n in lengths]
        path.write_text("\n".join(rows) + "\n")

    task = folder / "sst2"
    task.mkdir(parents=True, exist_ok=True)
    write(task / "train.tsv", sampled_lengths(TRAIN_LENGTHS, train + validation, 1))
    write(task / "validation.tsv", sampled_lengths(VALIDATION_LENGTHS, validation, 2))
    return folder


def elastic_row(backbone: str, model: str | None, data: Path, device: str, dtype: str, train: int, maps: int, log) -> dict:
    """Train the elastic adapter once, then score ``maps`` random maps: seconds and peak memory."""
    import numpy as np
    import torch

    from rankgym.bench import peak_memory_mb, reset_peak_memory
    from rankgym.evaluators.elastic import ElasticEvaluator
    from rankgym.recipe import Recipe

    dev = torch.device(device)
    reset_peak_memory(dev)
    evaluator = ElasticEvaluator(backbone, "sst2", Recipe(train_examples=train), 0, device, max_rank=16, min_rank=0, rank_step=2,
                                 model_name_or_path=model, data_dir=str(data), dtype=dtype)
    start = time.perf_counter()
    evaluator.ensure_trained()
    training = time.perf_counter() - start
    rng = np.random.default_rng(0)
    template = evaluator.template()
    seconds = []
    for _ in range(maps):
        ranks = {m.name: int(r) for m, r in zip(evaluator.modules, rng.choice(evaluator.grid, size=len(evaluator.modules)))}
        start = time.perf_counter()
        evaluator.evaluate(template.replace(ranks))
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        seconds.append(time.perf_counter() - start)
    row = dict(variant="elastic", dtype=dtype, adapter_training_seconds=training, maps=maps,
               seconds_per_map_median=float(np.median(seconds)), seconds_per_map_mean=float(np.mean(seconds)),
               peak_memory_mb=peak_memory_mb(dev))
    log(f"elastic {dtype}: adapter {training:.1f} s, {row['seconds_per_map_median']:.3f} s per map (median of {maps})")
    evaluator.close()
    return row


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="gpu_check.json", help="The JSON file every figure goes to.")
    parser.add_argument("--cpu-smoke", action="store_true", help="The same code path on a CPU: tiny backbone, few examples.")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    installed = ensure_dependencies()
    sys.path.insert(0, str(ROOT))
    import torch

    from rankgym.bench import device_name, random_gpt2_checkpoint, run_bench

    if not args.cpu_smoke and not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA device here; use --cpu-smoke to exercise the code path on a CPU")
    smoke = args.cpu_smoke
    device = "cpu" if smoke else "cuda"
    train, validation, maps, ks = (64, 32, 5, (2,)) if smoke else (2048, 872, 100, (4, 16))
    lines: list[str] = []

    def log(line: str) -> None:
        lines.append(line)
        print(line, flush=True)

    result: dict = {"device": device_name(torch.device(device)), "mode": "cpu-smoke" if smoke else "gpu",
                    "torch": torch.__version__, "installed_from_wheels": installed, "not_measured": NOT_MEASURED}
    with tempfile.TemporaryDirectory() as tmp:
        data = synthetic_sst2(Path(tmp) / "data", train, validation)
        model = None if smoke else random_gpt2_checkpoint(str(Path(tmp) / "gpt2"))
        backbone = "tiny" if smoke else "gpt2"
        common = dict(backbone=backbone, device=device, train_examples=train, rank=8, data_dir=str(data), model_name_or_path=model,
                      progress=log)
        result["bench_fp32"] = run_bench(ks=ks, **common)
        result["bench_bf16"] = run_bench(ks=ks[-1:], dtype="bf16", peft=False, **common)
        result["elastic"] = [elastic_row(backbone, model, data, device, dtype, train, maps, log) for dtype in ("fp32", "bf16")]
    rows = {(r["variant"], r["k"]): r for r in result["bench_fp32"]["results"]}
    single, batched = rows[("rankgym", 1)], rows[("rankgym-batched", ks[-1])]
    result["targets"] = {
        "single_vs_peft": dict(target=TARGETS["single_vs_peft"], measured=single["speedup_vs_peft"]),
        f"batched{ks[-1]}_vs_peft": dict(target=TARGETS["batched16_vs_peft"], measured=batched["speedup_vs_peft"]),
        "elastic_seconds_per_map": dict(target=TARGETS["elastic_seconds_per_map"],
                                        measured=min(r["seconds_per_map_median"] for r in result["elastic"])),
    }
    for name, target in result["targets"].items():
        met = target["measured"] <= target["target"] if name.startswith("elastic") else target["measured"] >= target["target"]
        target["met"] = bool(met)
        log(f"target {name}: {target['measured']:.3f} against {target['target']} -> {'met' if met else 'missed'}")
    result["seconds"] = time.perf_counter() - started
    result["log"] = lines
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"gpu_check: {result['device']}, {result['seconds']:.0f} s, wrote {out}", flush=True)
    return result


if __name__ == "__main__":
    main()
