"""Never silently different from what was asked: options the built optimizer or schedule would not apply
(``tasks/applied.py``), options changed on resume (refused or applied and recorded), checkpoint files verified
against their marker's sizes and checksums, and a run killed after its last step finished by the resume command."""

from __future__ import annotations

import json
import os
import time

import pytest
from transformers import TrainingArguments

from hf_tvd_loss.checkpoints import (
    CHECKPOINT_COMPLETE_MARKER,
    checkpoint_problem,
    file_checksum,
    resolve_resume_checkpoint,
    run_can_be_finished,
)
from hf_tvd_loss.tasks import get_task, run_task
from hf_tvd_loss.tasks import run as run_module
from hf_tvd_loss.tasks.applied import check_options_applied
from hf_tvd_loss.tasks.run import prepare

QUICK_LM = ["--report_to", "none", "--synthetic_train_examples", "24", "--synthetic_eval_examples", "4",
            "--disable_tqdm", "true", "--block_size", "32", "--do_predict", "false"]  # fmt: skip


def _lm(out, *extra):
    return ["--output_dir", str(out), *QUICK_LM, *extra]


def _args(**kwargs):
    return TrainingArguments(output_dir="unused", report_to="none", use_cpu=True, **kwargs)


# ------------------------------------------------------------------------------------- item 1: applied options
@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"optim": "sgd", "adam_beta2": 0.98}, "--adam_beta2 0.98 is not used by --optim sgd (SGD reads lr, momentum"),
        ({"optim": "adagrad", "adam_epsilon": 1e-6}, "--adam_epsilon 1e-06 is not used by --optim adagrad"),
        ({"optim": "adafactor", "adam_beta1": 0.8}, "--adam_beta1 0.8 is not used by --optim adafactor"),
        ({"optim": "adamw_torch", "optim_args": "foo=1"}, "--optim_args foo=1 is not passed on by transformers"),
        ({"optim": "sgd", "optim_args": "momentum=0.9,bogus=3"}, "--optim_args bogus=3 is not passed on"),
        ({"lr_scheduler_type": "constant", "warmup_steps": 10}, "--warmup_steps 10 is not used by --lr_scheduler_type"),
        ({"lr_scheduler_type": "constant_with_warmup", "lr_scheduler_kwargs": {"num_cycles": 2}},
         "--lr_scheduler_kwargs num_cycles=2 is not passed on by transformers to --lr_scheduler_type constant_with"),
        ({"lr_scheduler_type": "cosine", "lr_scheduler_kwargs": {"bogus": 2}}, "is not accepted by --lr_scheduler_"),
    ],
)  # fmt: skip
def test_an_option_the_built_optimizer_or_schedule_does_not_read_is_refused(options, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_options_applied(_args(**options), frozenset(options))


@pytest.mark.parametrize(
    "options",
    [
        {"optim": "adamw_torch", "adam_beta2": 0.98, "adam_epsilon": 1e-6, "weight_decay": 0.1},
        {"optim": "sgd", "optim_args": "momentum=0.9,nesterov=True", "weight_decay": 0.01},
        {"optim": "adafactor", "weight_decay": 0.1},
        {"lr_scheduler_type": "linear", "warmup_steps": 0.1},
        {"lr_scheduler_type": "cosine_with_restarts", "lr_scheduler_kwargs": {"num_cycles": 2}},
        {"lr_scheduler_type": "polynomial", "lr_scheduler_kwargs": {"power": 2.0}},
    ],
)
def test_options_the_built_optimizer_and_schedule_read_are_accepted(options):
    check_options_applied(_args(**options), frozenset(options))


def test_defaults_the_user_did_not_set_are_never_refused():
    # the translation task's own adam_beta2 default beside --optim sgd: not asked for, so not refused
    check_options_applied(_args(optim="sgd", adam_beta2=0.98), frozenset({"optim"}))


def test_prepare_refuses_an_unapplied_option_and_the_check_is_cheap(tmp_path):
    argv = _lm(tmp_path / "out", "--optim", "sgd", "--adam_beta2", "0.98")
    with pytest.raises(ValueError, match="--adam_beta2 0.98 is not used by --optim sgd"):
        prepare(get_task("language_modeling"), argv)
    assert not (tmp_path / "out").exists()
    args = _args(optim="sgd", optim_args="momentum=0.9", lr_scheduler_type="linear", warmup_steps=5)
    check_options_applied(args, frozenset({"optim"}))  # imports paid once, as in prepare
    start = time.perf_counter()
    for _ in range(5):
        check_options_applied(args, frozenset({"optim", "optim_args", "lr_scheduler_type", "warmup_steps"}))
    assert (time.perf_counter() - start) / 5 < 0.5


# ------------------------------------------------------------------------------- item 2: options on resume
def _two_steps(out, *extra):
    run_task(get_task("language_modeling"), _lm(out, "--max_steps", "2", "--save_strategy", "steps",
                                                "--save_steps", "1", "--do_eval", "false", *extra))  # fmt: skip


def test_resuming_with_an_option_it_would_not_apply_is_refused_naming_both_values(tmp_path):
    out = tmp_path / "out"
    _two_steps(out)
    before = sorted(p.name for p in out.iterdir())
    for option, value, shown in (("--weight_decay", "0.1", "weight_decay 0.0 -> 0.1"),
                                 ("--learning_rate", "0.01", "learning_rate 0.002 -> 0.01"),
                                 ("--per_device_train_batch_size", "4", "per_device_train_batch_size 16.0 -> 4.0"),
                                 ("--seed", "7", "seed 42.0 -> 7.0")):  # fmt: skip
        argv = _lm(out, "--max_steps", "4", "--save_strategy", "steps", "--save_steps", "1", "--do_eval", "false",
                   "--resume_from_checkpoint", "latest", option, value)  # fmt: skip
        with pytest.raises(ValueError, match=f"with other training options: {shown}"):
            prepare(get_task("language_modeling"), argv)
    assert sorted(p.name for p in out.iterdir()) == before


def test_resuming_with_a_longer_run_and_other_save_steps_applies_and_records_them(tmp_path, capsys):
    out = tmp_path / "out"
    _two_steps(out)
    run_task(get_task("language_modeling"), _lm(out, "--max_steps", "6", "--save_strategy", "steps", "--save_steps",
                                                "2", "--do_eval", "false", "--resume_from_checkpoint", "latest"))  # fmt: skip
    info = json.loads((out / "run_info.json").read_text())
    assert info["resumed_with_changes"] == {"max_steps": [2.0, 6.0], "save_steps": [1.0, 2.0]}
    assert info["resumed_checkpoint_verified"].startswith("the sizes and xxh3_128 checksums of")
    # save_steps 2 applied from step 2 on (transformers alone keeps the checkpoint's 1: checkpoint-3, -5)
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2", "checkpoint-4",
                                                                "checkpoint-6"]  # fmt: skip
    assert "changed on resume: max_steps 2 -> 6, save_steps 1 -> 2" in capsys.readouterr().out
    assert "changed on resume: max_steps 2 -> 6, save_steps 1 -> 2" in (out / "README.md").read_text()


# --------------------------------------------------------------------------- item 5: checkpoints verified
def test_the_marker_records_every_files_size_and_checksum_and_resume_verifies_them(tmp_path):
    out = tmp_path / "out"
    _two_steps(out)
    checkpoint = out / "checkpoint-2"
    marker = json.loads((checkpoint / CHECKPOINT_COMPLETE_MARKER).read_text())
    assert marker["checksum"] == "xxh3_128"
    names = {p.relative_to(checkpoint).as_posix() for p in checkpoint.rglob("*") if p.is_file()}
    assert set(marker["files"]) == names - {CHECKPOINT_COMPLETE_MARKER}
    record = marker["files"]["optimizer.pt"]
    assert record["size"] == (checkpoint / "optimizer.pt").stat().st_size
    assert record["xxh3_128"] == file_checksum(str(checkpoint / "optimizer.pt"), "xxh3_128")
    assert checkpoint_problem(str(checkpoint)) is None

    # one byte of the optimizer state changed (same size): refused, naming the file, offering checkpoint-1
    data = bytearray((checkpoint / "optimizer.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (checkpoint / "optimizer.pt").write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"optimizer.pt changed after the checkpoint was written \(its xxh3_128.*"
                                         r"resume from .*checkpoint-1 instead"):  # fmt: skip
        resolve_resume_checkpoint("latest", str(out))
    argv = _lm(out, "--max_steps", "3", "--do_eval", "false", "--resume_from_checkpoint", "latest")
    with pytest.raises(ValueError, match="optimizer.pt changed"):
        prepare(get_task("language_modeling"), argv)
    with open(checkpoint / "config.json", "a") as f:  # still valid JSON, one byte longer
        f.write(" ")
    assert "config.json changed after the checkpoint was written (" in checkpoint_problem(str(checkpoint))
    (out / "checkpoint-1" / "tokenizer.json").unlink()  # a file the marker records, removed
    problem = checkpoint_problem(str(out / "checkpoint-1"))
    assert problem is not None and problem.startswith("tokenizer.json is missing (the completion marker records it")


def test_a_marker_without_checksums_is_accepted_on_structure_only_and_says_so(tmp_path, caplog):
    out = tmp_path / "out"
    _two_steps(out)
    marker_path = out / "checkpoint-2" / CHECKPOINT_COMPLETE_MARKER
    marker = json.loads(marker_path.read_text())
    del marker["files"], marker["checksum"], marker["training_options"]
    marker_path.write_text(json.dumps(marker))
    with caplog.at_level("WARNING", logger="hf_tvd_loss.checkpoints"):
        run_task(get_task("language_modeling"), _lm(out, "--max_steps", "3", "--do_eval", "false",
                                                    "--resume_from_checkpoint", "latest"))  # fmt: skip
    assert "structure only: its marker records no file sizes or checksums" in caplog.text
    assert "records no training options" in caplog.text
    info = json.loads((out / "run_info.json").read_text())
    assert info["resumed_checkpoint_verified"].startswith("structure only")


# ------------------------------------------------------ item 5: killed after the last step, finished by the resume
class Killed(BaseException):
    """Stands for SIGKILL in-process: nothing after it runs (a BaseException: no handler of the run catches it)."""


_KILL_POINTS = {
    "before the final model": ("TaskTrainer", "save_model"),
    "before the evaluation": ("TaskTrainer", "evaluate"),
    "before the card": ("run_module", "write_model_card"),
    "before run_info.json": ("run_module", "write_json_atomically"),
}


def _finished_outputs(out):
    from safetensors.torch import load_file

    weights = load_file(str(out / "model.safetensors"))
    results = json.loads((out / "all_results.json").read_text())
    return weights, results


@pytest.mark.parametrize("point", list(_KILL_POINTS))
def test_a_run_killed_after_its_last_step_is_finished_by_the_resume_command(tmp_path, monkeypatch, point):
    """Kill anywhere after the last training step (its checkpoint complete): ``--resume_from_checkpoint latest``
    trains no step and writes what the killed run did not (model, evaluation, card, run_info.json), the same as
    an uninterrupted run's. The run is sized by epochs (3 steps)."""
    from hf_tvd_loss.tasks.trainers import TaskTrainer

    argv = ["--num_train_epochs", "1", "--per_device_train_batch_size", "32", "--save_strategy", "steps",
            "--save_steps", "1", "--do_eval", "true", "--seed", "3"]  # fmt: skip
    whole = tmp_path / "whole"
    run_task(get_task("language_modeling"), _lm(whole, *argv))

    out = tmp_path / "out"
    owner, name = _KILL_POINTS[point]
    target = TaskTrainer if owner == "TaskTrainer" else run_module
    original = getattr(target, name)

    def killed(*args, **kwargs):
        during_training = {
            "save_model": len(args) > 1 and args[1] is not None,  # a checkpoint's save (self, output_dir)
            "evaluate": kwargs.get("metric_key_prefix") != "eval",  # run.py's final evaluation names its prefix
            "write_json_atomically": not str(args[0]).endswith("run_info.json"),  # the ledger's writes
        }
        if during_training.get(name, False):
            return original(*args, **kwargs)
        raise Killed(point)

    monkeypatch.setattr(target, name, killed)
    with pytest.raises(Killed):
        run_task(get_task("language_modeling"), _lm(out, *argv))
    monkeypatch.setattr(target, name, original)
    assert not (out / "run_info.json").exists() and (out / "checkpoint-3" / CHECKPOINT_COMPLETE_MARKER).exists()
    with pytest.raises(ValueError, match="already holds"):  # the same command without resuming: refused
        prepare(get_task("language_modeling"), _lm(out, *argv))
    run_task(get_task("language_modeling"), _lm(out, *argv, "--resume_from_checkpoint", "latest"))

    info = json.loads((out / "run_info.json").read_text())
    assert info["resumed_from"] == str(out / "checkpoint-3")
    weights, results = _finished_outputs(out)
    whole_weights, whole_results = _finished_outputs(whole)
    assert weights.keys() == whole_weights.keys()
    assert all((weights[k] == whole_weights[k]).all() for k in weights)
    assert results["eval_loss"] == pytest.approx(whole_results["eval_loss"], rel=1e-6)
    assert "train_loss" not in results  # no step trained in the finishing run: no loss to report, not 0
    assert (out / "README.md").exists()


def test_run_can_be_finished_only_from_the_last_step_of_an_unfinished_run(tmp_path):
    out = tmp_path / "out"
    _two_steps(out)
    checkpoint = str(out / "checkpoint-2")
    assert not run_can_be_finished(checkpoint, str(out), 2)  # run_info.json: the run finished
    os.remove(out / "run_info.json")
    assert run_can_be_finished(checkpoint, str(out), 2)
    assert not run_can_be_finished(checkpoint, str(out), 3)  # steps left: an ordinary resume
    assert not run_can_be_finished(str(out / "checkpoint-1"), str(out), 2)
    assert not run_can_be_finished(checkpoint, str(tmp_path), 2)  # a checkpoint of another folder


def test_a_script_run_sized_by_max_steps_killed_after_its_last_step_is_finished(tmp_path, monkeypatch):
    out = tmp_path / "out"
    argv = _lm(out, "--max_steps", "2", "--save_strategy", "steps", "--save_steps", "1", "--do_eval", "false")
    original = run_module.write_model_card

    def killed(*args, **kwargs):
        raise Killed("before the card")

    monkeypatch.setattr(run_module, "write_model_card", killed)
    with pytest.raises(Killed):
        run_task(get_task("language_modeling"), argv)
    monkeypatch.setattr(run_module, "write_model_card", original)
    run_task(get_task("language_modeling"), [*argv, "--resume_from_checkpoint", "latest"])
    assert json.loads((out / "run_info.json").read_text())["resumed_from"] == str(out / "checkpoint-2")
