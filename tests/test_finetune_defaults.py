"""Training defaults fit the situation: fine-tuning a pretrained model (--model_name_or_path) gets fine-tuning
defaults, building from scratch keeps the task's, and a value given on the command line or in --config wins. The
closing summary names the defaults chosen and shows the headline metrics."""

from __future__ import annotations

import json

import pytest

from hf_tvd_loss.tasks import get_task
from hf_tvd_loss.tasks.base import FINE_TUNING, FROM_SCRATCH
from hf_tvd_loss.tasks.modeling import train_tokenizer
from hf_tvd_loss.tasks.run import prepare
from hf_tvd_loss.tasks.synthetic import language_modeling_corpus, translation_corpus


def _pretrained(tmp_path, kind):
    """A tiny model + trained tokenizer saved as a pretrained folder (no downloads)."""
    from transformers import BartConfig, BartForConditionalGeneration, GPT2Config, GPT2LMHeadModel

    if kind == "gpt2":
        texts = [r["text"] for r in language_modeling_corpus(40)]
        model = GPT2LMHeadModel(
            GPT2Config(
                vocab_size=200,
                n_embd=16,
                n_layer=1,
                n_head=2,
                n_positions=256,
                pad_token_id=0,
                bos_token_id=1,
                eos_token_id=2,
            )
        )
    else:
        texts = [t for r in translation_corpus(80) for t in r["translation"].values()]
        model = BartForConditionalGeneration(
            BartConfig(vocab_size=200, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                       decoder_attention_heads=2, encoder_ffn_dim=16, decoder_ffn_dim=16, max_position_embeddings=128)
        )  # fmt: skip
    folder = tmp_path / kind
    train_tokenizer(iter(texts), vocab_size=200, model_max_length=128).save_pretrained(folder)
    model.save_pretrained(folder)
    return str(folder)


def _base(tmp_path):
    return ["--output_dir", str(tmp_path / "out"), "--report_to", "none", "--synthetic_train_examples", "16",
            "--synthetic_eval_examples", "4"]  # fmt: skip


@pytest.mark.parametrize(("task_name", "kind", "lr", "schedule"), [
    ("language_modeling", "gpt2", 5e-5, "linear"),
    ("translation", "bart", 1e-4, "constant_with_warmup"),
    ("summarization", "bart", 1e-4, "constant_with_warmup"),
    ("classification", "gpt2", 5e-5, "linear"),
])  # fmt: skip
def test_pretrained_gets_finetuning_defaults(tmp_path, task_name, kind, lr, schedule):
    task = get_task(task_name)
    prepared = prepare(task, [*_base(tmp_path), "--model_name_or_path", _pretrained(tmp_path, kind)])
    args = prepared.training_args
    assert args.learning_rate == lr and args.lr_scheduler_type.value == schedule and args.warmup_steps == 0.03
    assert prepared.defaults.situation == FINE_TUNING and not prepared.defaults.overridden
    assert "learning_rate" in prepared.defaults.describe()
    if task_name == "translation":
        assert args.adam_beta2 == 0.999  # the from-scratch 0.98 does not carry over


def test_from_scratch_keeps_the_task_defaults(tmp_path):
    for task_name, lr in (
        ("language_modeling", 2e-3),
        ("translation", 3e-3),
        ("summarization", 1e-3),
        ("classification", 1e-3),
    ):
        task = get_task(task_name)
        prepared = prepare(task, _base(tmp_path))
        assert prepared.training_args.learning_rate == lr == task.defaults["learning_rate"]
        assert prepared.training_args.lr_scheduler_type.value == task.defaults["lr_scheduler_type"]
        assert prepared.defaults.situation == FROM_SCRATCH


def test_explicit_values_win_on_the_command_line_and_in_yaml(tmp_path):
    model = _pretrained(tmp_path, "gpt2")
    task = get_task("language_modeling")
    prepared = prepare(task, [*_base(tmp_path), "--model_name_or_path", model, "--learning_rate", "3e-4"])
    assert prepared.training_args.learning_rate == 3e-4
    assert prepared.training_args.lr_scheduler_type.value == "linear"  # the others still apply
    assert prepared.defaults.overridden == {"learning_rate": 3e-4}
    config = tmp_path / "run.yaml"
    config.write_text(f"model_name_or_path: {model}\nlr_scheduler_type: constant\n")
    prepared = prepare(task, [*_base(tmp_path), "--config", str(config)])  # the model named only in the YAML
    assert prepared.training_args.learning_rate == 5e-5
    assert prepared.training_args.lr_scheduler_type.value == "constant"
    assert "given instead: lr_scheduler_type constant" in prepared.defaults.describe()


def test_help_says_which_defaults_apply_when(capsys):
    with pytest.raises(SystemExit):
        get_task("language_modeling").build_parser().parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "Fine-tuning a pretrained model (--model_name_or_path): learning_rate 5e-05" in text
    assert "with --model_name_or_path (fine-tuning): 5e-05" in text


def test_summary_shows_defaults_and_headline_metrics(tmp_path, capsys):
    from hf_tvd_loss.tasks import run_task

    argv = [*_base(tmp_path), "--model_name_or_path", _pretrained(tmp_path, "gpt2"), "--max_steps", "2",
            "--block_size", "32", "--disable_tqdm", "true", "--per_device_train_batch_size", "4"]  # fmt: skip
    metrics = run_task(get_task("language_modeling"), argv)
    out = capsys.readouterr().out
    summary = out[out.index("[hf_tvd_loss] language_modeling: done") :]
    assert "fine-tuning a pretrained model: learning_rate 5e-05" in summary
    for line_start, split in (("  validation", "eval"), ("  test", "test")):
        line = next(line for line in summary.splitlines() if line.startswith(line_start))
        assert f"perplexity {metrics[f'{split}_perplexity']:.4g}" in line and "ece " in line and "loss " in line
    info = json.loads((tmp_path / "out" / "run_info.json").read_text())
    assert info["defaults"].startswith("fine-tuning a pretrained model")
