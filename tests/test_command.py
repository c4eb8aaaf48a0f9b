"""The ``hf-tvd-loss`` command (``python -m hf_tvd_loss``): its subcommands are the registered tasks and the loss
study, each with the options of its script; and it works from a built wheel installed into a fresh environment,
run from a folder that is not the clone."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys

import pytest

from hf_tvd_loss import command
from hf_tvd_loss.tasks import TASKS, get_task

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_overview_lists_every_task_and_the_study(capsys):
    assert command.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: hf-tvd-loss <subcommand>")
    for name in TASKS:
        line = next(row for row in out.splitlines() if row.startswith(f"  {name.replace('_', '-')} "))
        assert get_task(name).description in line
    assert any(row.startswith("  compare ") for row in out.splitlines())
    assert list(command.subcommands()) == [*(name.replace("_", "-") for name in TASKS), "compare"]


def test_a_registered_task_is_a_subcommand(monkeypatch):
    """Registering a task is all it takes: the table derives from ``tasks.TASKS``."""
    monkeypatch.setitem(TASKS, "new_task", ("summarization", "SummarizationTask"))
    assert command.subcommands()["new-task"] == "new_task"


@pytest.mark.parametrize("argv,message", [
    (["sumarization"], r"unknown subcommand 'sumarization' \(did you mean 'summarization'\?\); the subcommands are: "
                       r"summarization, translation, language-modeling, .*compare"),
    (["train"], r"unknown subcommand 'train'; the subcommands are: summarization, "),
    (["--output_dir", "x"], r"the subcommand comes first"),
    ([], r"a subcommand is required"),
])  # fmt: skip
def test_bad_subcommand_is_one_clear_error(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        command.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert re.search(r"hf-tvd-loss: error: " + message, err), err


@pytest.mark.parametrize("sub,task", [(sub, task) for sub, task in command.subcommands().items() if task])
def test_task_subcommand_help_is_the_scripts(capsys, sub, task):
    """``hf-tvd-loss <task> --help``: the task's parser, every option of the script, under the subcommand's name."""
    argv0 = sys.argv[0]
    with pytest.raises(SystemExit) as exit_info:
        command.main([sub, "--help"])
    assert exit_info.value.code == 0
    assert sys.argv[0] == argv0  # the program name is put back
    out = capsys.readouterr().out
    assert out.startswith(f"usage: hf-tvd-loss {sub} ")
    parser = get_task(task).build_parser()
    for action in parser._actions:
        if action.help == argparse.SUPPRESS:  # transformers' example options accepted only where they change nothing
            continue
        for option in action.option_strings:
            assert option in out, option
    assert get_task(task).description in " ".join(out.split())  # argparse wraps it


def test_underscore_spelling_is_accepted(capsys):
    with pytest.raises(SystemExit) as exit_info:
        command.main(["language_modeling", "--help"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith("usage: hf-tvd-loss language-modeling ")


def test_compare_subcommand_is_the_study(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        command.main(["compare", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: hf-tvd-loss compare ") and "--study_config" in out and "--noise_rates" in out
    with pytest.raises(SystemExit) as exit_info:  # the study's own checks, before any run
        command.main(["compare", "--losses", "ce", "mse", "--report_dir", str(tmp_path / "r")])
    assert exit_info.value.code == 2
    assert "error:" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "r")


@pytest.mark.slow
def test_installed_wheel_runs_from_any_folder(installed_wheel):
    """A wheel built from this checkout, installed into a fresh environment, runs from another folder: the
    background job tests/wheel_job.py (started at collection, tests/conftest.py) did the work."""
    returncode, _, stderr, folder = installed_wheel
    assert returncode == 0, stderr[-3000:]
    with open(os.path.join(folder, "result.json"), encoding="utf-8") as f:
        result = json.load(f)
    names = set(result["wheel_files"])
    assert "hf_tvd_loss/__main__.py" in names and "hf_tvd_loss/command.py" in names
    assert "hf_tvd_loss/tasks/evaluate_metrics/hf_tvd_rouge.py" in names  # the ROUGE module the run below loads
    assert "hf-tvd-loss = hf_tvd_loss.command:main" in result["entry_points"]
    assert not result["work"].startswith(ROOT + os.sep)
    assert result["where"].startswith(result["venv"] + os.sep), result[
        "where"
    ]  # the installed wheel, not the checkout
    for sub in ("summarization", "translation", "language-modeling", "classification", "compare"):
        assert f"\n  {sub} " in result["overview"]
    assert (
        result["help"].startswith("usage: python -m hf_tvd_loss summarization ")
        and "--summary_column" in result["help"]
    )
    assert {"eval_rouge1", "eval_nll", "test_rougeL"} <= set(result["metrics"])
    assert "hf-tvd-loss summarization --output_dir" in result["card"]
