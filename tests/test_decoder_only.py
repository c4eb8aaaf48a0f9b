"""Summarization and translation on decoder-only models: prompt → target examples, evaluation by generation."""

from __future__ import annotations

import json

import pytest
import torch
from test_scripts import _script
from test_tasks import _args, _refused

from hf_tvd_loss.tasks import get_task
from hf_tvd_loss.tasks.generation import generate_completions
from hf_tvd_loss.tasks.prompting import IGNORE_INDEX, truncate_text
from hf_tvd_loss.tasks.run import build, prepare, train_and_evaluate


def _tiny_llama(vocab: int = 64):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128,
                         pad_token_id=0, bos_token_id=1, eos_token_id=2)  # fmt: skip
    return LlamaForCausalLM(config).eval()


def test_prompt_target_examples_score_the_target_and_eos_only(tmp_path):
    prepared = prepare(get_task("summarization"), _args(tmp_path, "--model_type", "llama", "--max_source_length", "8"))
    assert prepared.task.decoder_only and not prepared.task.is_seq2seq
    built = build(prepared)
    tokenizer, example = built.tokenizer, built.datasets["train"][0]
    ids, labels = example["input_ids"], example["labels"]
    start = next(i for i, label in enumerate(labels) if label != IGNORE_INDEX)
    assert all(label == IGNORE_INDEX for label in labels[:start])  # the prompt is not scored
    assert labels[start:] == ids[start:] and ids[-1] == tokenizer.eos_token_id  # target + eos, all scored
    row = prepared.raw["train"][0]
    assert tokenizer.decode(ids[start:], skip_special_tokens=True).strip() == row["summary"]
    prompt = tokenizer.decode(ids[:start], skip_special_tokens=True)
    kept = truncate_text(tokenizer, row["document"], 8)
    assert kept in prompt and kept != row["document"]  # the source is cut to max_source_length tokens


def test_a_target_longer_than_max_target_length_is_counted_and_refused(tmp_path):
    argv = _args(tmp_path, "--model_type", "llama", "--max_target_length", "3")
    with pytest.raises(ValueError, match="max_target_length=3 tokens.*raise max_target_length"):
        build(prepare(get_task("summarization"), argv))
    assert not (tmp_path / "out").exists()


def test_prompt_options_are_refused_where_they_would_not_apply(tmp_path):
    _refused("summarization", _args(tmp_path, "--prompt_template", "Sum: {source}\n"),
             "--prompt_template applies to decoder-only models", tmp_path)  # fmt: skip
    _refused("translation", _args(tmp_path, "--prompt_completion_format", "plain"),
             "applies to decoder-only models", tmp_path)  # fmt: skip
    _refused("summarization", _args(tmp_path, "--model_type", "llama", "--prompt_template", "Sum: {text}\n"),
             r"unknown placeholders \['text'\]", tmp_path)  # fmt: skip
    _refused("translation", _args(tmp_path, "--model_type", "llama", "--prompt_template", "no source\n"),
             "has no {source} placeholder", tmp_path)  # fmt: skip


def test_batched_generation_equals_generating_each_example_alone():
    model = _tiny_llama()
    generator = torch.Generator().manual_seed(1)
    rows = []
    for length in (3, 7, 5, 9, 4):  # prompts of different lengths: left padding in a batch
        prompt = torch.randint(3, 64, (length,), generator=generator).tolist()
        target = torch.randint(3, 64, (4,), generator=generator).tolist() + [2]
        rows.append({"input_ids": prompt + target, "labels": [IGNORE_INDEX] * length + target})
    settings = {"pad_token_id": 0, "max_new_tokens": 6, "num_beams": 1, "do_sample": False, "eos_token_id": 2}
    batched, targets = generate_completions(model, rows, batch_size=5, **settings)
    alone = [generate_completions(model, [row], batch_size=1, **settings)[0][0] for row in rows]
    for index, single in enumerate(alone):
        got = [t for t in batched[index].tolist() if t != IGNORE_INDEX]
        assert got == [t for t in single.tolist() if t != IGNORE_INDEX], index
        assert 1 <= len(got) <= 6
    assert [[t for t in r if t != IGNORE_INDEX] for r in targets.tolist()] == [r["labels"][-5:] for r in rows]


def test_decoder_only_summarization_trains_evaluates_and_writes_predictions(tmp_path):
    argv = _args(tmp_path, "--model_type", "llama", "--num_train_epochs", "1", "--generation_num_beams", "2",
                 "--per_device_eval_batch_size", "3")  # fmt: skip
    metrics = train_and_evaluate(prepare(get_task("summarization"), argv))
    for key in ("eval_rouge1", "eval_rougeL", "eval_nll", "eval_ece", "eval_gen_len", "test_rouge1"):
        assert key in metrics, key
    assert 0 < metrics["eval_gen_len"] <= 24  # at most max_target_length new tokens
    rows = [json.loads(line) for line in (tmp_path / "out" / "generated_predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(set(r) == {"prediction", "reference"} and r["reference"] for r in rows)
    info = json.loads((tmp_path / "out" / "run_info.json").read_text())
    assert info["task"] == "summarization"
    assert info["examples"]["prompt_template"].startswith("Summarize") and "plain" in info["examples"]["format"]
    card = (tmp_path / "out" / "README.md").read_text()
    assert "prompt → target on a decoder-only model" in card and "Summarize the following text." in card


def test_chunked_loss_equals_logits_on_prompt_target_batches(tmp_path):
    losses = {}
    for impl in ("logits", "chunked"):
        argv = _args(tmp_path / impl, "--model_type", "llama", "--max_steps", "2", "--loss_impl", impl,
                     "--do_eval", "false", "--do_predict", "false")  # fmt: skip
        metrics = train_and_evaluate(prepare(get_task("translation"), argv))
        losses[impl] = metrics["train_loss"]
    assert losses["chunked"] == pytest.approx(losses["logits"], rel=1e-5)


def test_default_prompts_name_the_task_and_the_languages(tmp_path):
    built = build(prepare(get_task("translation"), _args(tmp_path, "--model_type", "llama")))
    example = built.datasets["train"][0]
    start = next(i for i, label in enumerate(example["labels"]) if label != IGNORE_INDEX)
    prompt = built.tokenizer.decode(example["input_ids"][:start], skip_special_tokens=True)
    assert prompt.startswith("Translate from German to English.") and prompt.rstrip().endswith("English:")
    summarization = get_task("summarization")
    assert "{source}" in summarization.default_prompt_template and "Summar" in summarization.default_prompt_template
    assert "'Summarize the following text." in summarization.build_parser().epilog


def test_two_processes_gather_every_prediction_once_in_dataset_order(tmp_path):
    """Issue 20: with 2 processes and an uneven shard (5 examples, batches of 2: accelerate repeats examples to even
    the batches), the predictions are complete, in dataset order, without duplicates: the same file as one process."""
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = os.path.join(root, "scripts", "finetune_summarization.py")

    def run(name, launcher):
        out = tmp_path / name
        argv = ["--output_dir", str(out), "--report_to", "none", "--synthetic_train_examples", "16",
                "--synthetic_eval_examples", "5", "--model_type", "llama", "--do_train", "false",
                "--per_device_eval_batch_size", "2", "--generation_num_beams", "1", "--use_cpu", "true",
                "--disable_tqdm", "true", "--max_target_length", "40"]  # fmt: skip
        if launcher is None:  # one process: the script's main() in this one (no second interpreter start)
            threads = torch.get_num_threads()
            torch.set_num_threads(1)  # as the launched processes (OMP_NUM_THREADS=1): the same float sums
            try:
                _script("finetune_summarization").main(argv)
            finally:
                torch.set_num_threads(threads)
        else:
            env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": root}
            proc = subprocess.run([*launcher, script, *argv], capture_output=True, text=True, timeout=600, env=env,
                                  cwd=root)  # fmt: skip
            assert proc.returncode == 0, proc.stderr[-4000:]
        info = json.loads((out / "run_info.json").read_text())
        lines = (out / "generated_predictions.jsonl").read_text().splitlines()
        return info["world_size"], [json.loads(line) for line in lines]

    one = run("one", None)
    two = run("two", [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                      "29641"])  # fmt: skip
    assert one[0] == 1 and two[0] == 2
    assert len(one[1]) == 5 and two[1] == one[1]  # every test example once, in order, the same generations
    references = [row["reference"] for row in one[1]]
    assert len(set(references)) == len(references)
