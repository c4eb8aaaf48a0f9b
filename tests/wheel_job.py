"""Background job of the test suite (tests/conftest.py): build a wheel from this checkout, install it into a fresh
environment, and run the ``hf-tvd-loss`` command from a folder that is not the clone; writes ``result.json`` into
the folder given as its argument, which ``tests/test_command.py`` checks. A job, not a test body: building, installing
and the tiny run take ~25 s that the suite's other core absorbs (the same pattern as the quick benchmark).

    python tests/wheel_job.py FOLDER
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Without the suite's PYTHONPATH (the checkout): through it pip would find hf_tvd_loss already installed, and the
# fresh environment would import the checkout instead of the wheel.
CLEAN_ENV = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}


def fresh_environment(tmp_path: Path) -> tuple[Path, dict]:
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
                   check=True, cwd=tmp_path, env=CLEAN_ENV)  # fmt: skip
    (wheel,) = dist.glob("hf_tvd_loss-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = sorted(archive.namelist())
        entry_points = next(archive.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, env=CLEAN_ENV)
    python = venv / "bin" / "python"
    # installed before the path file exists, so pip does not see the checkout's editable install as this one
    subprocess.run([*pip, "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)], check=True,
                   env=CLEAN_ENV)  # fmt: skip
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True, env=CLEAN_ENV).stdout.strip()  # fmt: skip
    with open(os.path.join(site, "_dependencies.pth"), "w") as f:
        f.write(sysconfig.get_paths()["purelib"] + "\n")
    return venv, {"wheel_files": names, "entry_points": entry_points}


def main(folder: str) -> None:
    tmp_path = Path(folder)
    venv, result = fresh_environment(tmp_path)
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = dict(CLEAN_ENV)
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", VIRTUAL_ENV=str(venv),
               PATH=str(venv / "bin") + os.pathsep + env.get("PATH", ""))  # fmt: skip

    def run(*argv: str) -> str:
        done = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise SystemExit(f"{argv} failed ({done.returncode}): {done.stderr[-3000:]}")
        return done.stdout

    result["work"], result["venv"], result["root"] = str(work), str(venv), ROOT
    result["where"] = run(
        str(venv / "bin" / "python"), "-c", "import hf_tvd_loss; print(hf_tvd_loss.__file__)"
    ).strip()
    result["overview"] = run("hf-tvd-loss", "--help")
    result["help"] = run(str(venv / "bin" / "python"), "-m", "hf_tvd_loss", "summarization", "--help")
    out = work / "out"
    run("hf-tvd-loss", "summarization", "--output_dir", str(out), "--report_to", "none", "--max_steps", "2",
        "--logging_steps", "1", "--disable_tqdm", "true", "--synthetic_train_examples", "16",
        "--synthetic_eval_examples", "4", "--max_target_length", "8", "--generation_num_beams", "1")  # fmt: skip
    with open(out / "all_results.json", encoding="utf-8") as f:
        result["metrics"] = json.load(f)
    result["card"] = (out / "README.md").read_text(encoding="utf-8")
    with open(tmp_path / "result.json", "w", encoding="utf-8") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(sys.argv[1])
