"""The ``hf-tvd-loss`` command (``python -m hf_tvd_loss``): its subcommands are the registered tasks and the loss
study, each with the options of its script; and it works from a built wheel installed into a fresh environment,
run from a folder that is not the clone."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile

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


def _fresh_environment(tmp_path):
    """A virtual environment holding only the wheel built from this checkout; the dependencies come from the
    running environment's site-packages through a path file (not its .pth files, so not an editable install)."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(os.path.join(ROOT, name), src / name)
    shutil.copytree(
        os.path.join(ROOT, "hf_tvd_loss"), src / "hf_tvd_loss", ignore=shutil.ignore_patterns("__pycache__")
    )
    dist = tmp_path / "dist"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(dist), str(src)],
                   check=True, cwd=tmp_path)  # fmt: skip
    (wheel,) = dist.glob("hf_tvd_loss-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(archive.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "hf_tvd_loss/__main__.py" in names and "hf_tvd_loss/command.py" in names
    assert "hf_tvd_loss/tasks/evaluate_metrics/hf_tvd_rouge.py" in names  # the ROUGE module the run below loads
    assert "hf-tvd-loss = hf_tvd_loss.command:main" in entry_points
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    # installed before the path file exists, so pip does not see the checkout's editable install as this one
    subprocess.run([*pip, "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)], check=True)
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()  # fmt: skip
    with open(os.path.join(site, "_dependencies.pth"), "w") as f:
        f.write(sysconfig.get_paths()["purelib"] + "\n")
    return venv


@pytest.mark.slow
def test_installed_wheel_runs_from_any_folder(tmp_path):
    venv = _fresh_environment(tmp_path)
    work = tmp_path / "elsewhere"
    work.mkdir()
    assert not str(work).startswith(ROOT + os.sep)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", VIRTUAL_ENV=str(venv),
               PATH=str(venv / "bin") + os.pathsep + env.get("PATH", ""))  # fmt: skip

    def run(*argv):
        done = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout

    where = run(str(venv / "bin" / "python"), "-c", "import hf_tvd_loss; print(hf_tvd_loss.__file__)").strip()
    assert where.startswith(str(venv) + os.sep), where  # the installed wheel, not the checkout
    overview = run("hf-tvd-loss", "--help")
    for sub in ("summarization", "translation", "language-modeling", "compare"):
        assert f"\n  {sub} " in overview
    help_text = run(str(venv / "bin" / "python"), "-m", "hf_tvd_loss", "summarization", "--help")
    assert help_text.startswith("usage: python -m hf_tvd_loss summarization ") and "--summary_column" in help_text
    out = work / "out"
    run("hf-tvd-loss", "summarization", "--output_dir", str(out), "--report_to", "none", "--max_steps", "2",
        "--logging_steps", "1", "--disable_tqdm", "true", "--synthetic_train_examples", "16",
        "--synthetic_eval_examples", "4", "--max_target_length", "8", "--generation_num_beams", "1")  # fmt: skip
    with open(out / "all_results.json", encoding="utf-8") as f:
        metrics = json.load(f)
    assert {"eval_rouge1", "eval_nll", "test_rougeL"} <= set(metrics)
    assert "hf-tvd-loss summarization --output_dir" in (out / "README.md").read_text(encoding="utf-8")
