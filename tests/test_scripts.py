"""The three launch scripts end to end, with small caps so that the whole file takes well under two minutes:
each default (synthetic data, tiny model from a config) trains, evaluates, predicts and writes its outputs; local
files and a YAML config work; ``--help`` lists every option group; two CPU processes really run as two."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys

import pytest

from hf_tvd_loss.tasks import get_task

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = os.path.join(ROOT, "scripts")
QUICK_FILES = ["--report_to", "none", "--max_steps", "3", "--logging_steps", "1", "--disable_tqdm", "true"]
QUICK = [*QUICK_FILES, "--synthetic_train_examples", "48", "--synthetic_eval_examples", "8"]  # the synthetic corpus


def _script(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(SCRIPTS, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _read(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _check_outputs(out, task, expected_metrics, gamma):
    for name in ("model.safetensors", "config.json", "tokenizer.json", "all_results.json", "trainer_state.json",
                 "README.md", "run_info.json"):  # fmt: skip
        assert os.path.isfile(os.path.join(out, name)), name
    metrics = _read(os.path.join(out, "all_results.json"))
    for split in ("eval", "test"):
        for name in ("loss", "nll", "perplexity", "tvd_weight_mean", "gamma", "ece", "confidence", "token_accuracy",
                     *expected_metrics):  # fmt: skip
            assert f"{split}_{name}" in metrics, f"{split}_{name}"
        assert 0 <= metrics[f"{split}_ece"] <= 1 and 0 <= metrics[f"{split}_token_accuracy"] <= 1
        assert f"{split}_accuracy" not in metrics  # one name per quantity (issue 19/22: it was logged twice)
    assert metrics["eval_gamma"] == pytest.approx(gamma)
    history = _read(os.path.join(out, "trainer_state.json"))["log_history"]
    train_logs = [h for h in history if "loss" in h]
    assert len(train_logs) == 3 and all({"nll", "tvd_weight_mean", "gamma"} <= set(h) for h in train_logs)
    with open(os.path.join(out, "README.md"), encoding="utf-8") as f:
        card = f.read()
    assert f"| γ (gamma) | {gamma} |" in card and "b (min_weight)" in card and "ε (label_smoothing)" in card
    from huggingface_hub import ModelCard  # the front matter is the Hub's: tags and the loss settings as metadata

    meta = ModelCard.load(os.path.join(out, "README.md")).data
    assert {"hf_tvd_loss", "tailr", task} <= set(meta.tags) and meta.hf_tvd_loss["gamma"] == gamma
    info = _read(os.path.join(out, "run_info.json"))
    assert info["task"] == task and info["world_size"] == 1 and info["mixed_precision"] == "no"
    return metrics


def test_summarization_default(tmp_path, capsys):
    out = str(tmp_path / "sum")
    metrics = _script("finetune_summarization").main(
        [*QUICK, "--output_dir", out, "--generation_num_beams", "2", "--max_target_length", "12"]
    )
    _check_outputs(out, "summarization", ("rouge1", "rouge2", "rougeL", "gen_len"), gamma=0.8)
    assert metrics["test_rouge1"] >= 0
    with open(os.path.join(out, "generated_predictions.jsonl"), encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    assert len(rows) == 8 and set(rows[0]) == {"prediction", "reference"}
    printed = capsys.readouterr().out
    assert "[hf_tvd_loss] summarization: done" in printed and os.path.join(out, "all_results.json") in printed
    assert "on 1 process(es), cpu, float32" in printed
    assert os.path.isdir(os.path.join(out, "tokenizer")), "the trained tokenizer is saved with the model"

    # The saved folder is a pretrained model for the next run (local path; its tokenizer is reused, none trained).
    tuned = str(tmp_path / "tuned")
    args = get_task("summarization").build_parser().merge_args(QUICK, [  # these replace QUICK's max_steps
        "--output_dir", tuned, "--model_name_or_path", out, "--generation_num_beams", "1", "--do_predict", "false",
        "--max_steps", "2", "--max_target_length", "12"])  # fmt: skip
    metrics = _script("finetune_summarization").main(args)
    assert "eval_rouge1" in metrics and not os.path.isdir(os.path.join(tuned, "tokenizer"))
    with open(os.path.join(tuned, "README.md"), encoding="utf-8") as f:
        assert f"fine-tuned from `{out}`" in f.read()


def test_translation_default(tmp_path):
    out = str(tmp_path / "mt")
    _script("finetune_translation").main(
        [*QUICK, "--output_dir", out, "--generation_num_beams", "1", "--max_target_length", "16"]
    )
    _check_outputs(out, "translation", ("bleu", "chrf"), gamma=0.1)
    config = _read(os.path.join(out, "config.json"))
    assert config["model_type"] == "marian" and config["d_model"] == 64


def test_language_model_default(tmp_path):
    out = str(tmp_path / "lm")
    _script("train_language_model").main([*QUICK, "--output_dir", out, "--block_size", "32"])
    metrics = _check_outputs(out, "language_modeling", (), gamma=1e-7)
    assert metrics["eval_perplexity"] == pytest.approx(2.718281828 ** metrics["eval_nll"], rel=1e-6)


def test_precision_of_an_accelerate_config_is_recorded(tmp_path, capsys, monkeypatch):
    """`accelerate launch --config_file configs/accelerate/single_gpu.yaml` on a CPU machine sets
    ACCELERATE_MIXED_PRECISION=bf16 with --bf16 false: the accelerator trains under bf16 autocast all the same
    (new-user trial: the run did not say which precision it used). run_info.json and the summary say it."""
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    out = tmp_path / "lm"
    _script("train_language_model").main([*QUICK, "--output_dir", str(out), "--block_size", "32"])
    assert _read(out / "run_info.json")["mixed_precision"] == "bf16"
    assert "on 1 process(es), cpu, bf16 mixed precision" in capsys.readouterr().out


def test_translation_from_local_flat_csv_files(tmp_path):
    pairs = [("der hund sieht das haus", "the dog sees the house"), ("die stada baut", "the city builds")] * 12
    for split, rows in (("train", pairs), ("validation", pairs[:6])):  # held-out data differs from train
        with open(tmp_path / f"{split}.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["src", "tgt"])
            writer.writerows(rows)
    out = str(tmp_path / "mt")
    metrics = _script("finetune_translation").main(
        [
            *QUICK_FILES,
            "--output_dir",
            out,
            "--train_file",
            str(tmp_path / "train.csv"),
            "--validation_file",
            str(tmp_path / "validation.csv"),
            "--source_column",
            "src",
            "--target_column",
            "tgt",
            "--generation_num_beams",
            "1",
            "--do_predict",
            "false",
            "--max_target_length",
            "16",
        ]  # fmt: skip
    )
    assert metrics["eval_samples"] == 6 and "eval_bleu" in metrics and "test_bleu" not in metrics
    assert _read(os.path.join(out, "run_info.json"))["data"] == "files"


def test_yaml_config_run_with_command_line_override(tmp_path):
    config = tmp_path / "lm.yaml"
    config.write_text("gamma: 0.3\nmin_weight: 0.1\nblock_size: 16\nlearning_rate: 1e-3\nmax_steps: 50\n")
    out = str(tmp_path / "lm")
    metrics = _script("train_language_model").main(
        ["--config", str(config), *QUICK, "--output_dir", out, "--do_predict", "false"]
    )
    assert metrics["eval_gamma"] == 0.3  # from the YAML
    assert _read(os.path.join(out, "trainer_state.json"))["global_step"] == 3  # --max_steps 3 beats the YAML's 50


_OPTIONS = ("--config", "--model_name_or_path", "--train_file", "--max_train_samples", "--gamma", "--min_weight",
            "--label_smoothing", "--learning_rate", "--output_dir", "--report_to")  # fmt: skip


@pytest.mark.parametrize("script", ["finetune_summarization", "finetune_translation", "train_language_model"])
def test_help_lists_every_option_group(script, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _script(script).main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert all(option in text for option in _OPTIONS)
    extra = {"finetune_summarization": ("--text_column", "--summary_column", "--generation_num_beams"),
             "finetune_translation": ("--source_lang", "--translation_column", "--no_repeat_ngram_size"),
             "train_language_model": ("--block_size",)}[script]  # fmt: skip
    assert all(option in text for option in extra)


def test_bad_input_from_the_command_line(tmp_path):
    """The real entry point (``python scripts/...``): exit status 2, the last stderr line names the problem."""
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, os.path.join(SCRIPTS, "finetune_summarization.py"), "--output_dir", str(out),
         "--train_file", str(tmp_path / "missing.jsonl")],  # fmt: skip
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == f"error: train_file: file not found: {tmp_path / 'missing.jsonl'}"
    assert not out.exists()


@pytest.mark.slow
def test_two_cpu_processes(tmp_path):
    """`accelerate launch --config_file configs/accelerate/cpu_2proc.yaml` alone (issue 22.7: it used to need
    --use_cpu true as well): the run reports world size 2."""
    out = tmp_path / "ddp"
    config = os.path.join(os.path.dirname(SCRIPTS), "configs", "accelerate", "cpu_2proc.yaml")
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", config,
               os.path.join(SCRIPTS, "train_language_model.py"), "--output_dir", str(out),
               *QUICK, "--block_size", "32"]  # fmt: skip
    env = {key: value for key, value in os.environ.items() if key != "ACCELERATE_USE_CPU"}
    env["OMP_NUM_THREADS"] = "1"
    result = subprocess.run(command, capture_output=True, text=True, timeout=240, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert _read(out / "run_info.json")["world_size"] == 2
    # Issue 22.7: DeepSpeed lives in .venv-deepspeed, so a run in the main environment is free of its accelerator line
    assert "Setting accelerator to CPU" not in result.stdout + result.stderr
    assert "done in" in result.stdout and "on 2 process(es)" in result.stdout
    metrics = _read(out / "all_results.json")
    assert "eval_ece" in metrics and "eval_perplexity" in metrics
