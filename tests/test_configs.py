"""Every shipped YAML loads; task configs parse with their script's parser and match the paper's settings; the
``--config`` mechanics (defaults from the file, command line wins, unknown key refused)."""

from __future__ import annotations

import glob
import json
import os

import pytest
import yaml

from hf_tvd_loss.tasks import get_task

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "configs")
TASK_FOLDERS = {
    "summarization": "finetune_summarization.py",
    "translation": "finetune_translation.py",
    "language_modeling": "train_language_model.py",
    "classification": "finetune_classification.py",
}
# (γ, b, ε) of the official TaiLr launch scripts (docs: TAILR.md)
PAPER = {"summarization": (0.8, 0.2, 0.1), "translation": (0.1, 0.3, 0.1), "language_modeling": (1e-7, 0.2, 0.0)}
# The paper has no classification setting: the config's γ-CE (γ 0.5, b 0) is the script's own default.
SETTINGS = {**PAPER, "classification": (0.5, 0.2, 0.0)}

ALL_YAML = sorted(glob.glob(os.path.join(CONFIGS, "**", "*.yaml"), recursive=True))
TASK_YAML = [p for p in ALL_YAML if os.path.basename(os.path.dirname(p)) in TASK_FOLDERS]
ACCELERATE_YAML = sorted(glob.glob(os.path.join(CONFIGS, "accelerate", "*.yaml")))


def test_configs_exist():
    assert len(TASK_YAML) == 8
    names = {os.path.basename(p) for p in ACCELERATE_YAML}
    assert {"single_gpu.yaml", "multi_gpu.yaml", "fsdp.yaml", "deepspeed_zero2.yaml", "multi_node.yaml",
            "cpu_2proc.yaml"} <= names  # fmt: skip


@pytest.mark.parametrize("path", ALL_YAML, ids=lambda p: os.path.relpath(p, CONFIGS))
def test_every_yaml_loads_and_opens_with_its_launch_command(path):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    content = yaml.safe_load(text)
    assert isinstance(content, dict) and content
    first = text.splitlines()[:4]
    assert all(line.startswith("#") for line in first[:2])
    launchers = (
        ("scripts/compare_losses.py", "hf_tvd_loss compare", "hf-tvd-loss compare")
        if os.path.basename(os.path.dirname(path)) == "compare"
        else ("accelerate launch",)
    )
    assert any(launcher in line for line in first for launcher in launchers), "the opening comment gives the command"
    if os.path.dirname(path) != os.path.join(CONFIGS, "accelerate"):
        assert any(os.path.relpath(path, ROOT) in line for line in first), "the command names this file"


def test_deepspeed_json_loads():
    with open(os.path.join(CONFIGS, "accelerate", "ds_zero2.json"), encoding="utf-8") as f:
        config = json.load(f)
    assert config["zero_optimization"]["stage"] == 2
    with open(os.path.join(CONFIGS, "accelerate", "deepspeed_zero2.yaml"), encoding="utf-8") as f:
        launcher = yaml.safe_load(f)
    assert launcher["deepspeed_config"]["deepspeed_config_file"] == "configs/accelerate/ds_zero2.json"


@pytest.mark.parametrize("path", ACCELERATE_YAML, ids=os.path.basename)
def test_accelerate_configs_are_consistent(path):
    with open(path, encoding="utf-8") as f:
        config = yaml.safe_load(f)
    assert config["distributed_type"] in {"NO", "MULTI_GPU", "FSDP", "DEEPSPEED"}
    assert isinstance(config["num_processes"], int) and config["num_processes"] >= 1
    if config["num_machines"] > 1:
        assert "main_process_ip" in config and "main_process_port" in config
    if os.path.basename(path) == "cpu_2proc.yaml":
        # `--cpu --num_processes 2` runs one process; the multi-GPU launcher with 2 processes is what works.
        assert (config["distributed_type"], config["num_processes"], config["mixed_precision"]) == (
            "MULTI_GPU",
            2,
            "no",
        )


@pytest.mark.parametrize("path", TASK_YAML, ids=lambda p: os.path.relpath(p, CONFIGS))
def test_task_yaml_parses_with_its_script(path):
    task_name = os.path.basename(os.path.dirname(path))
    parser = get_task(task_name).build_parser()
    model_args, data_args, tvd_args, training_args = parser.parse_args_and_config(["--config", path])
    variant = os.path.splitext(os.path.basename(path))[0]
    if variant == "tailr":
        assert (tvd_args.gamma, tvd_args.min_weight, tvd_args.label_smoothing) == SETTINGS[task_name]
    else:
        assert variant == "mle" and tvd_args.gamma == 0.0
        assert tvd_args.label_smoothing == SETTINGS[task_name][2]  # the baseline keeps the same smoothing
    assert training_args.output_dir == f"outputs/{task_name}-{variant}"
    assert isinstance(training_args.learning_rate, float)
    assert training_args.do_train and training_args.do_eval


@pytest.mark.parametrize("task_name", sorted(TASK_FOLDERS))
def test_baseline_differs_from_tailr_only_in_the_loss(task_name):
    def load(variant):
        with open(os.path.join(CONFIGS, task_name, f"{variant}.yaml"), encoding="utf-8") as f:
            return yaml.safe_load(f)

    tailr, mle = load("tailr"), load("mle")
    assert set(tailr) == set(mle)
    differing = {key for key in tailr if tailr[key] != mle[key]}
    assert differing <= {"gamma", "min_weight", "output_dir"}
    assert "gamma" in differing


def test_paper_specific_settings():
    def load(task_name):
        with open(os.path.join(CONFIGS, task_name, "tailr.yaml"), encoding="utf-8") as f:
            return yaml.safe_load(f)

    summarization, translation = load("summarization"), load("translation")
    assert summarization["model_name_or_path"] == "facebook/bart-base"
    assert (summarization["learning_rate"], summarization["lr_scheduler_type"]) == (1e-4, "constant")
    assert (summarization["generation_num_beams"], summarization["no_repeat_ngram_size"]) == (5, 3)
    assert translation["model_type"] == "marian" and "model_name_or_path" not in translation
    overrides = dict(kv.split("=") for kv in translation["config_overrides"].split(","))
    assert (overrides["encoder_layers"], overrides["decoder_layers"], overrides["d_model"]) == ("6", "6", "512")
    assert (overrides["encoder_ffn_dim"], overrides["encoder_attention_heads"], overrides["dropout"]) == (
        "1024",
        "4",
        "0.3",
    )
    assert (translation["adam_beta2"], translation["learning_rate"], translation["warmup_steps"]) == (0.98, 3e-4, 4000)
    assert (translation["lr_scheduler_type"], translation["weight_decay"]) == ("inverse_sqrt", 1e-4)


def _write(tmp_path, text):
    path = tmp_path / "run.yaml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_yaml_sets_defaults_and_command_line_wins(tmp_path):
    path = _write(tmp_path, "gamma: 0.5\nlearning_rate: 1e-4\nmax_source_length: 77\nreport_to: none\n")
    parser = get_task("summarization").build_parser()
    _, data_args, tvd_args, training_args = parser.parse_args_and_config(["--config", path, "--gamma", "0.25"])
    assert tvd_args.gamma == 0.25  # command line over YAML
    assert data_args.max_source_length == 77
    assert training_args.learning_rate == 1e-4  # YAML reads 1e-4 as a string; the parser converts it
    assert tvd_args.min_weight == 0.2  # the task's own default where neither sets it


def test_unknown_yaml_key_names_the_key(tmp_path):
    path = _write(tmp_path, "gamma: 0.5\nlearnin_rate: 0.1\n")
    with pytest.raises(ValueError, match="learnin_rate"):
        get_task("translation").build_parser().parse_args_and_config(["--config", path])


@pytest.mark.parametrize("text, match", [("- a\n- b\n", "mapping"), ("gamma: [0.1\n", "not valid YAML")])
def test_malformed_yaml_is_refused(tmp_path, text, match):
    path = _write(tmp_path, text)
    with pytest.raises(ValueError, match=match):
        get_task("language_modeling").build_parser().parse_args_and_config(["--config", path])


def test_missing_config_file_is_refused(tmp_path):
    with pytest.raises(ValueError, match="file not found"):
        get_task("language_modeling").build_parser().parse_args_and_config(["--config", str(tmp_path / "no.yaml")])


def test_instruction_config_parses_with_the_language_model_script():
    path = os.path.join(CONFIGS, "instructions", "smollm2_chatterbot.yaml")
    (model_args, data_args, tvd_args, training_args), defaults = get_task("language_modeling").parse_args(
        ["--config", path]
    )
    assert model_args.model_name_or_path == "models/smollm2-135m-instruct"
    assert data_args.data_format == "messages" and data_args.completion_only_loss
    assert (tvd_args.gamma, tvd_args.min_weight) == PAPER["language_modeling"][:2]
    assert training_args.learning_rate == 5e-5 and defaults.situation == "fine-tuning a pretrained model"


def test_an_option_given_twice_is_refused_and_layers_merge():
    """argparse keeps the last of repeated options silently; the task parser refuses them, naming the option, and
    ``merge_args`` lets tools layer options (a later layer replaces an earlier one's option and its values)."""
    parser = get_task("language_modeling").build_parser()
    for argv, named in (
        (
            ["--learning_rate", "1e-3", "--learning_rate=1e-4"],
            "learning_rate: --learning_rate is given more than once",
        ),
        (["--remove_unused_columns", "true", "--no_remove_unused_columns"], "--no_remove_unused_columns"),
        (["--gamma", "0.1", "--block_size", "32", "--gamma", "0.1"], "gamma: --gamma"),  # even with the same value
    ):
        with pytest.raises(ValueError, match=named):
            parser.parse_args_and_config(["--output_dir", "/tmp/x", *argv])
    merged = parser.merge_args(
        ["--output_dir", "/tmp/x", "--gamma", "0.1", "--block_size", "32", "--do_eval"],
        ["--gamma=0.8", "--min_weight", "0.2"],
        ["--block_size", "64"],
    )
    assert merged == [
        "--output_dir",
        "/tmp/x",
        "--do_eval",
        "--gamma=0.8",
        "--min_weight",
        "0.2",
        "--block_size",
        "64",
    ]
    _, data_args, tvd_args, _ = parser.parse_args_and_config(merged)
    assert (tvd_args.gamma, tvd_args.min_weight, data_args.block_size) == (0.8, 0.2, 64)
    # a repeat inside one layer is kept, so that parsing refuses it
    assert parser.merge_args(["--seed", "1", "--seed", "2"], []).count("--seed") == 2


def test_yaml_merge_keys_work_and_a_repeated_key_is_still_refused(tmp_path):
    """`<<: *anchor` is valid YAML (PyYAML's safe_load merges it, explicit keys win); the strict loader that refuses
    a key given twice took the merge key for a key and called the file invalid (round 3 hostile run)."""
    from hf_tvd_loss.tasks.cli import load_yaml_config

    path = tmp_path / "c.yaml"
    path.write_text("defaults: &d {learning_rate: 0.003, max_steps: 4}\nrun:\n  <<: *d\n  max_steps: 2\n")
    assert load_yaml_config(str(path))["run"] == {"learning_rate": 0.003, "max_steps": 2}
    path.write_text("learning_rate: 0.1\nlearning_rate: 0.2\n")
    with pytest.raises(ValueError, match="duplicate key 'learning_rate'"):
        load_yaml_config(str(path))
