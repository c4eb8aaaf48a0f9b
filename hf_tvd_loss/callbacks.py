"""Training-loop safety that is not the loss: checkpoint completion and the non-finite step guard.

Both work with any ``transformers.Trainer``, not only the TVD trainers:

* :class:`NonFiniteGuard` is a ``TrainerCallback``: ``Trainer(..., callbacks=[NonFiniteGuard("skip")])``. Just
  before each optimizer step it checks the step's gradients (and, when told by the trainer, its loss) and either
  stops with :class:`NonFiniteLossError` before the update or skips the update.
* :class:`CheckpointSafetyMixin` is a small mixin (``class T(CheckpointSafetyMixin, Trainer)``): it marks each
  checkpoint complete once everything in it is on disk, rotates old checkpoints only after that, and resumes
  only from complete ones (``resume_from_checkpoint=True`` finds the last complete one).

The TVD trainers include both (:class:`~hf_tvd_loss.TVDTrainer` adds the guard from
``TVDArguments.nonfinite_policy``).
"""

from __future__ import annotations

import json
import math
import os
import re
from typing import Any, get_args

import torch
from torch import nn
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .args import NonFinitePolicy

__all__ = [
    "CHECKPOINT_COMPLETE_MARKER",
    "CheckpointSafetyMixin",
    "NonFiniteGuard",
    "NonFiniteLossError",
    "checkpoint_folders",
    "checkpoint_is_complete",
    "checkpoint_problem",
    "last_complete_checkpoint",
    "last_usable_checkpoint",
    "read_checkpoint_marker",
    "resolve_resume_checkpoint",
]

_POLICIES: tuple[str, ...] = get_args(NonFinitePolicy)
# Written (atomically) into a checkpoint folder once everything else in it is on disk.
CHECKPOINT_COMPLETE_MARKER = "tvd_checkpoint_complete.json"


class NonFiniteLossError(RuntimeError):
    """Training met a NaN/inf loss or gradients and the policy is ``"error"``."""


# ---------------------------------------------------------------------------------------------- non-finite guard
def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t  # FSDP2 gradients are sharded DTensors


class NonFiniteGuard(TrainerCallback):
    """Stops (``"error"``) or skips (``"skip"``) an optimisation step whose gradients or loss are NaN/inf.

    Runs in ``on_pre_optimizer_step``, after gradient clipping and before ``optimizer.step()``. A skipped step
    sets every gradient to None, so the optimizer leaves the weights (and its own state) untouched; the learning
    rate schedule still advances. All processes take the same decision (the flag is all-reduced). Under DeepSpeed
    the engine updates the weights inside ``backward``, before this hook: ``"error"`` still stops the run at that
    step, and ``"skip"`` is refused when training starts.

    A trainer that already has the step's global gradient norm (the TVD trainers keep Trainer's) passes it with
    :meth:`set_grad_norm`, saving a pass over the gradients; a loss computed by the trainer goes through
    :meth:`observe_loss`.
    """

    def __init__(self, policy: NonFinitePolicy = "error") -> None:
        if policy not in _POLICIES:
            allowed = " or ".join((", ".join(map(repr, _POLICIES[:-1])), repr(_POLICIES[-1])))
            raise ValueError(f"NonFiniteGuard policy must be {allowed}, got {policy!r}")
        self.policy = policy
        self.skipped_steps = 0
        self._grad_norm: float | None = None
        self._loss_finite: torch.Tensor | None = None

    def set_grad_norm(self, norm: Any) -> None:
        self._grad_norm = None if norm is None else float(norm)

    def observe_loss(self, loss: torch.Tensor) -> None:
        """Record whether a micro-batch loss is finite (kept on the device: no host synchronisation here)."""
        if self.policy == "ignore":
            return
        finite = torch.isfinite(loss.detach()).all()
        self._loss_finite = finite if self._loss_finite is None else self._loss_finite & finite

    def on_train_begin(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
        self.skipped_steps = 0
        if self.policy == "skip" and getattr(args, "deepspeed", None):
            raise ValueError(
                "nonfinite_policy='skip' cannot work under DeepSpeed, whose engine applies the update inside "
                "backward before any callback runs; use 'error' or 'ignore'"
            )

    def _step_is_finite(self, model: nn.Module | None, optimizer: torch.optim.Optimizer | None) -> bool:
        loss_finite, self._loss_finite = self._loss_finite, None
        norm, self._grad_norm = self._grad_norm, None
        flag = torch.ones((), dtype=torch.float32) if loss_finite is None else loss_finite.float()
        if norm is not None:  # global over processes already
            if not math.isfinite(norm):
                flag = torch.zeros_like(flag)
        else:
            params = (
                [p for group in optimizer.param_groups for p in group["params"]]
                if optimizer is not None
                else list(model.parameters())
                if model is not None
                else []
            )
            grads = [_local(p.grad) for p in params if p.grad is not None]
            if grads:
                norms = torch.stack([torch.linalg.vector_norm(g.float()) for g in grads])
                flag = flag.to(grads[0].device) * torch.isfinite(norms).all().float()
        if _distributed() and torch.distributed.get_world_size() > 1:
            backend = torch.distributed.get_backend()
            target = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
            flag = flag.to(target)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
        return bool(flag.item())  # one host synchronisation per optimisation step

    def on_pre_optimizer_step(self, args, state, control, model=None, optimizer=None, **kwargs):  # type: ignore[no-untyped-def]
        if self.policy == "ignore":
            return
        if self._step_is_finite(model, optimizer):
            return
        step = state.global_step + 1
        if self.policy == "skip":
            self.skipped_steps += 1
            if optimizer is not None:
                optimizer.zero_grad(set_to_none=True)
            return
        last = last_complete_checkpoint(args.output_dir)
        deepspeed_note = (
            " (under DeepSpeed the engine has already applied this update)" if getattr(args, "deepspeed", None) else ""
        )
        raise NonFiniteLossError(
            f"non-finite loss or gradients at optimisation step {step} (NaN/inf, e.g. a poisoned batch or too high a "
            f"learning rate); training stopped before this update{deepspeed_note}, so the weights are unchanged "
            f"since step {step - 1}. Last complete checkpoint: {last or 'none saved yet'}. Set "
            "nonfinite_policy='skip' to skip such steps instead."
        )


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


def _write_json_atomically(path: str, payload: dict) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(payload, f)
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
        _write_json_atomically(
            os.path.join(folder, CHECKPOINT_COMPLETE_MARKER),
            {"global_step": state.global_step, "run_id": self._tvd_run_id, **self.checkpoint_metadata()},
        )
        self._tvd_rotate(run_dir)
