"""Causal-LM tasks: JSON Lines in three shapes, response-only loss, NLL metric, search and PEFT export (tiny random models)."""

import json
import math

import pytest
import torch
from click.testing import CliRunner
from peft import PeftModel
from transformers import AutoModelForCausalLM, LlamaConfig

from rankgym.backbones import byte_level_tokenizer, load_backbone
from rankgym.cli import main
from rankgym.evaluators.finetune import FinetuneEvaluator
from rankgym.instruct import ALPACA, CHAT_PREFIX, encode_lm, fit, load_jsonl_folder, plain_chat, render_prompt
from rankgym.recipe import Recipe
from rankgym.tasks import Split, TaskError, load_task
from rankgym.training import evaluate

RECIPE = Recipe(train_examples=32, batch_size=8, lr=3e-3)


def write(folder, name, records):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text("".join(json.dumps(r) + "\n" for r in records))


@pytest.fixture(scope="module")
def sums(tmp_path_factory):
    """An addition task in the prompt/response shape: 64 training lines, 16 validation lines."""
    folder = tmp_path_factory.mktemp("sums")
    rows = [{"prompt": f"{a}+{b}=", "response": str(a + b)} for a, b in ((i * 7 % 23, i * 5 % 17) for i in range(80))]
    write(folder, "train.jsonl", rows[:64])
    write(folder, "validation.jsonl", rows[64:])
    return folder


def test_every_shape_is_read_and_rendered(tmp_path):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    records = [{"prompt": "Q: 2+2?", "response": "4"}, {"instruction": "Add", "input": "2 2", "output": "4"},
               {"instruction": "Say hi", "output": "hi"}, {"messages": messages}, {"text": "plain text"}]
    write(tmp_path, "train.jsonl", records)
    write(tmp_path, "dev.jsonl", records[:1])
    data = load_task(str(tmp_path))
    assert data.causal_lm and data.metric == "neg_nll" and len(data.validation) == 1
    prompts, responses = data.train.texts, data.train.labels
    assert responses == ["4", "4", "hi", "Hello", "plain text"]
    assert prompts[0] == "Q: 2+2?"
    assert prompts[1] == ALPACA["input"].format(instruction="Add", input="2 2") and prompts[1].endswith("### Response:\n")
    assert prompts[2] == ALPACA["no_input"].format(instruction="Say hi") and "### Input" not in prompts[2]
    assert prompts[4] == ""
    tokenizer = byte_level_tokenizer()  # no chat template: the plain one
    assert render_prompt(prompts[3], tokenizer) == "<|system|>\nBe brief.\n<|user|>\nHi\n<|assistant|>\n" == plain_chat(messages[:2])
    tokenizer.chat_template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }} {% endfor %}{% if add_generation_prompt %}[assistant] {% endif %}"
    assert render_prompt(prompts[3], tokenizer) == "[system] Be brief. [user] Hi [assistant] "


@pytest.mark.parametrize("line, message", [
    ("{not json", "train.jsonl:2: not valid JSON"),
    ('{"question": "x"}', "train.jsonl:2: a line needs prompt+response"),
    ('{"messages": [{"role": "user", "content": "x"}]}', "ending with the assistant's turn"),
])
def test_a_bad_line_is_named_by_file_and_number(tmp_path, line, message):
    (tmp_path / "train.jsonl").write_text('{"text": "fine"}\n' + line + "\n")
    write(tmp_path, "validation.jsonl", [{"text": "fine"}])
    with pytest.raises(TaskError, match=message.replace("+", r"\+").replace("(", r"\(")):
        load_jsonl_folder(tmp_path)


def test_only_response_tokens_are_targets_and_truncation_keeps_the_prompts_end_and_the_responses_start():
    tokenizer = byte_level_tokenizer()  # one token per byte, so the counts are the lengths of the strings
    eos = tokenizer.eos_token_id
    split = Split(["abc=", "", "x" * 50], ["12", "hello", "y" * 50])
    encoded, report = encode_lm(split, tokenizer, max_length=40)
    first = encoded.targets[0].tolist()
    assert first == [-100] * 4 + tokenizer("12")["input_ids"] + [eos] and encoded.ids[0].tolist()[:4] == tokenizer("abc=")["input_ids"]
    assert encoded.targets[1].tolist() == encoded.ids[1].tolist()  # plain text: every token is a target ...
    assert encoded.labels.tolist()[:2] == [3, 5]  # ... but the first has nothing before it to predict it (5 + eos - 1)
    long_ids, long_targets = encoded.ids[2].tolist(), encoded.targets[2].tolist()
    assert len(long_ids) == 40 and long_targets.count(-100) == 20  # the prompt kept its last 20 tokens, the response its first 20
    assert long_ids[:20] == tokenizer("x" * 20)["input_ids"] and long_ids[20:] == tokenizer("y" * 20)["input_ids"]
    assert (report.truncated, report.dropped) == (1, 0)
    assert fit([1, 2, 3], [4, 5, 6, 7], 5) == ([2, 3], [4, 5, 6])
    assert fit([1, 2], [3], 5) == ([1, 2], [3])
    _, report = encode_lm(Split(["a", ""], ["b", ""]), tokenizer, max_length=8)
    assert report.dropped == 1  # plain text of one token (its end-of-text) has nothing to predict


def test_the_metric_is_minus_the_mean_nll_of_response_tokens_by_an_independent_count(sums):
    evaluator = FinetuneEvaluator("tiny", str(sums), RECIPE, seed=0, device="cpu", max_rank=4, score_on="validation")
    data, model = evaluator.val_set, evaluator.model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for ids, targets in zip(data.ids, data.targets):
            logits = model(input_ids=ids[None]).logits[0]
            scored = targets[1:] != -100  # position t predicts token t + 1
            total += torch.nn.functional.cross_entropy(logits[:-1][scored], targets[1:][scored], reduction="sum").item()
            count += int(scored.sum())
    metric, loss = evaluate(model, data, evaluator.tokenizer.pad_token_id, batch_size=5)
    assert count == sum(len(r) + 1 for r in load_task(str(sums)).validation.labels)  # digits and end-of-text, by hand
    assert loss == pytest.approx(total / count, rel=1e-5) and metric == -loss


def test_finetune_lowers_the_nll_and_the_peft_export_gives_the_same_logits(sums, tmp_path):
    result = CliRunner().invoke(main, ["finetune", "--backbone", "tiny", "--task", str(sums), "--uniform", "4", "--train-examples", "48",
                                       "--epochs", "8", "--batch-size", "8", "--lr", "3e-3", "--seed", "1", "--device", "cpu", "--out", str(tmp_path / "ft"),
                                       "--peft-out", str(tmp_path / "peft"), "--json"])
    assert result.exit_code == 0, result.output
    assert "NLL" in result.output and "perplexity" in result.output
    trained = json.loads(result.stdout.strip().splitlines()[-1])["metric"]
    untrained = FinetuneEvaluator("tiny", str(sums), RECIPE, seed=1, device="cpu", max_rank=4, score_on="validation")
    empty = untrained.evaluate(untrained.template()).metric  # the base model, nothing trained
    assert trained > empty + 0.5  # half a nat per token better than the random base

    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert config["task_type"] == "CAUSAL_LM" and not config.get("modules_to_save")
    base, _ = load_backbone("tiny", None, 0, 1)
    theirs = PeftModel.from_pretrained(base, str(tmp_path / "peft")).eval()
    from rankgym.lora.inject import load_adapter

    ours, _ = load_backbone("tiny", None, 0, 1)
    load_adapter(ours, tmp_path / "ft")
    ids = torch.randint(3, 250, (2, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = ours.eval()(input_ids=ids).logits
        torch.testing.assert_close(theirs(input_ids=ids).logits, expected, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(theirs.merge_and_unload()(input_ids=ids).logits, expected, rtol=1e-4, atol=1e-4)


def test_a_llama_checkpoint_searches_and_promotes_on_an_instruction_task(sums, tmp_path):
    path = tmp_path / "llama"
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                                                 vocab_size=300, num_key_value_heads=2, max_position_embeddings=128)).save_pretrained(path)
    byte_level_tokenizer().save_pretrained(path)
    run = tmp_path / "run"
    result = CliRunner().invoke(main, ["search", "RankSearch-auto-sst2-v0", "--agent", "random", "--budget", "2", "--out", str(run),
                                       "--env", f"task='{sums}'", "--env", f"model_name_or_path='{path}'", "--env", "device='cpu'",
                                       "--env", "train_examples=16", "--env", "max_rank=4", "--env", "initial_rank=2",
                                       "--promote", "1", "--promote-seeds", "1", "--promote-examples", "16", "--no-report"])
    assert result.exit_code == 0, result.output
    summary = json.loads((run / "summary.json").read_text())
    assert summary["promotion"]["metric"] == "neg_nll" and all(math.isfinite(r["mean"]) and r["mean"] < 0 for r in summary["promotion"]["rows"])
    peft = json.loads((run / "peft_adapter" / "adapter_config.json").read_text())
    assert peft["task_type"] == "CAUSAL_LM" and "q_proj" in json.dumps(peft["target_modules"])
    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(path), str(run / "peft_adapter"))
    assert loaded(input_ids=torch.tensor([[5, 6, 7]])).logits.shape == (1, 3, 300)


def test_a_chat_prompt_keeps_its_messages_until_the_tokenizer_renders_them():
    prompt = CHAT_PREFIX + json.dumps([{"role": "user", "content": "Hi"}])
    assert render_prompt(prompt, byte_level_tokenizer()) == "<|user|>\nHi\n<|assistant|>\n"
    assert render_prompt("no chat", byte_level_tokenizer()) == "no chat"


def test_the_elastic_evaluator_scores_causal_lm_maps_and_the_batched_one_refuses_them(sums):
    from rankgym.errors import ConfigError
    from rankgym.evaluators.batched import BatchedEvaluator
    from rankgym.evaluators.elastic import ElasticEvaluator

    elastic = ElasticEvaluator(backbone="tiny", task=str(sums), recipe=RECIPE, device="cpu", max_rank=4)
    template = elastic.template()
    scores = [elastic.evaluate(template.replace({m.name: r for m in elastic.modules})).metric for r in (1, 4)]
    assert all(math.isfinite(s) and s < 0 for s in scores) and elastic.source == "trained"
    with pytest.raises(ConfigError, match="causal-LM task use evaluator='finetune'"):
        BatchedEvaluator("tiny", str(sums), RECIPE, device="cpu", max_rank=4, k=2)


def test_a_task_folder_gets_env_ids_of_its_own(sums, tmp_path, monkeypatch):
    import gymnasium as gym

    from rankgym.errors import ConfigError
    from rankgym.registry import register_task

    ids = register_task(sums, name="sums")
    assert "RankSearch-auto-sums-v0" in ids and "RankSearch-tiny-sums-v0" in ids
    env = gym.make("RankSearch-tiny-sums-v0", device="cpu", train_examples=16).unwrapped
    assert env.evaluator.data.causal_lm and env.reset(seed=0)[1]["metric"] < 0
    with pytest.raises(ConfigError, match="already registered"):
        register_task(tmp_path, name="sums")  # another folder under a taken name
    # in a shell: $RANKGYM_TASKS, which `rankgym search` (and a resumed run) reads on import
    monkeypatch.setenv("RANKGYM_TASKS", str(sums))
    from rankgym.registry import env_ids

    assert f"RankSearch-auto-{sums.name}-v0" in env_ids()


@pytest.fixture(scope="module")
def ok(tmp_path_factory):
    """Every training prompt is answered "ok"; 10 of the 16 validation references are "ok" (one with spaces around it)."""
    folder = tmp_path_factory.mktemp("ok")
    write(folder, "train.jsonl", [{"prompt": f"q{i}:", "response": "ok"} for i in range(64)])
    write(folder, "validation.jsonl", [{"prompt": f"q{i}:", "response": " ok " if i < 10 else "zz"} for i in range(16)])
    return folder


def test_exact_match_counts_greedy_answers_equal_to_the_reference_by_an_independent_greedy_loop(ok):
    """Trained to answer "ok" to every prompt, the model's greedy answers match the validation lines whose
    reference is "ok" (10 of 16) and no other; a token-by-token argmax loop on the raw text agrees."""
    folder = ok
    evaluator = FinetuneEvaluator("tiny", str(folder), Recipe(train_examples=64, batch_size=8, lr=3e-3, epochs=6), seed=0, device="cpu",
                                  max_rank=4, score_on="validation", metric="exact_match")
    untrained = evaluator.evaluate(evaluator.template()).metric
    trained = evaluator.evaluate(evaluator.template().replace({m.name: 4 for m in evaluator.modules}))
    tokenizer, model = evaluator.tokenizer, evaluator.model.eval()
    matches = 0
    with torch.no_grad():
        for record in map(json.loads, (folder / "validation.jsonl").read_text().splitlines()):
            ids = tokenizer(record["prompt"])["input_ids"]
            reference = tokenizer(record["response"])["input_ids"] + [tokenizer.eos_token_id]
            answer = []
            while len(answer) < len(reference) + 8:
                token = int(model(input_ids=torch.tensor([ids + answer])).logits[0, -1].argmax())
                if token == tokenizer.eos_token_id:
                    break
                answer.append(token)
            matches += tokenizer.decode(answer).strip() == record["response"].strip()
    assert untrained == 0.0 and trained.metric == matches / 16 == 10 / 16
    assert trained.val_loss > 0  # the NLL is still reported beside it


@pytest.mark.parametrize("task, metric, message", [
    ("sums", "accuracy", "does not score a causal-lm task: use one of neg_nll, exact_match"),
    ("text", "exact_match", "exact_match scores an answer to a prompt, but 2 lines are plain text"),
    ("stsb", "f1", "does not score a regression task: use one of pearson, spearman"),
])
def test_a_metric_the_task_cannot_be_scored_by_is_refused_in_one_line(sums, tmp_path, task, metric, message):
    write(tmp_path / "text", "train.jsonl", [{"text": "abc"}] * 4)
    write(tmp_path / "text", "validation.jsonl", [{"text": "abc"}] * 2)
    folder = {"sums": str(sums), "text": str(tmp_path / "text"), "stsb": "stsb"}[task]
    result = CliRunner().invoke(main, ["finetune", "--backbone", "tiny", "--task", folder, "--uniform", "1", "--metric", metric,
                                       "--device", "cpu", "--out", str(tmp_path / "ft")])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "ft").exists()


def test_a_search_scored_by_exact_match_promotes_and_reports_it(ok, tmp_path):
    run = tmp_path / "run"
    result = CliRunner().invoke(main, ["search", "RankSearch-tiny-sst2-v0", "--agent", "random", "--budget", "3", "--out", str(run),
                                       "--env", f"task='{ok}'", "--env", "metric='exact_match'", "--env", "evaluator='elastic'",
                                       "--env", "device='cpu'", "--env", "elastic_examples=64", "--env", "max_rank=4", "--env", "score_examples=16",
                                       "--promote", "1", "--promote-seeds", "1", "--promote-examples", "64", "--no-report"])
    assert result.exit_code == 0, result.output
    summary = json.loads((run / "summary.json").read_text())
    assert summary["promotion"]["metric"] == "exact_match"
    assert all(0.0 <= r["mean"] <= 1.0 and r["mean"] in {k / 16 for k in range(17)} for r in summary["promotion"]["rows"])


@pytest.mark.parametrize("task", ["sums", "sst2"])
def test_gradient_checkpointing_gives_the_same_numbers(sums, task):
    task = str(sums) if task == "sums" else task
    runs = []
    for checkpointing in (False, True):
        evaluator = FinetuneEvaluator("tiny", task, Recipe(train_examples=32, batch_size=8, lr=3e-3, val_examples=32), seed=0, device="cpu",
                                      max_rank=4, gradient_checkpointing=checkpointing)
        model = evaluator.model
        on = model.is_activation_checkpointing if hasattr(model, "is_activation_checkpointing") else model.is_gradient_checkpointing
        assert on == checkpointing
        evaluation = evaluator.evaluate(evaluator.template().replace({m.name: 2 for m in evaluator.modules}))
        runs.append((evaluation.metric, evaluation.val_loss, evaluator.last_result.losses))
    assert runs[0][0] == pytest.approx(runs[1][0], abs=1e-6) and runs[0][1] == pytest.approx(runs[1][1], rel=1e-5)
    assert runs[0][2] == pytest.approx(runs[1][2], rel=1e-5)  # every training step's loss


def test_allocate_splits_a_budget_across_causal_lm_task_folders(sums, ok, tmp_path):
    import itertools

    out = tmp_path / "alloc"
    result = CliRunner().invoke(main, ["allocate", "--tasks", f"{sums},{ok}", "--backbone", "tiny", "--param-budget", "6000", "--out", str(out),
                                       "--env", "device='cpu'", "--env", "elastic_examples=64", "--env", "max_rank=4", "--env", "score_examples=16"])
    assert result.exit_code == 0, result.output
    split = json.loads((out / "split.json").read_text())
    names = [sums.name, ok.name]
    assert set(split["split"]) == set(names)
    curves = {t: {int(r): m for r, m in split["curves"][t].items()} for t in names}
    best = max(itertools.product(*(curves[t].items() for t in names)),  # every pair of levels within the budget, by hand
               key=lambda pair: sum(m for _, m in pair) if sum(r for r, _ in pair) * split["per_rank"] <= 6000 else -math.inf)
    assert split["value"] == pytest.approx(sum(m for _, m in best) / 2)
    for t in names:
        if split["split"][t]["rank"]:
            assert json.loads((out / t / "peft" / "adapter_config.json").read_text())["task_type"] == "CAUSAL_LM"


def test_adalora_and_eva_allocate_ranks_on_a_causal_lm_within_the_budget(sums, tmp_path):
    run = tmp_path / "run"
    result = CliRunner().invoke(main, ["search", "RankSearch-tiny-sst2-v0", "--agent", "adalora", "--out", str(run), "--env", f"task='{sums}'",
                                       "--env", "device='cpu'", "--env", "train_examples=32", "--env", "max_rank=4", "--param-budget", "0.5",
                                       "--promote", "1", "--promote-seeds", "1", "--promote-examples", "32", "--no-report"])
    assert result.exit_code == 0, result.output
    rows = {r["label"].split("-")[0]: r for r in json.loads((run / "summary.json").read_text())["promotion"]["rows"]}
    per_rank = 2 * ((64 + 192) + (64 + 64) + (64 + 256) + (256 + 64))  # tiny, by hand: 2 blocks of c_attn, attn c_proj, c_fc, mlp c_proj
    full = 4 * per_rank  # uniform max_rank 4
    assert {"adalora", "eva", "prilora", "uniform"} <= set(rows)
    assert all(math.isfinite(r["mean"]) and r["params"] <= 0.5 * full for r in rows.values())
    assert json.loads((run / "adapter_config.json").read_text())["task_type"] == "CAUSAL_LM"


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_a_decoder_checkpoint_trains_on_instructions_and_peft_loads_its_adapter_with_the_same_logits(sums, tmp_path, family):
    from transformers import Qwen2Config

    width = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128, vocab_size=300, num_key_value_heads=2,
                 max_position_embeddings=128)
    path = tmp_path / family
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config((LlamaConfig if family == "llama" else Qwen2Config)(**width)).save_pretrained(path)
    byte_level_tokenizer().save_pretrained(path)
    result = CliRunner().invoke(main, ["finetune", "--backbone", "auto", "--model-name-or-path", str(path), "--task", str(sums), "--uniform", "4",
                                       "--train-examples", "48", "--epochs", "4", "--lr", "3e-3", "--device", "cpu", "--out", str(tmp_path / "ft"),
                                       "--peft-out", str(tmp_path / "peft"), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "peft" / "adapter_config.json").read_text())["task_type"] == "CAUSAL_LM"
    from rankgym.lora.inject import load_adapter

    ours = AutoModelForCausalLM.from_pretrained(path)
    load_adapter(ours, tmp_path / "ft")
    theirs = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(path), str(tmp_path / "peft")).eval()
    ids = torch.randint(3, 250, (2, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = ours.eval()(input_ids=ids).logits
        base = AutoModelForCausalLM.from_pretrained(path).eval()(input_ids=ids).logits
        assert not torch.allclose(expected, base, atol=1e-4)  # the adapter changed the model
        torch.testing.assert_close(theirs(input_ids=ids).logits, expected, rtol=1e-4, atol=1e-4)


def test_an_unpromoted_causal_lm_run_exports_a_causal_lm_config_and_reports(sums, tmp_path):
    run = tmp_path / "run"
    result = CliRunner().invoke(main, ["search", "RankSearch-tiny-sst2-v0", "--agent", "random", "--budget", "2", "--out", str(run),
                                       "--env", f"task='{sums}'", "--env", "device='cpu'", "--env", "train_examples=16", "--env", "max_rank=4",
                                       "--env", "initial_rank=2", "--no-promote", "--no-report"])
    assert result.exit_code == 0, result.output
    exported = CliRunner().invoke(main, ["export", str(run), "--peft", str(tmp_path / "peft")])
    assert exported.exit_code == 0 and "config only" in exported.output, exported.output
    assert json.loads((tmp_path / "peft" / "adapter_config.json").read_text())["task_type"] == "CAUSAL_LM"
    report = CliRunner().invoke(main, ["report", str(run), "--out", str(tmp_path / "report")])
    assert report.exit_code == 0 and (tmp_path / "report" / "report.md").is_file(), report.output


def test_released_keeps_a_causal_lms_tied_embeddings_and_its_numbers(sums):
    ev = FinetuneEvaluator(backbone="tiny", task=str(sums), recipe=RECIPE, device="cpu", max_rank=4)
    inputs, outputs = ev.model.get_input_embeddings(), ev.model.get_output_embeddings()
    assert outputs.weight is inputs.weight  # the tiny decoder ties them, as GPT-2 does
    rank_map = ev.template().replace({m.name: 2 for m in ev.modules})
    first = ev.evaluate(rank_map)
    with ev.released():
        assert inputs.weight.numel() == 0 and sum(p.numel() for p in ev.model.parameters()) == 0
    assert outputs.weight is inputs.weight and inputs.weight.shape == (ev.tokenizer.vocab_size, ev.model.config.hidden_size)
    again = ev.evaluate(rank_map)
    assert (again.metric, again.val_loss) == (first.metric, first.val_loss)
