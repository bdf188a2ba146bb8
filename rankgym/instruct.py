"""Causal-LM tasks: instruction, chat or plain text in JSON Lines, for decoder language models.

A task folder holds ``train.jsonl`` and ``validation.jsonl`` (or ``dev.jsonl``), one JSON object a
line, in one of these shapes (detected per line):

- ``{"prompt": ..., "response": ...}``, or the Alpaca layout ``{"instruction", "input", "output"}``
  rendered with :data:`ALPACA` (the Stanford Alpaca template, without and with an input);
- ``{"messages": [{"role": "user", "content": ...}, {"role": "assistant", "content": ...}, ...]}``:
  the last assistant turn is the response, everything before it the prompt, rendered with the
  tokenizer's chat template where it has one, else with :func:`plain_chat`;
- ``{"text": ...}``: plain language modelling, every token counted.

The loss and the metric count response tokens only (prompt positions are -100, as TRL's
completion-only collator does); the response ends with the end-of-text token, so a model learns
to stop. A sequence over ``max_length`` keeps the prompt's end and the response's start; an
example left without a response token is dropped, and both counts are reported.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from rankgym.metrics import check
from rankgym.taskdata import AnswerKey, Encoded, Split, TaskData, TaskError

log = logging.getLogger(__name__)

ALPACA = {
    "input": ("Below is an instruction that describes a task, paired with an input that provides further context. "
              "Write a response that appropriately completes the request.\n\n"
              "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"),
    "no_input": ("Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
                 "### Instruction:\n{instruction}\n\n### Response:\n"),
}
CHAT_PREFIX = "<|chat|>"  # marks a prompt kept as its messages (JSON), rendered when the tokenizer is known
METRIC = "neg_nll"  # minus the mean negative log-likelihood per response token: higher is better, like every metric
ANSWER_MARGIN = 8  # exact_match generates up to the reference's tokens plus this many, so an answer may differ in spacing


def plain_chat(messages: list[dict]) -> str:
    """The documented template for tokenizers without a chat template: ``<|role|>\\ncontent\\n`` per turn, then
    ``<|assistant|>\\n`` where the response starts."""
    return "".join(f"<|{m['role']}|>\n{m['content']}\n" for m in messages) + "<|assistant|>\n"


def _example(record: dict, where: str) -> tuple[str, str]:
    """(prompt, response) of one JSON line."""
    if not isinstance(record, dict):
        raise TaskError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if "messages" in record:
        messages = record["messages"]
        if (not isinstance(messages, list) or not messages or not all(isinstance(m, dict) and {"role", "content"} <= set(m) for m in messages)
                or messages[-1]["role"] != "assistant"):
            raise TaskError(f"{where}: 'messages' must be a list of {{role, content}} objects ending with the assistant's turn")
        return CHAT_PREFIX + json.dumps(messages[:-1]), str(messages[-1]["content"])
    if "prompt" in record and "response" in record:
        return str(record["prompt"]), str(record["response"])
    if "instruction" in record and "output" in record:
        template = ALPACA["input"] if record.get("input") else ALPACA["no_input"]
        return template.format(instruction=record["instruction"], input=record.get("input", "")), str(record["output"])
    if "text" in record:
        return "", str(record["text"])
    raise TaskError(f"{where}: a line needs prompt+response, instruction(+input)+output, messages, or text; it has {', '.join(record) or 'nothing'}")


def _read(path: Path) -> Split:
    prompts, responses = [], []
    for number, raw in enumerate(path.read_bytes().removeprefix(b"\xef\xbb\xbf").split(b"\n"), 1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise TaskError(f"{path}:{number}: not UTF-8 text ({err.reason} at byte {err.start} of the line); save it as UTF-8") from None
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise TaskError(f"{path}:{number}: not valid JSON ({err.msg})") from None
        prompt, response = _example(record, f"{path}:{number}")
        if not response.strip():
            raise TaskError(f"{path}:{number}: the response is empty; every line needs one (the loss counts its tokens)")
        prompts.append(prompt)
        responses.append(response)
    if not prompts:
        raise TaskError(f"{path}: no examples")
    return Split(prompts, responses)


def is_jsonl_task(folder: str | Path) -> bool:
    return (Path(folder) / "train.jsonl").is_file()


def load_jsonl_folder(folder: str | Path, name: str | None = None, metric: str | None = None) -> TaskData:
    """A causal-LM task from ``train.jsonl`` and ``validation.jsonl`` (or ``dev.jsonl``), scored by
    ``metric``: ``neg_nll`` (the default) or ``exact_match`` (greedy answers equal to the reference)."""
    folder = Path(folder)
    validation = next((folder / f for f in ("validation.jsonl", "dev.jsonl") if (folder / f).is_file()), None)
    if not (folder / "train.jsonl").is_file() or validation is None:
        raise TaskError(f"{folder}: a causal-LM task needs train.jsonl and validation.jsonl (or dev.jsonl)")
    data = TaskData(name or folder.name, _read(folder / "train.jsonl"), _read(validation), num_labels=0,
                    metric=check(metric or METRIC, "causal_lm"))
    if data.metric == "exact_match":
        plain = sum(not p for p in data.validation.texts)
        if plain:
            raise TaskError(f"{validation}: exact_match scores an answer to a prompt, but {plain} lines are plain text; "
                            "give them a prompt, or use the default metric (neg_nll)")
    return data


@dataclass
class Truncation:
    """What fitting the examples into ``max_length`` cost: examples shortened, and dropped (no response token left)."""

    truncated: int = 0
    dropped: int = 0


def render_prompt(prompt: str, tokenizer) -> str:
    if not prompt.startswith(CHAT_PREFIX):
        return prompt
    messages = json.loads(prompt[len(CHAT_PREFIX):])
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return plain_chat(messages)


def fit(prompt: list[int], response: list[int], max_length: int) -> tuple[list[int], list[int]]:
    """Shorten (prompt, response) token lists to ``max_length`` in all: the prompt loses its start
    first, down to half of ``max_length``; then the response loses its end."""
    if len(prompt) + len(response) <= max_length:
        return prompt, response
    keep_prompt = min(len(prompt), max(max_length - len(response), max_length // 2))
    prompt = prompt[len(prompt) - keep_prompt:]
    return prompt, response[: max_length - len(prompt)]


def encode_lm(split: Split, tokenizer, max_length: int, metric: str = METRIC):
    """Token ids and per-token targets (-100 on the prompt) of a causal-LM split, and what truncation cost.

    Returns an :class:`~rankgym.tasks.Encoded` whose ``targets`` hold the labels of every position
    and whose ``labels`` count each example's response tokens; scored by ``exact_match``, it also
    holds the references (its ``answer_key``).
    """
    import torch

    ids, targets, counts, answers, report = [], [], [], [], Truncation()
    bos = [tokenizer.bos_token_id] if getattr(tokenizer, "add_bos_token", False) and tokenizer.bos_token_id is not None else []
    for prompt, response in zip(split.texts, split.labels):
        p = bos + tokenizer(render_prompt(prompt, tokenizer), add_special_tokens=False)["input_ids"]
        r = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        fp, fr = fit(p, r, max_length)
        if (not p and len(fr) < 2) or not fr:  # plain text needs two tokens: the first is never predicted
            report.dropped += 1
            continue
        report.truncated += (len(fp), len(fr)) != (len(p), len(r))
        ids.append(torch.tensor(fp + fr, dtype=torch.long))
        targets.append(torch.tensor([-100] * len(fp) + fr, dtype=torch.long))
        counts.append(len(fr) - (0 if fp else 1))  # the first token of a sequence has nothing before it to predict it
        answers.append(response.strip())
    if report.truncated or report.dropped:
        log.warning("%d of %d examples truncated to %d tokens, %d dropped (no response token left)",
                    report.truncated, len(split), max_length, report.dropped)
    if not ids:
        raise TaskError(f"no example fits max_length {max_length}: raise --max-length")
    key = AnswerKey(answers, tokenizer.decode, tokenizer.eos_token_id) if metric == "exact_match" else None
    return Encoded(ids, torch.tensor(counts, dtype=torch.long), metric, targets=targets, answer_key=key), report
