"""Checkpoint safety for any ``transformers.Trainer``: complete checkpoints only, and only this run's deleted.

:class:`CheckpointSafetyMixin` (``class T(CheckpointSafetyMixin, Trainer)``) marks each checkpoint complete once
everything in it is on disk (:data:`CHECKPOINT_COMPLETE_MARKER`, written atomically), rotates old checkpoints only
after that and only this run's, and resumes only from complete ones (``resume_from_checkpoint=True`` or
``"latest"`` finds the last complete one). The functions find, check (:func:`checkpoint_problem`: completion,
optimizer and scheduler state, truncated weight files, and every file's size and checksum against those the marker
recorded) and resolve checkpoints; :func:`check_resume_training_options` compares the training options a run resumes
with against those the checkpoint recorded; :func:`write_json_atomically` is the one atomic JSON write of the package.
"""

from __future__ import annotations

import json
import logging
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
    "check_resume_training_options",
    "checkpoint_file_records",
    "checkpoint_folders",
    "checkpoint_is_complete",
    "checkpoint_problem",
    "checkpoint_verification",
    "last_complete_checkpoint",
    "last_usable_checkpoint",
    "read_checkpoint_marker",
    "resolve_resume_checkpoint",
    "run_can_be_finished",
    "training_options",
    "write_json_atomically",
]

logger = logging.getLogger("hf_tvd_loss.checkpoints")

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


def _file_hash_name() -> str:
    """The checksum the markers record: xxHash's XXH3-128 (installed with datasets; 0.18 s for SmolLM2-135M's 538 MB
    of weights, against 2.2 s for BLAKE2b: docs/CHECKPOINTS.md), BLAKE2b where xxhash is missing."""
    try:
        import xxhash  # noqa: F401
    except ImportError:
        return "blake2b"
    return "xxh3_128"


def file_checksum(path: str, name: str) -> str:
    """The hex checksum ``name`` (``xxh3_128`` or ``blake2b``) of the file at ``path``, read in 4 MiB pieces."""
    if name == "xxh3_128":
        import xxhash

        digest: Any = xxhash.xxh3_128()
    elif name == "blake2b":
        import hashlib

        digest = hashlib.blake2b()
    else:
        raise ValueError(f"unknown checksum {name!r} (known: xxh3_128, blake2b)")
    with open(path, "rb") as f:
        while piece := f.read(1 << 22):
            digest.update(piece)
    return str(digest.hexdigest())


def _checkpoint_file_names(path: str) -> list[str]:
    """Every regular file under checkpoint folder ``path`` (relative, ``/``-separated), the marker and temporary
    files of an atomic write aside."""
    names = []
    for root, _, files in os.walk(path):
        for name in files:
            rel = os.path.relpath(os.path.join(root, name), path).replace(os.sep, "/")
            if rel != CHECKPOINT_COMPLETE_MARKER and ".tmp-" not in name and os.path.isfile(os.path.join(root, name)):
                names.append(rel)
    return sorted(names)


def checkpoint_file_records(path: str) -> dict[str, Any]:
    """``{"checksum": name, "files": {relative path: {"size": bytes, name: hex}}}`` for every file of checkpoint
    folder ``path``: what the completion marker records, and what resuming verifies."""
    name = _file_hash_name()
    files = {}
    for rel in _checkpoint_file_names(path):
        file = os.path.join(path, rel)
        files[rel] = {"size": os.path.getsize(file), name: file_checksum(file, name)}
    return {"checksum": name, "files": files}


def _files_problem(path: str, marker: dict[str, Any]) -> str | None:
    """The first file of ``path`` that is missing, or whose size or checksum differs from the marker's record."""
    files, name = marker.get("files"), marker.get("checksum")
    if not isinstance(files, dict):
        return None  # an older marker, or none: structure only (checkpoint_verification says so)
    for rel, record in sorted(files.items()):
        file = os.path.join(path, *rel.split("/"))
        if not os.path.isfile(file):
            return f"{rel} is missing (the completion marker records it, {record.get('size')} bytes)"
        size = os.path.getsize(file)
        if size != record.get("size"):
            return f"{rel} changed after the checkpoint was written ({size} bytes; the marker records {record.get('size')})"
        if isinstance(name, str) and name in record:
            try:
                value = file_checksum(file, name)
            except (ImportError, ValueError):
                continue  # a checksum this installation cannot compute: checkpoint_verification says sizes only
            if value != record[name]:
                return (
                    f"{rel} changed after the checkpoint was written (its {name} checksum differs from the marker's)"
                )
    return None


def checkpoint_verification(path: str) -> str:
    """What resuming from ``path`` verified, in words (recorded in ``run_info.json`` and logged)."""
    marker = read_checkpoint_marker(path)
    files, name = marker.get("files"), marker.get("checksum")
    if not isinstance(files, dict):
        return ("structure only: its marker records no file sizes or checksums (written by an older version or by "
                "the stock Trainer); headers, zip end records and the optimizer and scheduler states were checked")  # fmt: skip
    try:
        file_checksum(os.devnull, str(name))
    except (ImportError, ValueError):
        return f"the sizes of {len(files)} files (this installation cannot compute their {name} checksums)"
    return f"the sizes and {name} checksums of {len(files)} files"


def run_can_be_finished(checkpoint: str, output_dir: str, max_steps: int) -> bool:
    """Whether resuming from ``checkpoint``, at ``max_steps`` already, finishes a run that was killed after its last
    training step and before its final files: the checkpoint is in ``output_dir``, is at step ``max_steps``, and
    ``output_dir`` holds no ``run_info.json`` (written last by a finished run). Such a resume trains no step and
    writes the evaluation, model and card the killed run did not."""
    marker = read_checkpoint_marker(checkpoint)
    step = marker.get("global_step")
    if not isinstance(step, int):
        step = _step(checkpoint)
    inside = os.path.realpath(os.path.dirname(os.path.abspath(checkpoint))) == os.path.realpath(output_dir)
    return inside and step == max_steps and not os.path.exists(os.path.join(output_dir, "run_info.json"))


def checkpoint_problem(path: str) -> str | None:
    """What makes checkpoint folder ``path`` unusable for resuming, or None.

    Checks completion (marker or readable ``trainer_state.json``), that the optimizer and scheduler states are
    there (a checkpoint of ``--save_only_model``, or one whose ``optimizer.pt`` was deleted, would resume with a
    fresh optimizer without a word), every ``*.safetensors`` file's header against its size, and that every
    pickled torch file (``*.pt``, ``*.pth``, ``*.bin``) is a whole zip archive; then, where the completion marker
    records them, every file's size and checksum (a file changed, truncated or removed after the checkpoint was
    written is named). Files added later are not read by the resume and are not judged.
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
    return _files_problem(path, read_checkpoint_marker(path))


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
    if not isinstance(read_checkpoint_marker(path).get("files"), dict):
        logger.warning("resuming from %s: %s", path, checkpoint_verification(path))
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
    # The training options this run changed from its resumed checkpoint, {name: [checkpoint's, this run's]}
    # (:data:`ALLOWED_ON_RESUME`), and what was verified of that checkpoint's files; set by train().
    tvd_resumed_with_changes: dict[str, Any] | None = None
    tvd_resume_verified: str | None = None

    def checkpoint_metadata(self) -> dict[str, Any]:
        return {}

    def check_resume_metadata(self, checkpoint: str, metadata: dict[str, Any]) -> None:
        """Called with the marker of the checkpoint being resumed, before training; raise to refuse it."""

    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any):  # type: ignore[no-untyped-def]
        import uuid

        training_args = self.args  # type: ignore[attr-defined]
        resume = resolve_resume_checkpoint(resume_from_checkpoint, training_args.output_dir)
        self.tvd_resumed_with_changes, self.tvd_resume_verified = None, None
        if resume:
            marker = read_checkpoint_marker(resume)
            changes = check_resume_training_options(resume, marker, training_args)
            self.check_resume_metadata(resume, marker)
            self.tvd_resumed_with_changes, self.tvd_resume_verified = changes, checkpoint_verification(resume)
            if changes:
                logger.info("resuming from %s with changed options, applied from step %s on: %s", resume,
                            marker.get("global_step"), ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changes.items()))  # fmt: skip
        # A resumed run continues the run that wrote the checkpoint (its older checkpoints are this run's too).
        self._tvd_run_id = (read_checkpoint_marker(resume).get("run_id") if resume else None) or uuid.uuid4().hex
        # Rotation is done here (only this run's checkpoints); the stock one, and the stock deletion at the end of
        # training with save_total_limit=1, would delete any checkpoint-N folder of output_dir.
        done = read_checkpoint_marker(resume).get("global_step") if resume else None
        if isinstance(done, int) and 0 < training_args.max_steps <= done:
            if done > training_args.max_steps:
                raise ValueError(
                    f"resume_from_checkpoint {resume} is at step {done}, past max_steps={training_args.max_steps}: "
                    "nothing is left to train; raise max_steps"
                )
            return self._tvd_finish(resume)  # transformers would train one more step past max_steps
        self._tvd_save_limit = training_args.save_total_limit
        training_args.save_total_limit = None
        try:
            result = super().train(resume, *args, **kwargs)  # type: ignore[misc]
        finally:
            training_args.save_total_limit = self._tvd_save_limit
        if resume and self.state.global_step == read_checkpoint_marker(resume).get("global_step", -1):  # type: ignore[attr-defined]
            # Nothing was left to train (a run killed after its last step, finished now): transformers would report
            # a train_loss of 0 (no loss over no step); the run's losses are in its log history.
            result.metrics.pop("train_loss", None)
            logger.info("resumed from %s with no step left to train: finishing the run", resume)
        self._tvd_keep_only_best_at_end()
        return result

    def _tvd_finish(self, checkpoint: str) -> Any:
        """Resumed at ``max_steps`` (a run killed after its last step): no step is trained; the checkpoint's weights
        and state are restored (and the best model where ``load_best_model_at_end`` asks for it), so the caller
        writes the final files the killed run did not. The result has no ``train_loss`` (no step, no loss)."""
        from transformers.trainer_callback import TrainerState
        from transformers.trainer_utils import TrainOutput

        self._load_from_checkpoint(checkpoint)  # type: ignore[attr-defined]
        self.state = TrainerState.load_from_json(os.path.join(checkpoint, "trainer_state.json"))
        best = self.state.best_model_checkpoint
        if self.args.load_best_model_at_end and best is not None and os.path.isdir(best):  # type: ignore[attr-defined]
            self._load_best_model()  # type: ignore[attr-defined]
        logger.info("resumed from %s at max_steps: no step left to train, finishing the run", checkpoint)
        return TrainOutput(self.state.global_step, float("nan"), {"train_runtime": 0.0, "epoch": self.state.epoch})

    def _load_callback_state(self) -> None:
        """After transformers has loaded the resumed ``trainer_state.json``: take the logging, evaluation and saving
        intervals from this run's arguments (transformers keeps the checkpoint's, with a warning), so a changed
        ``--save_steps`` applies from the resumed step on."""
        super()._load_callback_state()  # type: ignore[misc]
        args, state = self.args, self.state  # type: ignore[attr-defined]
        state.compute_steps(args, args.max_steps if args.max_steps > 0 else state.max_steps)

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
            {
                "global_step": state.global_step,
                "run_id": self._tvd_run_id,
                # save_total_limit is None on args inside train(): the mixin rotates, with the limit it keeps
                "training_options": {
                    **training_options(args),
                    "save_total_limit": _option(
                        self._tvd_save_limit if self._tvd_save_limit is not None else args.save_total_limit
                    ),
                },
                **self.checkpoint_metadata(),
                **checkpoint_file_records(folder),  # every file's size and checksum, verified on resume
            },
        )
        self._tvd_rotate(run_dir)


# ---------------------------------------------------------------------------------- training options on resume
# Options whose new value a resumed run would not apply, or would apply to a run that no longer is the one the
# checkpoint continues: refused on resume, naming both values. transformers restores the optimizer's parameter groups
# (lr, betas, eps, weight_decay) and the scheduler's base learning rates from the checkpoint, over the new values;
# the batch options, the number of processes and the seeds decide which examples the resumed steps skip and see.
REFUSED_ON_RESUME = (
    "per_device_train_batch_size", "gradient_accumulation_steps", "world_size", "seed", "data_seed",
    "optim", "optim_args", "learning_rate", "weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon",
    "lr_scheduler_type", "lr_scheduler_kwargs", "warmup_steps",
)  # fmt: skip
# Options a resumed run applies from the resumed step on (recorded: run_info.json "resumed_with_changes"): the
# length of the run (the schedule is rebuilt from it, its position restored), gradient clipping, and when to log,
# evaluate and save (the mixin re-reads the steps from the arguments; transformers keeps the checkpoint's).
ALLOWED_ON_RESUME = (
    "max_steps", "num_train_epochs", "max_grad_norm", "logging_strategy", "logging_steps", "eval_strategy",
    "eval_steps", "save_strategy", "save_steps", "save_total_limit",
)  # fmt: skip


def _option(value: Any) -> Any:
    """A training option as a marker records it (JSON): enums by value, numbers as floats, None for unset."""
    value = getattr(value, "value", value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, dict):
        return {str(k): _option(v) for k, v in sorted(value.items())}
    if value is None or isinstance(value, (str, bool)):
        return value
    return str(value)


def _comparable(name: str, value: Any) -> Any:
    """``optim``: one algorithm whatever its kernel (``adamw_torch_fused`` and ``adamw_torch`` share their state)."""
    return value.replace("_fused", "") if name == "optim" and isinstance(value, str) else value


def training_options(training_args: Any) -> dict[str, Any]:
    """The training options a checkpoint's marker records, compared on resume (:func:`check_resume_training_options`)."""
    options = {}
    for name in (*REFUSED_ON_RESUME, *ALLOWED_ON_RESUME):
        options[name] = _option(getattr(training_args, name, None))
    return options


def check_resume_training_options(checkpoint: str, metadata: dict[str, Any], training_args: Any) -> dict[str, Any]:
    """Compare the training options of a run resuming ``checkpoint`` (marker ``metadata``) with those recorded in
    it. A change of a :data:`REFUSED_ON_RESUME` option is refused (``ValueError`` naming each option and both
    values); the changes of :data:`ALLOWED_ON_RESUME` options are returned, ``{name: [checkpoint's, this run's]}``,
    for the run's record. A checkpoint without recorded options (an older marker, a stock Trainer's) returns ``{}``
    and logs that nothing was compared."""
    saved = metadata.get("training_options")
    if not isinstance(saved, dict):
        logger.warning(
            "resuming from %s: its marker records no training options (an older version or the stock Trainer "
            "wrote it), so a changed --learning_rate, batch size or seed cannot be detected",
            checkpoint,
        )
        return {}
    ours = training_options(training_args)
    refused = [f"{name} {saved[name]!r} -> {ours[name]!r}" for name in REFUSED_ON_RESUME
               if name in saved and _comparable(name, saved[name]) != _comparable(name, ours[name])]  # fmt: skip
    if refused:
        raise ValueError(
            f"resuming from {checkpoint} with other training options: {'; '.join(refused)} (checkpoint -> this run). "
            "The resumed run would not apply them (transformers restores the optimizer's and the schedule's "
            "settings from the checkpoint) or would no longer continue the same run (batches, processes, seeds). "
            "Resume with the checkpoint's values, or start a new run in another output_dir"
        )
    return {
        name: [saved[name], ours[name]] for name in ALLOWED_ON_RESUME if name in saved and saved[name] != ours[name]
    }


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
