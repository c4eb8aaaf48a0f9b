"""The output folder of a script run: claimed by one run at a time, and a ledger of what the run wrote into it.

Two promises rest on this module:

* **One run per folder.** :meth:`OutputFolder.claim` takes an exclusive lock on ``output_dir/.hf_tvd_loss.lock``
  (``fcntl.flock``: released by the operating system when the process ends, however it ends) and only then looks
  at what the folder holds. Two runs started at once into the same new folder both pass the option checks; the
  second to claim it is refused, naming the first (its pid, host and start time).
* **Only what a recorded earlier run wrote may go.** Each run keeps ``run_outputs.json``, the ledger of every
  file it wrote, updated after each write step (tokenizer, checkpoints, the end of the run). Before a write step the
  names it will write are entered as *open* (a checkpoint folder about to be saved, the model files, ``runs/``),
  so a run killed in the middle of a save still owns what it left half-written. ``--overwrite_output_dir true``
  removes exactly the ledger's files; a file no ledger lists, where this run would write (a ``config.json``,
  ``README.md``, ``tokenizer/NOTES.txt`` of the user's own), is refused before any work, with its names. Other
  files (``notes.txt``) are left where they are.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import time
from collections.abc import Iterable, Iterator
from typing import Any

from ..checkpoints import write_json_atomically

__all__ = [
    "LEDGER",
    "LOCK",
    "OutputFolder",
    "check_output_dir",
    "ledger_callback",
    "overwrite_problem",
    "read_ledger",
]

LEDGER = "run_outputs.json"
LOCK = ".hf_tvd_loss.lock"

# Names the scripts write into output_dir: the model, tokenizer, metrics, model card, predictions and folders.
RUN_OUTPUT_FILES = (
    "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json",
    "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
    "vocab.json", "merges.txt", "spiece.model", "sentencepiece.bpe.model", "source.spm", "target.spm",
    "added_tokens.json", "chat_template.jinja", "training_args.bin", "trainer_state.json", "all_results.json",
    "train_results.json", "eval_results.json", "test_results.json", "run_info.json", "README.md",
    "generated_predictions.jsonl", "predictions.jsonl", "adapter_config.json", "adapter_model.safetensors", LEDGER,
)  # fmt: skip
RUN_OUTPUT_FOLDERS = ("tokenizer", "runs")
_RUN_PATTERNS = (re.compile(r"checkpoint-\d+"), re.compile(r"model-\d+-of-\d+\.safetensors"),
                 re.compile(r"pytorch_model-\d+-of-\d+\.bin"), re.compile(r".*\.tmp-\d+"))  # fmt: skip


def is_run_name(name: str) -> bool:
    """Whether a run of these scripts may write the top-level entry ``name`` of its output folder."""
    return (name in RUN_OUTPUT_FILES or name in RUN_OUTPUT_FOLDERS or name == LOCK
            or any(p.fullmatch(name) for p in _RUN_PATTERNS))  # fmt: skip


def _files(path: str) -> Iterator[str]:
    """Every file below ``path`` (relative, '/'-separated), links as files; not the lock nor write probes."""
    for root, dirs, names in os.walk(path):
        rel = os.path.relpath(root, path)
        dirs[:] = [d for d in dirs if not d.startswith((".hf_tvd_write_probe-", ASIDE_PREFIX))]
        for name in names:
            entry = name if rel == "." else f"{rel}/{name}".replace(os.sep, "/")
            if entry != LOCK:
                yield entry
        for d in dirs:  # a link to a folder is not followed, and counts as one entry
            if os.path.islink(os.path.join(root, d)):
                yield d if rel == "." else f"{rel}/{d}".replace(os.sep, "/")


def read_ledger(path: str) -> dict[str, Any] | None:
    """The ledger of ``path`` (``{"files": [...], "open": [...]}``), or None when it has none or it is unreadable."""
    try:
        with open(os.path.join(path, LEDGER), encoding="utf-8") as f:
            ledger = json.load(f)
    except (OSError, ValueError):
        return None
    if not (
        isinstance(ledger, dict) and isinstance(ledger.get("files"), list) and isinstance(ledger.get("open"), list)
    ):
        return None
    return ledger


def _recorded(ledger: dict[str, Any] | None) -> tuple[set[str], set[str]]:
    if ledger is None:
        return set(), set()
    return {str(f) for f in ledger["files"]}, {str(f) for f in ledger["open"]}


def _is_recorded(entry: str, files: set[str], open_names: set[str]) -> bool:
    return entry in files or entry.split("/", 1)[0] in open_names


def _unrecorded_in_the_way(path: str, ledger: dict[str, Any] | None) -> list[str]:
    """Files of ``path`` that no ledger lists, where a run would write (a run name, or a folder holding recorded files)."""
    files, open_names = _recorded(ledger)
    recorded_tops = {f.split("/", 1)[0] for f in files if "/" in f} | open_names
    in_the_way = []
    for entry in _files(path):
        if _is_recorded(entry, files, open_names) or (entry == LEDGER and ledger is not None):
            continue
        top = entry.split("/", 1)[0]
        if is_run_name(top) or top in recorded_tops:
            in_the_way.append(entry)
    return sorted(in_the_way)


def overwrite_problem(path: str) -> str | None:
    """Why ``--overwrite_output_dir`` may not clear ``path``, or None: files no recorded run wrote would be replaced
    or removed (names shown)."""
    if not os.path.isdir(path):
        return None
    ledger = read_ledger(path)
    blocking = _unrecorded_in_the_way(path, ledger)
    if not blocking:
        return None
    shown = ", ".join(blocking[:8]) + (f", and {len(blocking) - 8} more" if len(blocking) > 8 else "")
    why = ("no run of these scripts recorded writing them" if ledger is not None
           else f"the folder holds no recorded run of these scripts (no readable {LEDGER})")  # fmt: skip
    return (
        f"--overwrite_output_dir would replace or remove files in {path} that this project did not write: {shown} "
        f"({why}); move them away yourself, or choose another --output_dir"
    )


def wrote_nothing(path: str) -> bool:
    """Whether the run recorded in ``path``'s ledger wrote nothing but the ledger (e.g. one built and never run):
    such a folder counts as empty."""
    ledger = read_ledger(path)
    if ledger is None:
        return False
    files, open_names = _recorded(ledger)
    return files <= {LEDGER} and not any(os.path.lexists(os.path.join(path, n)) for n in open_names - {LEDGER})


def _probe_writable(folder: str) -> bool:
    """Whether a folder can really be written (``os.access`` says yes to root on read-only file systems)."""
    return _probe_error(folder) is None


def _probe_error(folder: str) -> str | None:
    """Why a probe folder cannot be made in ``folder`` (the operating system's reason), or None."""
    import tempfile

    try:
        probe = tempfile.mkdtemp(prefix=".hf_tvd_write_probe-", dir=folder)
    except OSError as err:
        return err.strerror or str(err)
    os.rmdir(probe)
    return None


def _path_problem(path: str) -> str | None:
    """What on disk stops ``path`` (absolute) from being a folder this run creates or writes, or None: a link
    that leads nowhere (dangling, or a loop), a name too long for the file system, a file in its place or on the
    way to it, a nearest existing folder that cannot be written. Reads only (a probe folder is made and removed)."""
    import errno

    if os.path.islink(path) and not os.path.exists(path):
        try:
            os.stat(path)
        except OSError as err:
            if err.errno == errno.ELOOP:
                return f"is a symbolic link that loops ({path} -> {os.readlink(path)} -> ...)"
        return f"is a symbolic link to {os.readlink(path)}, which does not exist (a dangling link)"
    if os.path.exists(path):
        if not os.path.isdir(path):
            what = f"a symbolic link to {os.path.realpath(path)}, " if os.path.islink(path) else ""
            return f"exists and is {what}not a directory"
        if not os.access(path, os.W_OK | os.X_OK):
            return "is not writable"
        reason = _probe_error(path)
        if reason is not None:
            return f"cannot be written (making a folder in it failed: {reason})"
        longest = _longest_path(path)
        if len(os.fsencode(path)) + len(_LONGEST_RUN_NAME) + 1 > longest:
            return (
                f"is too long for the files a run writes in it ({len(os.fsencode(path))} bytes, and e.g. "
                f"{_LONGEST_RUN_NAME} needs {len(_LONGEST_RUN_NAME) + 1} more; the system allows {longest})"
            )
        lock = os.path.join(path, LOCK)
        if os.path.lexists(lock) and (os.path.islink(lock) or not os.path.isfile(lock)):
            return f"holds {LOCK}, the name of this project's lock file, but it is not a regular file: move it away"
        return None
    # The path does not exist: walk up to the nearest entry that does (a link counts, followed or not).
    missing: list[str] = []
    parent = path
    while not os.path.lexists(parent):
        missing.append(os.path.basename(parent))
        parent = os.path.dirname(parent)
    if os.path.islink(parent) and not os.path.exists(parent):
        return f"cannot be created: {parent} is a symbolic link to {os.readlink(parent)}, which does not exist"
    if not os.path.isdir(parent):
        return f"cannot be created: {parent} is a file, not a directory"
    try:
        longest = os.pathconf(parent, "PC_NAME_MAX")
    except (OSError, ValueError):
        longest = 255
    too_long = [name for name in missing if len(os.fsencode(name)) > longest]
    if too_long:
        return (
            f"cannot be created: the name {too_long[0][:40]}... is too long ({len(os.fsencode(too_long[0]))} bytes; "
            f"the file system allows {longest})"
        )
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"cannot be created: {parent} is not writable"
    reason = _probe_error(parent)
    if reason is not None:
        return f"cannot be created: making a folder in {parent} failed: {reason}"
    longest = _longest_path(parent)
    if len(os.fsencode(path)) + len(_LONGEST_RUN_NAME) + 1 > longest:
        return (
            f"is too long for the files a run writes in it ({len(os.fsencode(path))} bytes, and e.g. "
            f"{_LONGEST_RUN_NAME} needs {len(_LONGEST_RUN_NAME) + 1} more; the system allows {longest})"
        )
    return None


# A long path a run writes below output_dir (a checkpoint's weights at step 10^7, a temporary file beside them).
_LONGEST_RUN_NAME = "checkpoint-10000000/model.safetensors.index.json.tmp-4194304"


def _longest_path(folder: str) -> int:
    try:
        return int(os.pathconf(folder, "PC_PATH_MAX"))
    except (OSError, ValueError):
        return 4096


def check_output_dir(path: str, *, overwrite: bool = False, resume: bool = False) -> None:
    """Refuse an output_dir that cannot be created or written, or that holds an earlier run, without writing.

    The folder's state on disk comes first (:func:`_path_problem`: a dangling link or a loop in its place, a file in
    its place or on the way, a name too long, no write permission). A folder with anything in it is then refused
    unless the run resumes (``resume``: it continues the run that is there from one of its checkpoints) or
    ``overwrite`` is set (the earlier run's recorded outputs are replaced). A lock file left by an earlier run that
    wrote nothing else does not count.
    """
    if not path:
        raise ValueError("output_dir must be set")
    path = os.path.abspath(path)
    problem = _path_problem(path)
    if problem is not None:
        raise ValueError(f"--output_dir {path} {problem}")
    if not os.path.exists(path):
        return
    # (another process's write probe may be there for an instant)
    entries = sorted(e for e in os.listdir(path) if not e.startswith(".hf_tvd_write_probe-") and e != LOCK)
    if entries == [LEDGER] and wrote_nothing(path):  # a run that was built and never ran
        entries = []
    if entries and not (resume or overwrite):
        checkpoints = [e for e in entries if e.startswith("checkpoint-")]
        others = [e for e in entries if not e.startswith("checkpoint-")]
        shown = others[:5] + checkpoints[:3]
        more = len(entries) - len(shown)
        raise ValueError(
            f"output_dir {path} already holds {len(entries)} {'entry' if len(entries) == 1 else 'entries'} "
            f"({', '.join(shown)}"
            f"{f', and {more} more' if more else ''}), e.g. an earlier run: pass --resume_from_checkpoint "
            "latest to continue it, --overwrite_output_dir true to replace its outputs, or another --output_dir"
        )


# Folders this process holds: claiming one again (a notebook cell run twice) hands the lock to the new claim.
_CLAIMED: dict[str, OutputFolder] = {}


def _holder(lock_path: str) -> str:
    try:
        with open(lock_path, encoding="utf-8") as f:
            info = json.load(f)
        return f"pid {info['pid']} on {info['host']}, started {info['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "holder unknown"


class OutputFolder:
    """A claimed output folder (see the module docstring). ``claim`` it, :meth:`expect` names before writing them,
    :meth:`update` after a write step, :meth:`finish` at the end; :meth:`discard` removes what this run wrote."""

    def __init__(self, path: str, lock_fd: int, ledger: dict[str, Any], created: bool) -> None:
        self.path, self._lock_fd, self.created = path, lock_fd, created
        # What a refused run puts back: the lock file's and ledger's bytes and times before the claim, and the
        # earlier run's files set aside by --overwrite_output_dir (moved into a hidden folder, and back).
        self._before: tuple[Any, Any] = (None, None)
        self._aside: tuple[str, list[str]] | None = None
        self._files, self._open = _recorded(ledger)
        self._inherited = (set(self._files), set(self._open))  # a resumed run's: never discarded
        self._foreign = {e for e in _files(path) if not _is_recorded(e, self._files, self._open)}
        self._foreign.discard(LEDGER)

    @classmethod
    def claim(cls, path: str, *, overwrite: bool = False, resume: bool = False) -> OutputFolder:
        """Create (if needed) and lock ``path``; then refuse a folder another run holds, or one that holds an
        earlier run (unless ``resume`` continues it or ``overwrite`` replaces it: then exactly the earlier run's
        recorded files are removed first)."""
        import fcntl

        path = os.path.abspath(path)
        earlier = _CLAIMED.pop(os.path.realpath(path), None)
        if earlier is not None:  # never built (it set files aside still): the earlier run's files go back first
            if earlier._aside is not None:
                _put_aside_back(earlier.path, *earlier._aside)
                earlier._aside = None
            earlier.release()
        created = not os.path.exists(path)
        lock_path = os.path.join(path, LOCK)
        lock_before = _saved(lock_path)
        fd = -1
        try:
            os.makedirs(path, exist_ok=True)
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ValueError(
                    f"output_dir {path} is in use by another run ({_holder(lock_path)}): wait for it to finish, or "
                    "choose another --output_dir"
                ) from None
            holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(holder).encode(), 0)
            # Now no other run writes here: look again (the checks in prepare() ran before the lock).
            check_output_dir(path, overwrite=overwrite, resume=resume)
            ledger = read_ledger(path)
            ledger_before = _saved(os.path.join(path, LEDGER))
            folder = cls(path, fd, ledger or {"files": [], "open": []}, created)
            folder._before = (lock_before, ledger_before)
        except BaseException:
            if fd >= 0:
                os.close(fd)
            if fd >= 0 or created:  # a lock file or folder this claim made, or a holder it wrote: as they were
                _put_back(lock_path, lock_before)
                if created:
                    with contextlib.suppress(OSError):
                        os.rmdir(path)
            raise
        try:
            if overwrite:
                problem = overwrite_problem(path)
                if problem is not None:
                    raise ValueError(problem)
                # The earlier run's files are set aside, not removed, until the run is built: a run refused while
                # it is built (texts too short for one block, ...) puts them back (discard).
                aside = _set_aside(path, *_recorded(ledger))
                folder._aside = aside if aside[1] else None
                folder._files, folder._open = set(), set()
                folder._inherited = (set(), set())
            folder.expect([LEDGER])
            _CLAIMED[os.path.realpath(path)] = folder
            return folder
        except BaseException:
            folder.discard()
            raise

    # --- the ledger
    def expect(self, names: Iterable[str]) -> None:
        """Enter top-level ``names`` as open before writing them (those that hold no file of someone else)."""
        new = {n for n in names if n not in self._open and not any(f.split("/", 1)[0] == n for f in self._foreign)}
        if new:
            self._open |= new
            self._write()

    def expect_run_outputs(self) -> None:
        """Open every name a run writes at its end that is not already in the folder (model, metrics, card, runs/)."""
        self.expect(
            n for n in (*RUN_OUTPUT_FILES, *RUN_OUTPUT_FOLDERS) if not os.path.exists(os.path.join(self.path, n))
        )

    def update(self, close: Iterable[str] = ()) -> None:
        """Record every file now in the folder that was not someone else's; close the open names in ``close``."""
        present = set(_files(self.path))
        self._files = {f for f in self._files if f in present}  # rotated checkpoints are gone
        self._files |= {e for e in present if e not in self._foreign and e != LEDGER} | {LEDGER}
        self._open -= set(close)
        self._write()

    def finish(self) -> None:
        """The end of the run: every file recorded, nothing open (a file appearing later is not this run's)."""
        self.drop_replaced()
        self.update(close=set(self._open))

    def _write(self) -> None:
        payload = {
            "written_by": "hf_tvd_loss",
            "note": "files a run of the hf_tvd_loss scripts wrote here; --overwrite_output_dir removes these only",
            "files": sorted(self._files | {LEDGER}),
            "open": sorted(self._open),
        }
        write_json_atomically(os.path.join(self.path, LEDGER), payload, indent=1)

    def drop_replaced(self) -> None:
        """The run is built: the earlier run's files that ``--overwrite_output_dir`` set aside are removed now."""
        import shutil

        if self._aside is not None:
            shutil.rmtree(self._aside[0])
            self._aside = None

    def discard(self) -> None:
        """A refused run: remove what it wrote and put the folder back as it was before the claim (the earlier run's
        files, ledger and lock file, bytes and times), or remove it if this run created it."""
        files, open_names = self._files - self._inherited[0], self._open - self._inherited[1]
        files.add(LEDGER)
        _remove(self.path, files, open_names)
        if self._aside is not None:
            _put_aside_back(self.path, *self._aside)
            self._aside = None
        lock_before, ledger_before = self._before
        _put_back(os.path.join(self.path, LEDGER), ledger_before)
        self.release()
        _put_back(os.path.join(self.path, LOCK), lock_before)
        if self.created:
            with contextlib.suppress(OSError):
                os.rmdir(self.path)

    def release(self) -> None:
        """Give the folder up (the lock; the ledger stays)."""
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1
        if _CLAIMED.get(os.path.realpath(self.path)) is self:
            del _CLAIMED[os.path.realpath(self.path)]

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # at interpreter exit the module's globals may be gone already
            self.release()


ASIDE_PREFIX = ".hf_tvd_replaced-"


def _saved(path: str) -> tuple[bytes, int, int] | None:
    """A small regular file's bytes and times (the lock file, the ledger), to put back; None when there is none."""
    if os.path.islink(path) or not os.path.isfile(path):
        return None
    with open(path, "rb") as f:
        data = f.read()
    st = os.stat(path)
    return data, st.st_atime_ns, st.st_mtime_ns


def _put_back(path: str, saved: tuple[bytes, int, int] | None) -> None:
    """Write ``saved`` back to ``path`` with its times, or remove ``path`` when there was no file."""
    if saved is None:
        if os.path.islink(path) or os.path.isfile(path):
            os.remove(path)
        return
    with open(path, "wb") as f:
        f.write(saved[0])
    os.utime(path, ns=(saved[1], saved[2]))


def _set_aside(path: str, files: set[str], open_names: set[str]) -> tuple[str, list[str]]:
    """Move the recorded ``files`` and open names of ``path`` into a new hidden folder inside it (renames: the
    bytes and times are kept); returns the folder and the entries moved."""
    import tempfile

    entries = [
        e for e in sorted(files | open_names) if e != LEDGER and os.path.lexists(os.path.join(path, *e.split("/")))
    ]
    if not entries:
        return "", []
    aside = tempfile.mkdtemp(prefix=ASIDE_PREFIX, dir=path)
    moved: list[str] = []
    for entry in entries:
        full = os.path.join(path, *entry.split("/"))
        if any(entry.startswith(m + "/") for m in moved):
            continue
        target = os.path.join(aside, *entry.split("/"))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        os.rename(full, target)
        moved.append(entry)
    _remove_empty_folders(path, {os.path.dirname(os.path.join(path, *e.split("/"))) for e in moved})
    return aside, moved


def _put_aside_back(path: str, aside: str, moved: list[str]) -> None:
    import shutil

    for entry in moved:
        target = os.path.join(path, *entry.split("/"))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        os.rename(os.path.join(aside, *entry.split("/")), target)
    shutil.rmtree(aside)


def _remove_empty_folders(path: str, folders: set[str]) -> None:
    for folder in sorted(folders, key=len, reverse=True):  # deepest first
        while folder != path and os.path.isdir(folder) and not os.listdir(folder):
            os.rmdir(folder)
            folder = os.path.dirname(folder)


def _remove(path: str, files: set[str], open_names: set[str]) -> None:
    """Remove the recorded ``files`` and everything under the open names, then the folders this left empty."""
    import shutil

    folders = set()
    for entry in files:
        full = os.path.join(path, *entry.split("/"))
        if os.path.islink(full) or os.path.isfile(full):
            os.remove(full)
            folders.add(os.path.dirname(full))
    for name in open_names:
        full = os.path.join(path, name)
        if os.path.islink(full) or os.path.isfile(full):
            os.remove(full)
        elif os.path.isdir(full):
            shutil.rmtree(full)
    for folder in sorted(folders, key=len, reverse=True):  # deepest first
        while folder != path and os.path.isdir(folder) and not os.listdir(folder):
            os.rmdir(folder)
            folder = os.path.dirname(folder)


def ledger_callback(folder: OutputFolder) -> Any:
    """A ``TrainerCallback`` keeping ``folder``'s ledger through training: each checkpoint folder is entered as open
    before it is saved and recorded after."""
    from transformers import TrainerCallback
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    class LedgerCallback(TrainerCallback):
        def _expect(self, state: Any, control: Any) -> None:
            if control.should_save and state.is_world_process_zero:
                folder.expect([f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"])

        def on_step_end(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
            self._expect(state, control)

        def on_epoch_end(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
            self._expect(state, control)

        def on_save(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
            if state.is_world_process_zero:
                folder.update(close=[f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"])

    return LedgerCallback()
