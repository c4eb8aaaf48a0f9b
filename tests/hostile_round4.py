"""Hostile round 4 ("never silently different", items 3, 4 and 6): paths as written, refused runs that change
nothing, operating-system failures named. Inputs invented for this round, judged before and after the fixes
(``python tests/hostile_round4.py [id ...]``).

Verdicts, for each input:

* ``good``: refused with one ``error:`` line / ``ValueError`` naming every string of ``names``, and the output
  folder exactly as it was (every file's bytes and times, the ledger and lock included); for the inputs of
  :data:`VALID` (a path that is valid as written) the run trains, into the folder that was asked for;
* ``late``: refused, but not naming the problem, with a traceback, or after work started;
* ``silent``: the run finished (for a bad input);
* ``folder changed``: a refused run left the output folder other than it was (or changed a file of the user's).

Script cases run in-process through ``prepare → build → train_and_evaluate`` (the phases ``run_task`` runs); the
``os`` cases run the script in a subprocess (a file-size limit, launcher variables) or through ``run_task`` (its
one-line report), since what they judge is the script's own output.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from hostile_cases import QUICK_LM, QUICK_LM_FILES, _argv, _checkpoint, _rows  # noqa: E402

__all__ = ["ROUND4", "VALID", "main", "verdict"]

REPO = Path(__file__).resolve().parent.parent
GOOD, LATE, SILENT, CHANGED = "good", "late", "silent", "folder changed"
LM_TRAIN = [{"text": f"the council met on day {i} and approved the new bridge plan for the town"} for i in range(40)]
TINY_TRAIN = ["--max_steps", "2", "--per_device_train_batch_size", "2", "--save_strategy", "no"]


@dataclass(frozen=True)
class Case:
    """``build(tmp)`` (run with ``tmp`` as the working directory) returns ``(task, argv)`` for an in-process run, or
    a callable returning ``(exit status, stderr)`` for a process-level one. ``out`` is the output folder to watch
    (relative to ``tmp``); ``env`` is set around the case."""

    id: str
    group: str  # path | folder | os
    build: Callable[[Path], Any]
    names: tuple[str, ...]
    out: str = "out"
    env: dict[str, str] = field(default_factory=dict)


def _lm(*extra: str, out: str = "out") -> Callable[[Path], Any]:
    return lambda tmp: _argv("language_modeling", ["--output_dir", out, *QUICK_LM, *TINY_TRAIN], extra)


def _lm_file(name: str, *extra: str, option: str = "--train_file", out: str = "out") -> Callable[[Path], Any]:
    """A language-modelling run on a small JSON-lines file saved as ``name`` (a path relative to ``tmp``)."""

    def build(tmp: Path) -> Any:
        path = tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(_rows(LM_TRAIN)) + "\n", encoding="utf-8")
        base = ["--output_dir", out, *QUICK_LM_FILES, *TINY_TRAIN, "--do_eval", "false", "--do_predict", "false"]
        return _argv("language_modeling", base, (option, name, *extra))

    return build


def _yaml(text: str, *extra: str, data: str | None = None) -> Callable[[Path], Any]:
    """A run whose ``--config`` holds ``text`` (its output_dir, when it sets one, replaces the command line's)."""

    def build(tmp: Path) -> Any:
        if data is not None:
            path = tmp / data
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("\n".join(_rows(LM_TRAIN)) + "\n", encoding="utf-8")
        (tmp / "config.yaml").write_text(text, encoding="utf-8")
        base = [] if "output_dir" in text else ["--output_dir", "out"]
        quick = QUICK_LM_FILES if "train_file" in text else QUICK_LM
        return _argv("language_modeling", [*base, *quick, *TINY_TRAIN, "--config", "config.yaml"], extra)

    return build


# ------------------------------------------------------------------------------ folders of an earlier run
def _earlier_run_with_ledger(tmp: Path, *, lock: bool = True) -> Path:
    """An earlier run's folder as the scripts leave it: outputs, ``run_outputs.json`` listing them, a lock file."""
    out = tmp / "out"
    out.mkdir(exist_ok=True)
    (out / "model.safetensors").write_bytes(b"weights of an earlier run")
    (out / "run_info.json").write_text('{"task": "language_modeling"}')
    (out / "all_results.json").write_text('{"eval_loss": 3.1}')
    files = sorted(["model.safetensors", "run_info.json", "all_results.json", "run_outputs.json"])
    (out / "run_outputs.json").write_text(json.dumps({"written_by": "hf_tvd_loss", "files": files, "open": []}))
    if lock:
        (out / ".hf_tvd_loss.lock").write_text('{"pid": 1, "host": "elsewhere", "started": "2024-01-01 00:00:00"}')
    return out


def _too_short(tmp: Path) -> str:
    (tmp / "short.jsonl").write_text("\n".join(_rows([{"text": "only a few words here"}] * 3)) + "\n")
    return "short.jsonl"


_SHORT = ("--block_size", "200", "--do_eval", "false", "--do_predict", "false")


def _overwrite_then_too_short(tmp: Path) -> Any:
    _earlier_run_with_ledger(tmp)
    return _argv(
        "language_modeling",
        ["--output_dir", "out", *QUICK_LM_FILES, *TINY_TRAIN],
        ("--train_file", _too_short(tmp), *_SHORT, "--overwrite_output_dir", "true"),
    )


def _stale_lock_then_too_short(tmp: Path) -> Any:
    (tmp / "out").mkdir()
    (tmp / "out" / ".hf_tvd_loss.lock").write_text('{"pid": 1, "host": "elsewhere", "started": "2024-01-01"}')
    return _argv(
        "language_modeling",
        ["--output_dir", "out", *QUICK_LM_FILES, *TINY_TRAIN],
        ("--train_file", _too_short(tmp), *_SHORT),
    )


def _built_never_ran_then_too_short(tmp: Path) -> Any:
    (tmp / "out").mkdir()
    (tmp / "out" / "run_outputs.json").write_text(json.dumps({"files": ["run_outputs.json"], "open": []}))
    return _argv(
        "language_modeling",
        ["--output_dir", "out", *QUICK_LM_FILES, *TINY_TRAIN],
        ("--train_file", _too_short(tmp), *_SHORT),
    )


def _overwrite_then_drop_last(tmp: Path) -> Any:
    _earlier_run_with_ledger(tmp)
    return _argv("language_modeling", ["--output_dir", "out", *QUICK_LM, *TINY_TRAIN],
                 ("--overwrite_output_dir", "true", "--dataloader_drop_last", "true",
                  "--per_device_train_batch_size", "4096"))  # fmt: skip


def _resume_then_drop_last(tmp: Path) -> Any:
    _checkpoint(tmp / "out", 1)
    ledger = {"files": ["run_outputs.json"], "open": ["checkpoint-1"]}
    (tmp / "out" / "run_outputs.json").write_text(json.dumps(ledger))
    (tmp / "out" / ".hf_tvd_loss.lock").write_text('{"pid": 1, "host": "elsewhere", "started": "2024-01-01"}')
    return "language_modeling", ["--output_dir", "out", *QUICK_LM, "--max_steps", "4", "--save_strategy", "no",
                                 "--resume_from_checkpoint", "latest", "--dataloader_drop_last", "true",
                                 "--per_device_train_batch_size", "4096"]  # fmt: skip


def _locked_by_another(tmp: Path) -> Any:
    (tmp / "out").mkdir()
    fd = os.open(tmp / "out" / ".hf_tvd_loss.lock", os.O_RDWR | os.O_CREAT, 0o644)
    os.write(fd, b'{"pid": 1, "host": "elsewhere", "started": "2024-01-01"}')
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another open file description: the run's flock is refused
    _HELD.append(fd)
    return _lm()(tmp)


_HELD: list[int] = []


def _lock_is_a_folder(tmp: Path) -> Any:
    (tmp / "out" / ".hf_tvd_loss.lock").mkdir(parents=True)
    return _lm()(tmp)


def _overwrite_with_ledger_a_folder(tmp: Path) -> Any:
    out = _earlier_run_with_ledger(tmp)
    (out / "run_outputs.json").unlink()
    (out / "run_outputs.json").mkdir()
    return _lm("--overwrite_output_dir", "true")(tmp)


def _argparse_into_earlier_run(tmp: Path) -> Any:
    _earlier_run_with_ledger(tmp)
    return _lm("--max_steps", "2.5", "--overwrite_output_dir", "true")(tmp)


def _long_path(tmp: Path) -> Any:
    """An output_dir whose own path fits PATH_MAX (4096 bytes) but whose files' paths do not."""
    base = str(tmp.resolve())
    parts, length = [], len(base)
    while length < 4096 - 20 - 201:
        parts.append("d" * 200)
        length += 201
    parts.append("e" * (4096 - 20 - length - 1))
    rel = "/".join(parts)
    os.makedirs(rel)  # relative to tmp (the working directory): each step is below PATH_MAX
    return _argv("language_modeling", ["--output_dir", rel, *QUICK_LM, *TINY_TRAIN], ())


# ------------------------------------------------------------------------------ process-level cases
def _script(task_argv: list[str], tmp: Path, *, env: dict[str, str] | None = None, fsize: int | None = None,
            timeout: int = 240) -> tuple[int, str]:  # fmt: skip
    """Run a task script in a subprocess (cwd ``tmp``); returns its exit status and stderr."""

    def limit() -> None:
        if fsize is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    full_env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                "OMP_NUM_THREADS": "1", "HF_DATASETS_CACHE": str(tmp / "hf_datasets_cache"), **(env or {})}  # fmt: skip
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        if name not in (env or {}):
            full_env.pop(name, None)
    script = str(REPO / "scripts" / "train_language_model.py")
    try:
        proc = subprocess.run([sys.executable, script, *task_argv], cwd=tmp, env=full_env, capture_output=True,
                              text=True, timeout=timeout, preexec_fn=limit)  # fmt: skip
    except subprocess.TimeoutExpired:
        return -9, f"timed out after {timeout} s (hung)"
    return proc.returncode, proc.stderr


def _proc(*extra: str, env: dict[str, str] | None = None, fsize: int | None = None,
          setup: Callable[[Path], None] | None = None) -> Callable[[Path], Any]:  # fmt: skip
    def build(tmp: Path) -> Any:
        if setup is not None:
            setup(tmp)
        argv = _argv("language_modeling", ["--output_dir", "out", *QUICK_LM, *TINY_TRAIN], extra)[1]
        return lambda: _script(argv, tmp, env=env, fsize=fsize)

    return build


def _launcher_check(tmp: Path) -> Any:
    """The launcher-variable check alone, in this process, under the case's environment (set by :func:`verdict`):
    ``(2, 'error: ...')`` when it refuses, ``(0, '')`` when it lets the run go on."""
    from hf_tvd_loss.tasks.checks import check_launcher_environment

    def run() -> tuple[int, str]:
        try:
            check_launcher_environment()
        except ValueError as err:
            return 2, f"error: {err}"
        return 0, ""

    return run


def _vanished_before_training(tmp: Path) -> Any:
    """The output folder removed (by someone else) between the claim and the first save: run_task's report."""

    def call() -> tuple[int, str]:
        from unittest import mock

        from hf_tvd_loss.tasks import get_task, run

        real_build = run.build

        def build_then_vanish(prepared: Any) -> Any:
            built = real_build(prepared)
            shutil.rmtree(prepared.training_args.output_dir)
            return built

        return _run_task_in_process(get_task("language_modeling"), ["--output_dir", "out", *QUICK_LM, *TINY_TRAIN],
                                    mock.patch.object(run, "build", build_then_vanish))  # fmt: skip

    return call


def _run_task_in_process(task: Any, argv: list[str], patch: Any) -> tuple[int, str]:
    from hf_tvd_loss.tasks.run import run_task

    stderr = io.StringIO()
    try:
        with patch, contextlib.redirect_stderr(stderr):
            run_task(task, argv)
    except SystemExit as exit_info:
        return int(exit_info.code or 0), stderr.getvalue()
    except BaseException as err:  # noqa: BLE001  # a traceback in a script
        return 1, stderr.getvalue() + f"\nTraceback (most recent call last):\n{type(err).__name__}: {err}"
    return 0, stderr.getvalue()


ROUND4: list[Case] = [
    # item 3: a path is what the user wrote
    Case("out-s3-url", "path", _lm(out="s3://bucket/run"), ("--output_dir", "s3://bucket/run", "URL")),
    Case("out-gs-url", "path", _lm(out="gs://bucket/run"), ("--output_dir", "gs://bucket/run", "URL")),
    Case("out-hf-url", "path", _lm(out="hf://buckets/me/run"), ("--output_dir", "hf://", "URL")),
    Case("out-https-url", "path", _lm(out="https://example.org/run"), ("--output_dir", "https://", "URL")),
    Case("out-file-url", "path", _lm(out="file:///tmp/run"), ("--output_dir", "file:///tmp/run", "URL")),
    Case("train-file-s3-url", "path", _lm("--train_file", "s3://bucket/train.jsonl", "--do_eval", "false"),
         ("--train_file", "s3://bucket/train.jsonl", "URL")),
    Case("validation-file-https-url", "path",
         _lm_file("train.jsonl", "--validation_file", "https://example.org/valid.jsonl", "--do_eval", "true"),
         ("--validation_file", "https://example.org/valid.jsonl", "URL")),
    Case("resume-s3-url", "path", _lm("--resume_from_checkpoint", "s3://bucket/run/checkpoint-2"),
         ("--resume_from_checkpoint", "s3://bucket/run/checkpoint-2", "URL")),
    Case("model-hf-url", "path", _lm("--model_name_or_path", "hf://HuggingFaceTB/SmolLM2-135M"),
         ("--model_name_or_path", "hf://HuggingFaceTB/SmolLM2-135M")),
    Case("tokenizer-gs-url", "path", _lm("--tokenizer_name", "gs://bucket/tokenizer"),
         ("--tokenizer_name", "gs://bucket/tokenizer")),
    Case("yaml-out-env-var", "path", _yaml("output_dir: $HOME/run\n"), ("output_dir", "$HOME", "environment")),
    Case("yaml-train-file-env-var", "path", _yaml("train_file: ${DATA}/train.jsonl\n", "--do_eval", "false"),
         ("train_file", "${DATA}", "environment")),
    Case("cli-out-env-var-quoted", "path", _lm(out="$HOME/run"), ("--output_dir", "$HOME", "environment")),
    Case("yaml-train-file-trailing-space", "path",
         _yaml('train_file: "train.jsonl "\n', "--do_eval", "false", data="train.jsonl"),
         ("train_file", "whitespace")),
    Case("yaml-out-trailing-space", "path", _yaml('output_dir: "out "\n'), ("output_dir", "whitespace")),
    Case("cli-out-leading-space", "path", _lm(out=" out"), ("--output_dir", "whitespace")),
    Case("yaml-out-tilde-unknown-user", "path", _yaml("output_dir: ~no_such_user_x/run\n"),
         ("output_dir", "~no_such_user_x")),
    Case("yaml-train-file-tilde", "path", _yaml("train_file: ~/data/train.jsonl\n", "--do_eval", "false",
                                                "--do_predict", "false", data="home/data/train.jsonl"), (),
         env={"HOME": "<tmp>/home"}),
    Case("yaml-out-tilde", "path", _yaml("output_dir: ~/run\n"), (), out="home/run", env={"HOME": "<tmp>/home"}),
    Case("train-file-unicode-name", "path", _lm_file("trä in ☃.jsonl"), ()),
    # a file that exists as "train.jsonl ": its name is used as written, and so its extension ".jsonl " is no format
    Case("train-file-trailing-space-exists", "path", _lm_file("train.jsonl "), ("'.jsonl '", "whitespace")),
    # item 4: a refused run changes nothing
    Case("overwrite-then-build-refusal", "folder", _overwrite_then_too_short, ("block_size",)),
    Case("overwrite-then-drop-last-refusal", "folder", _overwrite_then_drop_last, ("dataloader_drop_last",)),
    Case("stale-lock-then-build-refusal", "folder", _stale_lock_then_too_short, ("block_size",)),
    Case("built-never-ran-then-build-refusal", "folder", _built_never_ran_then_too_short, ("block_size",)),
    Case("resume-then-build-refusal", "folder", _resume_then_drop_last, ("dataloader_drop_last",)),
    Case("locked-by-another-run", "folder", _locked_by_another, ("in use by another run",)),
    Case("argparse-refusal-into-earlier-run", "folder", _argparse_into_earlier_run, ("max_steps",)),
    Case("lock-is-a-folder", "folder", _lock_is_a_folder, (".hf_tvd_loss.lock",)),
    Case("overwrite-ledger-is-a-folder", "folder", _overwrite_with_ledger_a_folder, ("run_outputs.json",)),
    # item 6: operating-system failures are named
    Case("path-too-long-inside", "os", _long_path, ("--output_dir", "too long")),
    Case("fsize-limit-tokenizer", "os", _proc(fsize=4096), ("could not", "File too large", "out")),
    Case("fsize-limit-model", "os", _proc(fsize=200_000), ("could not", "File too large", "out", "kept")),
    Case("folder-vanished-before-training", "os", _vanished_before_training,
         ("could not", "out", "No such file or directory")),
    Case("world-size-without-launcher", "os", _proc(env={"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}),
         ("WORLD_SIZE", "launcher")),
    # the script's own order (the check before anything reads the variables) is judged by the subprocess case above;
    # these two judge the check in-process (a subprocess each cost ~7 s of the suite)
    Case("local-rank-without-launcher", "os", _launcher_check, ("LOCAL_RANK", "launcher"), env={"LOCAL_RANK": "1"}),
    Case("rank-without-world-size", "os", _launcher_check, ("RANK", "launcher"), env={"RANK": "1"}),
]  # fmt: skip

# Valid input: the run trains (into the folder asked for) is the good verdict.
VALID = {"yaml-train-file-tilde", "yaml-out-tilde", "train-file-unicode-name"}


# ------------------------------------------------------------------------------------------ judging
def _snapshot(tmp: Path) -> dict[str, Any]:
    """Every entry below ``tmp`` (links not followed): kind, size, mtime and the bytes of small files."""
    seen: dict[str, Any] = {}
    for root, dirs, files in os.walk(tmp):
        for name in dirs + files:
            path = os.path.join(root, name)
            rel = os.path.relpath(path, tmp)
            if rel.startswith("hf_datasets_cache"):
                continue
            st = os.lstat(path)
            data = None
            if os.path.isfile(path) and not os.path.islink(path) and st.st_size < 1 << 20:
                with open(path, "rb") as f:
                    data = f.read()
            seen[rel] = (st.st_mode, st.st_size if data is not None else 0, st.st_mtime_ns if data else 0, data)
    return seen


@contextlib.contextmanager
def _within(tmp: Path, env: dict[str, str]) -> Iterator[None]:
    old_cwd, old_env = os.getcwd(), {k: os.environ.get(k) for k in env}
    os.chdir(tmp)
    os.environ.update({k: v.replace("<tmp>", str(tmp)) for k, v in env.items()})
    try:
        yield
    finally:
        os.chdir(old_cwd)
        for k, v in old_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        while _HELD:
            os.close(_HELD.pop())


def _names_all(message: str, names: tuple[str, ...]) -> bool:
    return all(n.lower() in message.lower() for n in names)


def verdict(case: Case, tmp: Path) -> tuple[str, str]:
    """``(good | late | silent | folder changed, message)`` for ``case`` run in the empty folder ``tmp``."""
    with _within(tmp, case.env):
        built = case.build(tmp)
        before = _snapshot(tmp)
        if callable(built):
            status, err = built()
            lines = [line for line in err.strip().splitlines() if line.strip()]
            last = lines[-1] if lines else ""
            refused = status != 0
            clean = refused and last.startswith("error:") and "Traceback" not in err
            outcome = GOOD if clean and _names_all(last, case.names) else LATE if refused else SILENT
            message = last if refused else f"exit status 0: {last[:120]}"
            if case.group == "os" and refused and case.id.startswith(("world", "local", "rank")):
                changed = _snapshot(tmp) != before
                return (CHANGED if changed else outcome), message
            return outcome, message
        outcome, message = _run_phases(case, built)
        after = _snapshot(tmp)
        changed = [k for k in set(before) | set(after) if before.get(k) != after.get(k)]
        if case.id in VALID:
            trained = outcome == SILENT and os.path.isfile(os.path.join(tmp, case.out, "run_info.json"))
            return (GOOD if trained else LATE), message if not trained or outcome != SILENT else "trained as asked"
        if outcome != SILENT and changed:
            return CHANGED, f"{message} | changed: {sorted(changed)[:4]}"
        return outcome, message


def _run_phases(case: Case, built: tuple[str, list[str]]) -> tuple[str, str]:
    """prepare → build → train_and_evaluate, as ``run_task`` runs them; (good | late | silent, message)."""
    from hf_tvd_loss.tasks import get_task
    from hf_tvd_loss.tasks.run import build, prepare, train_and_evaluate

    task_name, argv = built
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            prepared = prepare(get_task(task_name), argv)
            outcome_stage = "build"
            done = build(prepared)
            outcome_stage = "train"
            metrics = train_and_evaluate(prepared, done)
    except SystemExit as exit_info:
        lines = stderr.getvalue().strip().splitlines()
        last = lines[-1] if lines else ""
        good = exit_info.code == 2 and _names_all(last, case.names)
        return (GOOD if good else LATE), last
    except ValueError as err:
        message = " ".join(str(err).split())
        one_line = "\n" not in str(err).strip()
        late = locals().get("outcome_stage") == "train"
        return (GOOD if _names_all(message, case.names) and one_line and not late else LATE), message
    except Exception as err:  # noqa: BLE001
        return LATE, f"{type(err).__name__}: {err}".splitlines()[0]
    return SILENT, f"finished: train_loss {metrics.get('train_loss')}"


def main(argv: list[str] | None = None) -> int:
    import logging

    logging.disable(logging.WARNING)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    wanted = argv if argv is not None else sys.argv[1:]
    totals = {GOOD: 0, LATE: 0, SILENT: 0, CHANGED: 0}
    for case in [c for c in ROUND4 if not wanted or any(w in c.id for w in wanted)]:
        with tempfile.TemporaryDirectory(prefix="hostile4-") as tmp:
            try:
                outcome, message = verdict(case, Path(tmp))
            except Exception as err:  # noqa: BLE001  # the case's own setup failed: count as late, say so
                outcome, message = LATE, f"(judge) {type(err).__name__}: {err}"
        totals[outcome] += 1
        print(f"{case.group:6s} {case.id:36s} {outcome:14s} {' '.join(message.split())[:170]}", flush=True)
    print(f"\n{sum(totals.values())} inputs: " + ", ".join(f"{k} {v}" for k, v in totals.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
