"""Checkpoint safety for any ``transformers.Trainer``: complete checkpoints only, and only this run's deleted.

:class:`CheckpointSafetyMixin` (``class T(CheckpointSafetyMixin, Trainer)``) marks each checkpoint complete once
everything in it is on disk (:data:`CHECKPOINT_COMPLETE_MARKER`, written atomically), rotates old checkpoints only
after that and only this run's, and resumes only from complete ones (``resume_from_checkpoint=True`` or
``"latest"`` finds the last complete one). The functions find, check (:func:`checkpoint_problem`: completion,
optimizer and scheduler state, truncated weight files) and resolve checkpoints; :func:`write_json_atomically`
is the one atomic JSON write of the package.
"""

from __future__ import annotations

import json
import os
import re
from typing import TYPE_CHECKING, Any

from torch import nn
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .args import LOSS_TYPE_FIELDS, applied_loss_fields

if TYPE_CHECKING:
    from .args import TVDArguments

__all__ = [
    "CHECKPOINT_COMPLETE_MARKER",
    "CheckpointSafetyMixin",
    "check_resume_loss_settings",
    "checkpoint_folders",
    "checkpoint_is_complete",
    "checkpoint_problem",
    "last_complete_checkpoint",
    "last_usable_checkpoint",
    "read_checkpoint_marker",
    "resolve_resume_checkpoint",
    "write_json_atomically",
]

# Written (atomically) into a checkpoint folder once everything else in it is on disk.
CHECKPOINT_COMPLETE_MARKER = "tvd_checkpoint_complete.json"

# ---------------------------------------------------------------------------------------------- checkpoints
_CHECKPOINT_PATTERN = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")
# Words that ask ``resume_from_checkpoint`` for the last complete checkpoint of output_dir.
RESUME_LATEST = ("latest", "last", "true")


def checkpoint_is_complete(path: str) -> bool:
    """Whether ``path`` is a completely written checkpoint folder.

    Folders written by :class:`CheckpointSafetyMixin` carry a marker; a stock Trainer's checkpoint has none, but
    its ``trainer_state.json`` is written after the model, optimizer and RNG states, so a parseable one means the
    folder is complete.
    """
    if os.path.isfile(os.path.join(path, CHECKPOINT_COMPLETE_MARKER)):
        return True
    try:
        with open(os.path.join(path, "trainer_state.json")) as f:
            json.load(f)
    except (OSError, ValueError):
        return False
    return True


def checkpoint_folders(output_dir: str) -> list[str]:
    """The ``checkpoint-N`` folders of ``output_dir``, by step (oldest first)."""
    if not os.path.isdir(output_dir):
        return []
    steps = sorted(
        (int(m.group(1)), name)
        for name in os.listdir(output_dir)
        if (m := _CHECKPOINT_PATTERN.match(name)) is not None
    )
    return [os.path.join(output_dir, name) for _, name in steps if os.path.isdir(os.path.join(output_dir, name))]


def _step(path: str) -> int:
    m = _CHECKPOINT_PATTERN.match(os.path.basename(os.path.normpath(path)))
    return int(m.group(1)) if m else -1


def last_complete_checkpoint(output_dir: str) -> str | None:
    """The highest-step ``checkpoint-N`` folder in ``output_dir`` that was completely written, or None.

    Unlike ``transformers.trainer_utils.get_last_checkpoint``, a folder left half-written by a killed process
    is skipped.
    """
    for path in reversed(checkpoint_folders(output_dir)):
        if checkpoint_is_complete(path):
            return path
    return None


def _safetensors_problem(path: str) -> str | None:
    """Why a ``.safetensors`` file is unreadable (header length, header JSON, data size), or None."""
    import struct

    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return f"{os.path.basename(path)} is {size} bytes, shorter than a safetensors header"
        (length,) = struct.unpack("<Q", head)
        if length > size - 8:
            return f"{os.path.basename(path)} is truncated ({size} bytes; its header alone needs {length + 8})"
        try:
            header = json.loads(f.read(length))
        except ValueError:
            return f"{os.path.basename(path)} has an unreadable header"
    ends = [int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__" and isinstance(t, dict)]
    expected = 8 + length + max(ends, default=0)
    if size < expected:
        return f"{os.path.basename(path)} is truncated ({size} bytes of {expected})"
    return None


def checkpoint_problem(path: str) -> str | None:
    """What makes checkpoint folder ``path`` unusable for resuming, or None.

    Checks completion (marker or readable ``trainer_state.json``), that the optimizer and scheduler states are
    there (a checkpoint of ``--save_only_model``, or one whose ``optimizer.pt`` was deleted, would resume with a
    fresh optimizer without a word), every ``*.safetensors`` file's header against its size, and that every
    pickled torch file (``*.pt``, ``*.pth``, ``*.bin``) is a whole zip archive. This reads headers only.
    """
    import zipfile

    if not os.path.isdir(path):
        return "no such folder"
    if not checkpoint_is_complete(path):
        return f"not completely written (no {CHECKPOINT_COMPLETE_MARKER} and no readable trainer_state.json)"
    names = set(os.listdir(path))
    try:  # Trainer reads it only once the data and model work is done
        with open(os.path.join(path, "trainer_state.json"), encoding="utf-8") as f:
            json.load(f)
    except FileNotFoundError:
        return "trainer_state.json is missing, so the step, the logs and the best checkpoint cannot be restored"
    except (OSError, ValueError) as exc:
        return f"trainer_state.json is truncated or not JSON ({type(exc).__name__}: {exc})"
    if not (
        names & {"optimizer.pt", "optimizer.bin"} or any(n.startswith(("optimizer_", "global_step")) for n in names)
    ):
        return ("it holds no optimizer state (optimizer.pt is missing: deleted, or the checkpoint was saved with "
                "--save_only_model), so resuming would restart the optimizer, the schedule and the random state")  # fmt: skip
    if "optimizer.pt" in names and "scheduler.pt" not in names:
        return "scheduler.pt is missing, so resuming would restart the learning-rate schedule"
    for name in sorted(names):
        file = os.path.join(path, name)
        if not os.path.isfile(file):
            continue
        if name.endswith(".safetensors"):
            problem = _safetensors_problem(file)
            if problem:
                return problem
        elif name.endswith((".pt", ".pth", ".bin")) and os.path.getsize(file) > 0 and not zipfile.is_zipfile(file):
            with open(file, "rb") as f:
                legacy = f.read(2) == b"\x80\x02"  # a pre-zip torch.save file: cannot be checked cheaply
            if not legacy:
                return f"{name} is truncated or not a torch file (no zip end record)"
    return None


def last_usable_checkpoint(output_dir: str, *, before: str | None = None) -> str | None:
    """The newest checkpoint (of lower step than ``before``) that passes :func:`checkpoint_problem`, or None."""
    limit = _step(before) if before is not None else None
    for path in reversed(checkpoint_folders(output_dir)):
        if (limit is None or _step(path) < limit) and checkpoint_problem(path) is None:
            return path
    return None


def resolve_resume_checkpoint(value: str | bool | None, output_dir: str) -> str | None:
    """The checkpoint folder a ``resume_from_checkpoint`` value means, checked; ``ValueError`` names the problem.

    ``True`` or ``"latest"`` / ``"last"`` / ``"true"`` (any case): the newest complete checkpoint of
    ``output_dir``; a path: that folder. Either way the folder must be complete and its files whole
    (:func:`checkpoint_problem`); when it is not, the error names it and the newest usable one before it.
    ``None``, ``False``, ``""`` and ``"false"``/``"none"``: no resume (None).
    """
    if value is None or value is False:
        return None
    if isinstance(value, str) and value.strip().lower() in ("", "false", "none", "no"):
        return None
    if value is True or (isinstance(value, str) and value.strip().lower() in RESUME_LATEST):
        if isinstance(value, str) and os.path.isdir(value):
            raise ValueError(
                f"resume_from_checkpoint {value!r} is ambiguous: it asks for the latest checkpoint of {output_dir}, "
                f"but a folder named {value!r} exists here; give ./{value} for that folder"
            )
        path = last_complete_checkpoint(output_dir)
        if path is None:
            raise ValueError(
                f"resume_from_checkpoint={value!r} asks for the latest checkpoint, but output_dir {output_dir} holds "
                f"no completely written {PREFIX_CHECKPOINT_DIR}-N folder"
            )
    else:
        path = str(value)
        if not os.path.isdir(path):
            raise ValueError(f"resume_from_checkpoint {path}: no such checkpoint folder")
    problem = checkpoint_problem(path)
    if problem is not None:
        previous = last_usable_checkpoint(os.path.dirname(os.path.abspath(path)), before=path)
        offer = f"resume from {previous} instead" if previous else "no earlier usable checkpoint in that folder"
        raise ValueError(f"checkpoint {path} cannot be resumed from: {problem}; {offer}")
    return path


def write_json_atomically(path: str, payload: Any, *, indent: int | None = None) -> None:
    """Write ``payload`` as JSON to ``path`` so that a reader sees the old file or the whole new one, never a part:
    a temporary file beside it, flushed to disk, then renamed over it."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=indent)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_checkpoint_marker(path: str) -> dict[str, Any]:
    """The completion marker of checkpoint folder ``path`` (``{}`` if it has none or it is unreadable)."""
    try:
        with open(os.path.join(path, CHECKPOINT_COMPLETE_MARKER)) as f:
            content = json.load(f)
    except (OSError, ValueError):
        return {}
    return content if isinstance(content, dict) else {}


class CheckpointSafetyMixin:
    """Mixin for ``transformers.Trainer`` subclasses: complete checkpoints only, and only this run's are deleted.

    * Each checkpoint gets a completion marker, written atomically after every process has written its part. A
      checkpoint folder that already exists (an overwritten run) loses its old marker and ``trainer_state.json``
      before anything is written into it, so it never looks complete while half-rewritten.
    * ``save_total_limit`` rotation runs only after the new checkpoint is marked complete, so a kill at any moment
      leaves at least one complete checkpoint to resume from; and it deletes only checkpoints of this run (the
      marker carries a run id that a resumed run inherits): another run's checkpoints in the same ``output_dir``
      are never deleted (the stock rotation deletes the oldest ``checkpoint-N`` folders whoever wrote them).
    * ``train(resume_from_checkpoint=True)`` (or ``"latest"``) resumes from the last *complete* checkpoint in
      ``output_dir``; a checkpoint that is incomplete or has a truncated weights file is refused, naming the newest
      usable one before it (:func:`resolve_resume_checkpoint`).

    ``checkpoint_metadata()`` may return a dict stored in the marker (the TVD trainers store their loss settings).
    """

    _tvd_run_id: str | None = None
    _tvd_save_limit: int | None = None

    def checkpoint_metadata(self) -> dict[str, Any]:
        return {}

    def check_resume_metadata(self, checkpoint: str, metadata: dict[str, Any]) -> None:
        """Called with the marker of the checkpoint being resumed, before training; raise to refuse it."""

    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any):  # type: ignore[no-untyped-def]
        import uuid

        training_args = self.args  # type: ignore[attr-defined]
        resume = resolve_resume_checkpoint(resume_from_checkpoint, training_args.output_dir)
        if resume:
            self.check_resume_metadata(resume, read_checkpoint_marker(resume))
        # A resumed run continues the run that wrote the checkpoint (its older checkpoints are this run's too).
        self._tvd_run_id = (read_checkpoint_marker(resume).get("run_id") if resume else None) or uuid.uuid4().hex
        # Rotation is done here (only this run's checkpoints); the stock one, and the stock deletion at the end of
        # training with save_total_limit=1, would delete any checkpoint-N folder of output_dir.
        self._tvd_save_limit = training_args.save_total_limit
        training_args.save_total_limit = None
        try:
            result = super().train(resume, *args, **kwargs)  # type: ignore[misc]
        finally:
            training_args.save_total_limit = self._tvd_save_limit
        self._tvd_keep_only_best_at_end()
        return result

    def _tvd_own_checkpoints(self, run_dir: str) -> list[str]:
        return [p for p in checkpoint_folders(run_dir) if read_checkpoint_marker(p).get("run_id") == self._tvd_run_id]

    def _tvd_keep_only_best_at_end(self) -> None:
        """The stock end-of-training rule for ``save_total_limit=1`` with a best model, on this run's checkpoints."""
        args, state = self.args, self.state  # type: ignore[attr-defined]
        if not (args.should_save and self._tvd_save_limit == 1 and state.best_model_checkpoint):
            return
        import shutil

        best = os.path.abspath(state.best_model_checkpoint)
        for path in self._tvd_own_checkpoints(self._get_output_dir(trial=None)):  # type: ignore[attr-defined]
            if os.path.abspath(path) != best:
                shutil.rmtree(path, ignore_errors=True)

    def _tvd_rotate(self, run_dir: str) -> None:
        import shutil

        limit, state = self._tvd_save_limit, self.state  # type: ignore[attr-defined]
        if limit is None or limit <= 0:
            return
        own = self._tvd_own_checkpoints(run_dir)
        protected = {os.path.abspath(own[-1])} if own else set()
        if state.best_model_checkpoint is not None:
            protected.add(os.path.abspath(state.best_model_checkpoint))
        keep = max(limit, len(protected))
        remaining = len(own)
        for path in own:
            if remaining <= keep:
                break
            if os.path.abspath(path) not in protected:
                shutil.rmtree(path, ignore_errors=True)
                remaining -= 1

    def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
        """Stock save (without its rotation), then the completion marker, then rotation of this run's checkpoints."""
        args, state = self.args, self.state  # type: ignore[attr-defined]
        run_dir = self._get_output_dir(trial=trial)  # type: ignore[attr-defined]
        folder = os.path.join(run_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
        if args.should_save and os.path.isdir(folder):
            # Rewriting an existing checkpoint folder: until the new marker, it must not look complete.
            for name in (CHECKPOINT_COMPLETE_MARKER, "trainer_state.json"):
                if os.path.isfile(os.path.join(folder, name)):
                    os.remove(os.path.join(folder, name))
        self.accelerator.wait_for_everyone()  # type: ignore[attr-defined]
        limit = args.save_total_limit
        args.save_total_limit = None
        try:
            super()._save_checkpoint(model, trial)  # type: ignore[misc]
        finally:
            args.save_total_limit = limit
        self.accelerator.wait_for_everyone()  # type: ignore[attr-defined]  # every process has written its part
        if not args.should_save:
            return
        if self._tvd_run_id is None:  # _save_checkpoint called outside train()
            import uuid

            self._tvd_run_id = uuid.uuid4().hex
        write_json_atomically(
            os.path.join(folder, CHECKPOINT_COMPLETE_MARKER),
            {"global_step": state.global_step, "run_id": self._tvd_run_id, **self.checkpoint_metadata()},
        )
        self._tvd_rotate(run_dir)


# TVDArguments fields that define the objective (the others choose how it is computed or logged).
_LOSS_DEFINING = ("loss_type", "gamma", "min_weight", "label_smoothing", "gamma_schedule", "gamma_start",
                  "gamma_schedule_ratio", "gamma_schedule_steps", "focal_gamma", "focal_alpha", "gce_q",
                  "normalization")  # fmt: skip


def _setting(value: Any) -> Any:
    """A loss setting as recorded in a checkpoint marker (JSON): enums by value, numbers as floats."""
    value = getattr(value, "value", value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return value


def check_resume_loss_settings(checkpoint: str, metadata: dict[str, Any], tvd_args: TVDArguments) -> None:
    """Refuse (``ValueError``) to resume ``checkpoint``, whose marker is ``metadata``, with loss settings other than
    those it was trained with, unless ``tvd_args.allow_loss_change_on_resume``; a checkpoint without recorded
    settings (a stock Trainer's) passes."""
    saved = metadata.get("tvd_args")
    if not isinstance(saved, dict) or tvd_args.allow_loss_change_on_resume:
        return
    # A field of one loss type or schedule counts where either run applies it: one applied by neither holds a value
    # nobody used (older checkpoints recorded every field's default; newer ones record None there).
    scoped = {name for names in LOSS_TYPE_FIELDS.values() for name in names}
    applied = set(tvd_args.applied_fields()) | set(
        applied_loss_fields(
            _setting(saved.get("loss_type", "gamma_ce")),
            _setting(saved.get("gamma_schedule", "constant")),
            saved.get("gamma_schedule_steps"),
        )
    )
    changed = [
        f"{name} {saved[name]!r} -> {getattr(tvd_args, name)!r}"
        for name in _LOSS_DEFINING
        if name in saved
        and (name in applied or name not in scoped)
        and _setting(saved[name]) != _setting(getattr(tvd_args, name))
    ]
    if changed:
        raise ValueError(
            f"resuming from {checkpoint}, written with other loss settings: {'; '.join(changed)}. The resumed run "
            "would optimise another objective than the one it started with. Resume with the checkpoint's settings, "
            "start a new run in another output_dir, or set allow_loss_change_on_resume "
            "(--allow_loss_change_on_resume true) to continue with the new ones deliberately"
        )
