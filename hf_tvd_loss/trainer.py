"""Trainers whose ``compute_loss`` is token-level γ-CE (TaiLr).

``TVDLossMixin`` holds the loss, the token counting and the metrics; ``TVDTrainer`` and ``TVDSeq2SeqTrainer`` are
the mixin on top of ``transformers.Trainer`` and ``Seq2SeqTrainer`` (plus the checkpoint safety and non-finite guard
of :mod:`hf_tvd_loss.callbacks`). What the mixin changes, and why:

* The loss: labels are popped before the model call (so the model does not compute a second, wasted
  cross-entropy); with ``loss_impl="logits"`` the logits go to :mod:`hf_tvd_loss.ops.logits`, with ``"chunked"``
  the loss runs inside the output head's forward (:mod:`hf_tvd_loss.heads`). Causal LMs have their labels shifted
  inside the loss, encoder-decoders get ``decoder_input_ids`` built from the labels when the collator did not.
* Normalisation: the loss is ``Σ token losses / num_items_in_batch``, where ``num_items_in_batch`` is counted
  here (over the whole gradient-accumulation step, summed across processes) with the right rule for the
  model family, times the number of processes because DDP averages gradients. This makes batch 16, 8×2 and
  4×4 accumulation and 2 processes × 4 × 2 train identically (stock transformers 5.23 does not for T5/BART).
* Metrics: per-token sums (objective, plain NLL, weight, count) are kept on the device and only synchronised
  when logging; ``loss`` / ``nll`` / ``tvd_weight_mean`` / ``gamma`` are token-weighted averages over all
  processes, for training logs and for ``evaluate()``/``predict()`` (prefixed ``eval_``/``test_``), also when
  ``predict_with_generate`` makes the stock ``Seq2SeqTrainer`` skip ``compute_loss``. With ``min_weight > 0``
  also ``tvd_weight_floor_fraction``; with ``TVDArguments.extra_metrics`` also ``token_accuracy``, ``entropy``,
  ``ece`` and ``confidence``, computed a chunk at a time inside the loss (both ``loss_impl`` paths).

How a batch flows: ``docs/ARCHITECTURE.md``.
"""

from __future__ import annotations

import math
import os
import weakref
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn
from transformers import Seq2SeqTrainer, Trainer

from .args import TVDArguments
from .callbacks import NonFiniteGuard, NonFiniteLossError
from .checkpoints import CheckpointSafetyMixin, check_resume_loss_settings, last_complete_checkpoint
from .heads import (
    IGNORE_INDEX,
    OutputHead,
    check_trainable_model,
    label_layout,
    logits_of,
    loss_in_output_head,
    model_class_name,
    output_layout,
    resolve_output_head,
    unwrap_model,
    verify_output_head,
)
from .hp_search import HyperparameterSearchMixin
from .ops.common import (
    CALIBRATION_BINS,
    GammaCEStats,
    TokenWeightRule,
    calibration_from_sums,
    focal_terms,
    gamma_terms,
)
from .ops.linear import linear_token_weighted_cross_entropy
from .ops.logits import token_weighted_cross_entropy

__all__ = [
    "NonFiniteLossError",
    "TVDLoss",
    "TVDLossMixin",
    "TVDSeq2SeqTrainer",
    "TVDTrainer",
    "last_complete_checkpoint",
    "select_token_terms",
]

_MODES = ("train", "eval")
# Layout of the per-mode sums (float64): Σ objective, Σ NLL, Σ weight, count, floor count; with the extra
# metrics also Σ correct, Σ entropy and the [3, CALIBRATION_BINS] calibration sums, flattened.
_BASE_SUMS = 5
_EXTRA_SUMS = 2 + 3 * CALIBRATION_BINS


def select_token_terms(
    tvd_args: TVDArguments, weight_rule: TokenWeightRule | None = None
) -> Callable[[float], TokenWeightRule]:
    """The loss chosen by ``tvd_args.loss_type``, once: a function of the current γ giving its per-token weight rule
    (a custom ``weight_rule``, checked by :func:`check_weight_rule`, whatever γ)."""
    if weight_rule is not None:
        return lambda gamma: weight_rule
    if tvd_args.loss_type == "focal":
        terms = focal_terms(float(tvd_args.focal_gamma), float(tvd_args.focal_alpha))
        return lambda gamma: terms
    if tvd_args.loss_type == "gce":
        from .ops.common import gce_terms

        terms = gce_terms(float(tvd_args.gce_q))
        return lambda gamma: terms
    min_weight = float(tvd_args.min_weight)
    return lambda gamma: gamma_terms(float(gamma), min_weight)


# The TVDArguments fields that choose the per-token weight rule; a custom weight_rule replaces them.
_RULE_FIELDS = ("loss_type", "gamma", "min_weight", "gamma_schedule", "gamma_start", "gamma_schedule_ratio",
                "gamma_schedule_steps", "focal_gamma", "focal_alpha", "gce_q")  # fmt: skip


def check_weight_rule(weight_rule: Any, tvd_args: TVDArguments) -> None:
    """A custom ``weight_rule`` must be a :class:`~hf_tvd_loss.TokenWeightRule`, and the ``tvd_args`` fields it
    replaces (γ, b, loss_type, the schedule, the focal options) must be left at their defaults: set, they would not
    be applied. ``label_smoothing``, ``normalization``, ``loss_impl`` and the rest still apply."""
    if weight_rule is None:
        return
    if not isinstance(weight_rule, TokenWeightRule):
        raise ValueError(
            f"weight_rule must be a TokenWeightRule, got {type(weight_rule).__name__}: build one with "
            "TokenWeightRule.from_weight(lambda log_p: ...) or hf_tvd_loss.probability_power_rule(alpha)"
        )
    unapplied = [f"{n}={getattr(tvd_args, n)!r}" for n in tvd_args.changed_fields(_RULE_FIELDS)]
    if unapplied:
        raise ValueError(
            f"weight_rule replaces the loss that tvd_args chooses, so {', '.join(unapplied)} would not be applied: "
            "leave them at their defaults (label_smoothing, normalization and loss_impl still apply)"
        )


def _count_targets(batch: Mapping[str, Any], shifts_labels: bool, normalization: str = "token") -> torch.Tensor | None:
    """The loss's denominator for one batch: tokens it scores (labels ≠ -100, after the causal shift), or, with
    ``normalization="sequence"``, sequences with at least one scored token.

    Padding-free batches (one row holding several sequences, each starting at ``position_ids == 0``) count each
    sequence. None when the batch has no labels.
    """
    if "shift_labels" in batch and torch.is_tensor(batch["shift_labels"]):
        scored = batch["shift_labels"].ne(IGNORE_INDEX)
    elif "labels" in batch and torch.is_tensor(batch["labels"]):
        labels = batch["labels"]
        scored = labels.ne(IGNORE_INDEX)
        if shifts_labels:  # position t scores labels[t+1]: the first label of a row is never scored
            scored = torch.nn.functional.pad(scored[..., 1:], (1, 0), value=False)
    else:
        return None
    if normalization == "token":
        return scored.sum()
    # [B, T] labels: a row is a sequence; [B] labels (a classifier's, one per example): each is its own
    scored = scored.reshape(-1, scored.shape[-1]) if scored.dim() > 1 else scored.reshape(-1, 1)
    position_ids = batch.get("position_ids")
    if torch.is_tensor(position_ids) and position_ids.shape == batch.get("labels", scored).shape:
        starts = position_ids.reshape(scored.shape).eq(0)
        starts[:, 0] = True
        segment = starts.long().cumsum(-1) + torch.arange(scored.shape[0], device=scored.device).unsqueeze(1) * (
            scored.shape[1] + 1
        )
        return torch.unique(segment[scored]).numel() * torch.ones((), dtype=torch.long, device=scored.device)
    return scored.any(dim=-1).sum()


CHUNKED_CLASSIFIER_REASON = (
    "it is a classifier, whose logits over a few classes are small; the chunked loss saves the memory of [tokens, "
    "vocabulary] logits of a language-modelling head and has nothing to save here. Use loss_impl='logits'"
)


def check_model_for_loss(model: nn.Module | None, tvd_args: TVDArguments) -> None:
    """Refuse, before any work, a model γ-CE cannot train (:func:`~hf_tvd_loss.heads.check_trainable_model`) and
    ``loss_impl="chunked"`` on a classifier."""
    if model is None:  # model_init: checked when the model exists
        return
    check_trainable_model(model)
    if tvd_args.loss_impl == "chunked" and label_layout(model).classification:
        raise ValueError(f"loss_impl='chunked' cannot be used with {model_class_name(unwrap_model(model))}: "
                         + CHUNKED_CLASSIFIER_REASON)  # fmt: skip


# The batch fields a TVD trainer reads its targets from (compute_loss); ``--label_names`` naming anything else would
# make transformers' evaluation look for targets the loss never reads.
TARGET_FIELDS = ("labels", "shift_labels")


def check_training_args_for_loss(training_args: Any, tvd_args: TVDArguments) -> None:
    """Refuse, before any work, ``TrainingArguments`` a TVD trainer would not apply as asked.

    * ``use_liger_kernel``: transformers patches the model (its forward with liger-kernel's own fused
      cross-entropy, which returns no logits in loss-only evaluation) and torch's cross-entropy and rotary functions
      for the whole process; γ-CE reads the logits, and on CPU the Triton kernels fail at the first step. liger-kernel's
      fused kernel for γ-CE is ``loss_impl='chunked'`` with ``chunked_backend='liger'``.
    * ``label_names`` other than the target fields the loss reads (``labels``, ``shift_labels``).
    * ``loss_impl='chunked'`` with a Triton backend (``cce``, ``liger``) that cannot run on the arguments' device.
    """
    if getattr(training_args, "use_liger_kernel", False):
        raise ValueError(
            "use_liger_kernel cannot be used with a TVD trainer: transformers would patch the model's forward with "
            "liger-kernel's own cross-entropy (no logits in loss-only evaluation, while γ-CE reads the logits) and "
            "torch's cross-entropy for the whole process, and on CPU its Triton kernels fail at the first step. "
            "For liger-kernel's fused kernel with γ-CE use loss_impl='chunked' with chunked_backend='liger' (CUDA); "
            "remove use_liger_kernel"
        )
    names = getattr(training_args, "label_names", None)
    if names is not None:
        other = [n for n in names if n not in TARGET_FIELDS]
        if other or not names:
            raise ValueError(
                f"label_names {list(names)}: a TVD trainer reads its targets from the batch's "
                f"{' or '.join(TARGET_FIELDS)} field, so evaluation would look for targets in "
                f"{', '.join(other) if other else 'no field'} that the loss never reads: rename the field to labels "
                "or remove label_names"
            )
    if tvd_args.loss_impl == "chunked" and tvd_args.chunked_backend in ("cce", "liger"):
        from .ops.kernels import select_impl

        device = getattr(training_args, "device", None)
        if device is not None:
            try:
                select_impl(tvd_args.chunked_backend, torch.empty(0, device=device), None, None, 0.0)
            except ValueError as err:
                raise ValueError(f"chunked_backend={tvd_args.chunked_backend!r}: {err}") from None


class TVDLossMixin:
    """Mixin for ``transformers.Trainer`` subclasses: token-level γ-CE as the training and evaluation loss.

    Construct the trainer exactly like its parent, plus ``tvd_args=TVDArguments(...)``::

        trainer = TVDTrainer(model=model, args=training_args, train_dataset=ds, tvd_args=TVDArguments(gamma=0.1))

    Put it before the Trainer class in the bases (``class MyTrainer(TVDLossMixin, Trainer)``). It adds a
    :class:`~hf_tvd_loss.callbacks.NonFiniteGuard` with ``tvd_args.nonfinite_policy``.
    """

    # compute_loss returns Σ / (token count of the whole accumulation step), so Trainer must not divide again.
    loss_is_scaled_for_ga = True
    # Compute the extra metrics (accuracy, entropy, calibration) in every evaluation even when
    # tvd_args.extra_metrics (which adds them to training) is off; they come from the loss's own pass over the logits
    # (a chunk at a time), so their cost is in evaluation only (measured in BENCHMARKS.md). Set False to skip them.
    tvd_eval_extra_metrics = True

    def __init__(
        self,
        *args: Any,
        tvd_args: TVDArguments | None = None,
        weight_rule: TokenWeightRule | None = None,
        **kwargs: Any,
    ) -> None:
        if tvd_args is None:
            tvd_args = TVDArguments()
        if not isinstance(tvd_args, TVDArguments):
            raise ValueError(f"tvd_args must be a TVDArguments instance, got {type(tvd_args).__name__}")
        tvd_args.validate()  # a field may have changed since the arguments were built
        check_weight_rule(weight_rule, tvd_args)
        if kwargs.get("compute_loss_func") is not None:
            raise ValueError(
                "compute_loss_func cannot be combined with a TVD trainer, whose compute_loss is the γ-CE loss; "
                "use the stock Trainer with compute_loss_func=TVDLoss(...) instead"
            )
        training_args = kwargs.get("args", args[1] if len(args) > 1 else None)
        if training_args is not None and getattr(training_args, "label_smoothing_factor", 0.0):
            raise ValueError(
                "TrainingArguments.label_smoothing_factor must be 0 with a TVD trainer: set "
                f"TVDArguments.label_smoothing={training_args.label_smoothing_factor} instead (it is combined "
                "with the γ-CE term as in the official TaiLr criterion)"
            )
        if training_args is not None:
            check_training_args_for_loss(training_args, tvd_args)
        self.tvd_args = tvd_args
        self.tvd_weight_rule = weight_rule
        self._tvd_terms = select_token_terms(tvd_args, weight_rule)
        self.nonfinite_guard = NonFiniteGuard(tvd_args.nonfinite_policy)
        callbacks = list(kwargs.pop("callbacks", None) or [])
        kwargs["callbacks"] = [*callbacks, self.nonfinite_guard]
        super().__init__(*args, **kwargs)
        self._tvd_check_engine()
        self._tvd_bind_loss_weights()
        # Keep the stock token counting and the model's own loss path off: this class counts the scored
        # tokens itself (get_batch_samples) with the rule that matches its loss.
        self.model_accepts_loss_kwargs = False
        check_model_for_loss(self.model, tvd_args)
        self._tvd_sums: dict[str, torch.Tensor | None] = dict.fromkeys(_MODES)
        self._tvd_sequences: dict[str, torch.Tensor | None] = dict.fromkeys(_MODES)
        self.tvd_calibration_sums: dict[str, torch.Tensor] = {}
        self._tvd_last_gamma: float | None = None
        self._tvd_head: tuple[weakref.ref, OutputHead] | None = None
        self._tvd_needs_logits = False

    def _tvd_check_engine(self) -> None:
        """Refuse, before training, an engine that was asked for and silently not given."""
        fsdp_asked = getattr(self.args, "fsdp_plugin_args", None) is not None or (
            os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
        )
        if fsdp_asked and not getattr(self, "is_fsdp_enabled", False) and self.args.world_size > 1:
            raise ValueError(
                "FSDP was asked for (TrainingArguments.fsdp or an accelerate FSDP config) but accelerate did not "
                f"enable it: distributed type {self.accelerator.distributed_type}. accelerate (1.15) takes FSDP only "
                "on GPUs and other accelerators (AcceleratorState.__init__ in accelerate/state.py); with use_cpu it "
                "trains with DistributedDataParallel instead, each process holding the whole model. Drop the FSDP "
                "settings on CPU, or see docs/DISTRIBUTED.md"
            )

    def _tvd_use_args(self, tvd_args: TVDArguments) -> None:
        """Train with ``tvd_args`` from now on (a hyperparameter-search trial, :mod:`hf_tvd_loss.hp_search`): the
        loss state ``__init__`` derives from them is rebuilt (the non-finite policy is not a search field)."""
        tvd_args.validate()
        check_weight_rule(self.tvd_weight_rule, tvd_args)
        self.tvd_args = tvd_args
        self._tvd_terms = select_token_terms(tvd_args, self.tvd_weight_rule)
        self._tvd_last_gamma = None

    # ---------------------------------------------------------------- γ
    def current_gamma(self) -> float:
        """γ for the current global step (the schedule is a function of the step, so it survives a resume)."""
        state = self.state
        if state.max_steps <= 0:  # evaluation outside training: the target value
            return self.tvd_args.gamma
        return self.tvd_args.gamma_at(state.global_step, state.max_steps)

    # ---------------------------------------------------------------- token counting
    def get_batch_samples(self, epoch_iterator, num_batches, device):  # type: ignore[override]
        batch_samples, num_items_in_batch = super().get_batch_samples(epoch_iterator, num_batches, device)
        if num_items_in_batch is None:
            num_items_in_batch = self._tvd_count_tokens(batch_samples, device)
        if batch_samples:
            self._tvd_refuse_unscored_step(batch_samples, num_items_in_batch)
        return batch_samples, num_items_in_batch

    def _tvd_refuse_unscored_step(self, batch_samples: list, num_items_in_batch: Any) -> None:
        """A training step in which no label is scored (all -100) would train on loss 0 without a word: refuse it.

        Counted on the batches as the data loader gave them (on the CPU: no device sync). With several processes a
        shard without targets is fine while another has some, so a process whose shard is empty then reads the
        step's global count, which the Trainer has already gathered (``average_tokens_across_devices``): a device
        sync in that rare step only, no collective of its own. When the global count is 0, every shard is empty,
        so every process takes this branch and refuses at the same step. Without ``average_tokens_across_devices``
        the count is per process and nothing global is known: the several-process check is then not made."""
        shifts = label_layout(self.model).shifts
        counts = [_count_targets(batch, shifts) for batch in batch_samples if isinstance(batch, Mapping)]
        if not counts or any(c is None or c.device.type != "cpu" for c in counts):
            return
        if sum(int(c) for c in counts) > 0:
            return
        if self.args.world_size > 1:
            if not (self.args.average_tokens_across_devices and num_items_in_batch is not None):
                return
            if float(torch.as_tensor(num_items_in_batch).sum()) > 0:
                return
        processes = f" on all {self.args.world_size} processes" if self.args.world_size > 1 else ""
        raise ValueError(
            f"training step {self.state.global_step + 1} has no scored target: every label of its "
            f"{len(counts)} batch(es){processes} is -100 (or only the first position, which a causal LM does not "
            "score), so it would train on a loss of 0; check the labels (the prompt mask, truncation) or drop such "
            "examples"
        )

    def _tvd_count_tokens(self, batch_samples: list, device: torch.device) -> torch.Tensor | None:
        shifts = label_layout(self.model).shifts
        norm = self.tvd_args.normalization
        counts = [_count_targets(batch, shifts, norm) for batch in batch_samples if isinstance(batch, Mapping)]
        if not counts or any(c is None for c in counts):
            return None
        total = torch.stack([c.to(device) for c in counts]).sum().float()
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            total = self.accelerator.gather(total.reshape(1)).sum()
        return total

    # ---------------------------------------------------------------- loss
    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor | Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        if "labels" not in inputs and "shift_labels" not in inputs:
            raise ValueError(
                "TVD trainers need `labels` in every batch (token ids, -100 where not scored); got keys "
                f"{sorted(inputs)}. If your dataset has a labels column, check that the model has a "
                "language-modelling head: Trainer drops columns the model's forward does not accept "
                f"({type(unwrap_model(model)).__name__}.forward)."
            )
        missing = [name for name in self.args.label_names or () if name not in inputs]
        if missing:  # transformers' evaluation would find no targets in these batches and skip the loss
            raise ValueError(
                f"label_names {list(self.args.label_names)}: the batches have no {', '.join(missing)} field (they "
                f"have {', '.join(sorted(inputs))}): name the target field they carry, or remove label_names"
            )
        inputs = dict(inputs)
        labels = inputs.pop("labels", None)
        shift_labels = inputs.pop("shift_labels", None)
        loss_weights = inputs.pop("loss_weights", None)
        layout = label_layout(model)
        inputs = layout.model_inputs(model, inputs, labels)
        targets, shift = layout.targets(labels, shift_labels)

        gamma = self.current_gamma()
        terms = self._tvd_terms(gamma)
        mode = "train" if model.training else "eval"
        # In training, normalise by the token count of the whole accumulation step (all processes); in
        # evaluation, by this batch's own count (the exact eval averages come from the logged sums).
        global_norm = model.training and num_items_in_batch is not None
        sequences = None
        if self.tvd_args.normalization == "sequence" and not global_norm:  # this batch's own sequence count
            sequences = _count_targets({"labels": labels, "shift_labels": shift_labels, **inputs}, shift, "sequence")
        denominator = num_items_in_batch if global_norm else sequences
        common = dict(
            label_smoothing=self.tvd_args.label_smoothing,
            ignore_index=IGNORE_INDEX,
            shift_labels=shift,
            num_items_in_batch=denominator,
            token_scale=loss_weights,
            extra_metrics=self._tvd_extra_metrics(mode),
        )
        if self._tvd_use_chunked(model):
            head = self._tvd_output_head(model, inputs)

            def loss_fn(hidden: torch.Tensor, **head_args: Any) -> tuple[torch.Tensor, GammaCEStats]:
                if hidden.shape[:-1] != targets.shape:
                    raise ValueError(
                        f"{head.model_class}: the output head saw hidden states {tuple(hidden.shape)} for labels "
                        f"{tuple(targets.shape)} (a model that keeps only some positions, e.g. logits_to_keep): "
                        "the chunked loss needs one hidden state per label; use loss_impl='logits'"
                    )
                return linear_token_weighted_cross_entropy(
                    hidden, labels=targets, terms=terms, impl=self.tvd_args.chunked_backend, **head_args, **common
                )

            loss, stats, outputs = loss_in_output_head(model, head, inputs, loss_fn)
        else:
            outputs = model(**inputs)
            loss, stats = token_weighted_cross_entropy(logits_of(outputs, model), targets, terms, **common)
        if model.training:
            self.nonfinite_guard.observe_loss(loss)
        if global_norm and self.args.average_tokens_across_devices and self.accelerator.num_processes > 1:
            # DDP averages gradients over processes; the count above is global, so undo that average.
            loss = loss * self.accelerator.num_processes
        # Read by Trainer.training_step right after this call: without a global count the loss is a
        # micro-batch mean that Trainer must still divide by the accumulation steps.
        self.loss_is_scaled_for_ga = global_norm
        self._tvd_last_gamma = gamma
        self._tvd_record(mode, stats)
        if sequences is not None:
            previous = self._tvd_sequences.get(mode)
            self._tvd_sequences[mode] = sequences if previous is None else previous + sequences
        return (loss, outputs) if return_outputs else loss

    def _set_signature_columns_if_needed(self) -> None:
        # A dataset column `loss_weights` (per example or per token) is a loss input: keep it through
        # remove_unused_columns, although the model's forward does not take it.
        compiled = getattr(self.model, "_orig_mod", None)  # torch.compile: its forward is (*args, **kwargs)
        if self._signature_columns is None and isinstance(compiled, nn.Module):
            import inspect

            self._signature_columns = [*inspect.signature(compiled.forward).parameters, "label", "label_ids", "labels"]
        super()._set_signature_columns_if_needed()
        if self._signature_columns is not None and "loss_weights" not in self._signature_columns:
            self._signature_columns.append("loss_weights")

    def _tvd_use_chunked(self, model: nn.Module) -> bool:
        """Chunked in training, and in evaluation unless the caller needs the logits as predictions."""
        return self.tvd_args.loss_impl == "chunked" and (model.training or not self._tvd_needs_logits)

    def _tvd_output_head(self, model: nn.Module, inputs: Mapping[str, Any]) -> OutputHead:
        """The model's output head, resolved and checked against the logits path once per model."""
        base = unwrap_model(model)
        if self._tvd_head is not None and self._tvd_head[0]() is base:
            return self._tvd_head[1]
        try:
            head = resolve_output_head(model)
            verify_output_head(model, head, inputs)
        except ValueError as exc:
            raise ValueError(f"loss_impl='chunked' cannot be used: {exc}") from exc
        # A weak reference, not id(): a new model may reuse a freed one's address.
        self._tvd_head = (weakref.ref(base), head)
        return head

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None, **kwargs):  # type: ignore[override]
        # The chunked path has no logits to return as predictions: use it only when the loss is all that is needed.
        # A flag, set for the length of this call, because Trainer.prediction_step calls
        # compute_loss(model, inputs, return_outputs=True) whatever prediction_loss_only is and gives it no other
        # channel; the alternative, re-implementing prediction_step, would fork the Trainer's evaluation loop.
        self._tvd_needs_logits = not prediction_loss_only
        try:
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys, **kwargs)
        finally:
            self._tvd_needs_logits = False

    def _get_grad_norm(self, model: nn.Module, grad_norm: Any = None) -> Any:
        # Trainer computes the step's global gradient norm just before the optimizer step; hand it to the
        # non-finite guard so that it needs no second pass over the gradients.
        norm = super()._get_grad_norm(model, grad_norm=grad_norm)
        self.nonfinite_guard.set_grad_norm(norm)
        return norm

    # ---------------------------------------------------------------- metrics
    def _tvd_extra_metrics(self, mode: str) -> bool:
        """Whether the loss computes accuracy / entropy / calibration sums in ``mode`` ("train" or "eval")."""
        return self.tvd_args.extra_metrics or (mode == "eval" and self.tvd_eval_extra_metrics)

    def _tvd_num_sums(self, mode: str) -> int:
        return _BASE_SUMS + (_EXTRA_SUMS if self._tvd_extra_metrics(mode) else 0)

    def _tvd_record(self, mode: str, stats: GammaCEStats) -> None:
        parts = [stats.objective_sum, stats.nll_sum, stats.weight_sum, stats.num_tokens]
        parts.append(stats.floor_count if stats.floor_count is not None else torch.zeros_like(stats.num_tokens))
        row = torch.stack(parts)
        if self._tvd_extra_metrics(mode):
            if stats.calibration is None:  # every loss path computes them when asked: never log made-up zeros
                raise RuntimeError("the loss returned no accuracy / entropy / calibration sums although asked for")
            extra = torch.cat([stats.correct_sum.reshape(1), stats.entropy_sum.reshape(1),
                               stats.calibration.reshape(-1).to(row.dtype)])  # fmt: skip
            row = torch.cat([row, extra])
        row = row.double()
        current = self._tvd_sums.get(mode)
        self._tvd_sums[mode] = row if current is None else current + row.to(current.device)

    def _tvd_drain(self, mode: str, prefix: str) -> dict[str, float]:
        """Token-weighted averages since the last drain, summed over processes; resets the sums.

        Must be called on every process (it is a collective when training is distributed). With the extra
        metrics, the summed calibration bins (``[3, bins]``: count, Σ confidence, Σ correct) are kept in
        ``self.tvd_calibration_sums[mode]`` (CPU, float64), e.g. for reliability diagrams.
        """
        size = self._tvd_num_sums(mode)
        sums = self._tvd_sums.get(mode)
        self._tvd_sums[mode] = None
        if sums is None:
            sums = torch.zeros(size, dtype=torch.float64)
        if self.args.world_size > 1:
            sums = self.accelerator.gather(sums.to(self.args.device).reshape(1, size)).sum(0)
        values = sums.tolist()
        objective, nll, weight, count, floor = values[:_BASE_SUMS]
        metrics: dict[str, float] = {}
        if count > 0:
            metrics[f"{prefix}nll"] = nll / count
            metrics[f"{prefix}perplexity"] = math.exp(min(nll / count, 700.0))
            metrics[f"{prefix}tvd_weight_mean"] = weight / count
            if self.tvd_args.loss_type == "gamma_ce" and self.tvd_args.min_weight > 0:
                metrics[f"{prefix}tvd_weight_floor_fraction"] = floor / count
            if prefix:  # training's `loss` is logged by Trainer itself (the same quantity, step-averaged)
                metrics[f"{prefix}loss"] = objective / count
        if size > _BASE_SUMS:
            correct, entropy = values[_BASE_SUMS : _BASE_SUMS + 2]
            calibration = sums[_BASE_SUMS + 2 :].reshape(3, CALIBRATION_BINS).detach().cpu()
            self.tvd_calibration_sums[mode] = calibration
            if count > 0:
                # a classifier's accuracy is per example (or per token of a token classifier): transformers'
                # classification examples call it `accuracy`; a language model's is per predicted token
                accuracy = "accuracy" if label_layout(self.model).classification else "token_accuracy"
                metrics[f"{prefix}{accuracy}"] = correct / count
                metrics[f"{prefix}entropy"] = entropy / count
                calibration_metrics = calibration_from_sums(calibration)
                for name in ("ece", "confidence"):
                    metrics[f"{prefix}{name}"] = calibration_metrics[name]
        sequences = self._tvd_sequences.get(mode)
        self._tvd_sequences[mode] = None
        if self.tvd_args.normalization == "sequence" and prefix:
            total = torch.zeros((), dtype=torch.float64) if sequences is None else sequences.double().cpu()
            if self.args.world_size > 1:
                total = self.accelerator.gather(total.to(self.args.device).reshape(1)).sum()
            if float(total) > 0:  # Σ objective / sequences, as the training loss is normalised
                metrics[f"{prefix}loss"] = objective / float(total)
        gamma = self._tvd_last_gamma if mode == "train" and self._tvd_last_gamma is not None else None
        if self.tvd_args.loss_type == "gamma_ce" and self.tvd_weight_rule is None:  # no γ in a custom rule
            metrics[f"{prefix}gamma"] = gamma if gamma is not None else self.current_gamma()
        return metrics

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        # The periodic training log is the one with a `loss` entry (evaluation logs have `eval_loss`).
        if "loss" in logs:
            logs.update(self._tvd_drain("train", prefix=""))
            if self.tvd_args.nonfinite_policy == "skip":
                logs["nonfinite_skipped_steps"] = float(self.nonfinite_guard.skipped_steps)
        super().log(logs, *args, **kwargs)

    def evaluation_loop(
        self, dataloader, description, prediction_loss_only=None, ignore_keys=None, metric_key_prefix="eval"
    ):  # type: ignore[override]  # noqa: E501
        if not self.is_in_train:  # an evaluation alone: the loss's arguments checked and applied as they are now
            self._tvd_use_args(self.tvd_args)
        self._tvd_sums["eval"] = None
        self._tvd_sequences["eval"] = None
        output = super().evaluation_loop(
            dataloader,
            description,
            prediction_loss_only=prediction_loss_only,
            ignore_keys=ignore_keys,
            metric_key_prefix=metric_key_prefix,
        )
        # Exact token-weighted averages over the whole evaluation set and all processes (the stock
        # eval_loss averages per-batch means).
        output.metrics.update(self._tvd_drain("eval", prefix=f"{metric_key_prefix}_"))
        return output

    def train(self, *args: Any, **kwargs: Any):  # type: ignore[no-untyped-def]
        self._tvd_use_args(self.tvd_args)  # checked and applied again: a field may have changed since construction
        check_training_args_for_loss(self.args, self.tvd_args)
        check_model_for_loss(self.model, self.tvd_args)
        if self.model is not None and not any(p.requires_grad for p in self.model.parameters()):
            raise ValueError(f"{model_class_name(unwrap_model(self.model))} has no trainable parameter (requires_grad "
                             "is False for all of them), so training would change nothing: unfreeze some")  # fmt: skip
        if self.tvd_args.loss_impl == "chunked":  # refuse an unusable head before any work (checked again on data)
            try:
                resolve_output_head(self.model)
            except ValueError as exc:
                raise ValueError(f"loss_impl='chunked' cannot be used: {exc}") from exc
        self._tvd_refuse_dropped_loss_weights()
        self._tvd_refuse_float_class_labels()
        self._tvd_sums = dict.fromkeys(_MODES)
        self._tvd_sequences = dict.fromkeys(_MODES)
        return super().train(*args, **kwargs)

    def _tvd_bind_loss_weights(self) -> None:
        """Tell a :class:`~hf_tvd_loss.WithLossWeights` collator that this trainer applies its weights (it refuses
        to collate for any other loss)."""
        from .collators import WithLossWeights

        if isinstance(self.data_collator, WithLossWeights):
            self.data_collator.loss_reader = type(self).__name__

    def _tvd_refuse_float_class_labels(self) -> None:
        """A classifier's training data whose label column holds floats (regression targets, or class ids written as
        2.0) is refused before training, naming the column; the loss would refuse its first batch."""
        features = getattr(self.train_dataset, "features", None)
        if not isinstance(features, Mapping) or self.model is None or not label_layout(self.model).classification:
            return
        for column in ("labels", "label", "label_ids"):
            dtype = getattr(features.get(column), "dtype", None)
            if isinstance(dtype, str) and dtype.startswith("float"):
                raise ValueError(
                    f"the training data's {column!r} column holds floats ({dtype}), and "
                    f"{model_class_name(unwrap_model(self.model))} is a classifier: its labels are class ids, "
                    "integers 0..num_labels-1 (cast the column, e.g. dataset.cast_column(name, Value('int64'))); "
                    "float targets are regression, which γ-CE, a loss over classes, does not train"
                )

    def _tvd_refuse_dropped_loss_weights(self) -> None:
        """A ``loss_weights`` column that the data collator would not put into the batch (e.g. TRL's or the stock
        padding collator) is refused before training: its weights would be dropped without a word."""
        from .collators import WithLossWeights

        self._tvd_bind_loss_weights()  # the collator may have been replaced since __init__
        columns = getattr(self.train_dataset, "column_names", None) or []
        if "loss_weights" in columns and not isinstance(self.data_collator, WithLossWeights):
            raise ValueError(
                f"the training data has a loss_weights column, but the data collator "
                f"({type(self.data_collator).__name__}) does not pass it to the loss, so the weights would be "
                "ignored: wrap it, data_collator=hf_tvd_loss.WithLossWeights(collator), or remove the column"
            )

    def create_model_card(self, *args: Any, tags: str | list[str] | None = None, **kwargs: Any) -> None:
        """The stock (or TRL's) model card, plus the loss: the ``hf_tvd_loss``/``tailr`` tags, the loss settings as
        ``hf_tvd_loss:`` metadata and a loss section (γ, b, ε, the γ schedule) in the text. ``push_to_hub`` calls
        this, so a pushed model says which loss made it."""
        from .card import CARD_TAGS, add_loss_to_model_card, card_path

        tags = [tags] if isinstance(tags, str) else list(tags or [])
        tags += [tag for tag in CARD_TAGS if tag not in tags]
        super().create_model_card(*args, tags=tags, **kwargs)
        if self.is_world_process_zero() and os.path.isfile(card_path(self.args.output_dir)):
            add_loss_to_model_card(card_path(self.args.output_dir), self.tvd_args, self.tvd_weight_rule)

    def checkpoint_metadata(self) -> dict[str, Any]:
        metadata: dict[str, Any] = {"tvd_args": dict(self.tvd_args.__dict__)}
        if self.tvd_weight_rule is not None:
            metadata["weight_rule"] = self.tvd_weight_rule.name or "custom"
        return metadata

    def check_resume_metadata(self, checkpoint: str, metadata: dict[str, Any]) -> None:
        check_resume_loss_settings(checkpoint, metadata, self.tvd_args)


class TVDTrainer(TVDLossMixin, HyperparameterSearchMixin, CheckpointSafetyMixin, Trainer):
    """``transformers.Trainer`` whose loss is token-level γ-CE. Extra argument: ``tvd_args=TVDArguments(...)``."""


class TVDSeq2SeqTrainer(TVDLossMixin, HyperparameterSearchMixin, CheckpointSafetyMixin, Seq2SeqTrainer):
    """``transformers.Seq2SeqTrainer`` whose loss is token-level γ-CE. Extra argument: ``tvd_args``.

    With ``predict_with_generate=True`` the stock class computes its evaluation loss with ``model(**inputs)``
    and never calls ``compute_loss``; here the γ-CE loss (and ``eval_nll`` etc.) is computed by a teacher-forced
    pass before generating, and that pass replaces the stock one (one teacher-forced forward per batch, as in
    the stock class).
    """

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None, **gen_kwargs):  # type: ignore[override]
        if not self.args.predict_with_generate or prediction_loss_only or "labels" not in inputs:
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys, **gen_kwargs)
        prepared = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, prepared).detach()
        # The parent generates with self.model and computes its (stock) loss with one teacher-forced call of the
        # `model` it is given: hand it our γ-CE loss instead of running that forward a second time.
        return super().prediction_step(
            _ReturnsLoss(model, loss), inputs, prediction_loss_only, ignore_keys=ignore_keys, **gen_kwargs
        )


class _ReturnsLoss:
    """Stands in for ``model`` in ``Seq2SeqTrainer.prediction_step``: calling it returns ``{"loss": loss}``.

    Every attribute is the wrapped model's, so anything else the parent does with ``model`` still works.
    """

    def __init__(self, model: nn.Module, loss: torch.Tensor) -> None:
        self._model, self._loss = model, loss

    def __call__(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        return {"loss": self._loss}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


class TVDLoss:
    """γ-CE as a ``compute_loss_func`` for the stock ``Trainer``: ``Trainer(..., compute_loss_func=TVDLoss(args))``.

    The stock Trainer pops ``labels`` before calling the model and passes ``num_items_in_batch``; this returns
    ``Σ token losses / num_items_in_batch``. How labels line up is read from the model's outputs
    (:func:`~hf_tvd_loss.heads.output_layout`): a causal LM's are shifted, an encoder-decoder's and a classifier's
    are not (an encoder-decoder's collator must then provide ``decoder_input_ids``, e.g.
    ``DataCollatorForSeq2Seq(model=...)``, since the model no longer sees the labels). ``shift_labels=True`` /
    ``False`` says it for outputs of another kind (a custom model's tuple or dict), and is refused where the outputs
    say otherwise. γ schedules need the trainer's step: use :class:`TVDTrainer` for those. Token counting is the
    stock Trainer's (for GPT-2, whose ``loss_type`` is None, it includes the unshifted first label).
    """

    def __init__(
        self,
        tvd_args: TVDArguments | None = None,
        *,
        shift_labels: bool | None = None,
        weight_rule: TokenWeightRule | None = None,
    ) -> None:
        tvd_args = tvd_args if tvd_args is not None else TVDArguments()
        if not isinstance(tvd_args, TVDArguments):
            raise ValueError(f"tvd_args must be a TVDArguments instance, got {type(tvd_args).__name__}")
        tvd_args.validate()  # a field may have changed since the arguments were built
        check_weight_rule(weight_rule, tvd_args)
        if tvd_args.gamma_schedule != "constant":
            raise ValueError(
                "TVDLoss (compute_loss_func) has no access to the training step, so "
                f"TVDArguments.gamma_schedule must be 'constant', got {tvd_args.gamma_schedule!r}; use TVDTrainer"
            )
        if shift_labels not in (None, True, False):
            raise ValueError(
                f"TVDLoss: shift_labels must be None (read from the outputs), True or False, got {shift_labels!r}"
            )
        self.tvd_args = tvd_args
        self.shift_labels = shift_labels
        self._terms = select_token_terms(tvd_args, weight_rule)(tvd_args.gamma)
        self._weight_rule, self._args_seen = weight_rule, repr(tvd_args)

    def _shifts(self, outputs: Any) -> bool:
        layout = output_layout(outputs)
        if layout is None:
            if self.shift_labels is None:
                raise ValueError(
                    f"TVDLoss cannot tell from a {type(outputs).__name__} whether labels are shifted: pass "
                    "shift_labels=True for a causal LM (position t predicts labels[t+1]), False for an "
                    "encoder-decoder or a classifier"
                )
            return self.shift_labels
        if self.shift_labels is not None and self.shift_labels != layout.shifts:
            kind = {"causal": "a causal LM's", "encoder_decoder": "an encoder-decoder's",
                    "classification": "a classifier's"}[layout.kind]  # fmt: skip
            why = ("each position t predicts labels[t+1]" if layout.shifts else
                   "its logits line up with the labels position by position")  # fmt: skip
            raise ValueError(
                f"TVDLoss(shift_labels={self.shift_labels}) got {kind} output ({type(outputs).__name__}): {why}; "
                f"use TVDLoss(..., shift_labels={layout.shifts}), or leave shift_labels unset (read from the outputs)"
            )
        return layout.shifts

    def __call__(
        self, outputs: Any, labels: torch.Tensor, num_items_in_batch: torch.Tensor | int | None = None
    ) -> torch.Tensor:
        if labels is None:
            raise ValueError("TVDLoss needs labels; the batch has none")
        if repr(self.tvd_args) != self._args_seen:  # a field changed since construction: checked and applied again
            self.__init__(self.tvd_args, shift_labels=self.shift_labels, weight_rule=self._weight_rule)  # type: ignore[misc]
        shift = self._shifts(outputs)
        logits = outputs.get("logits") if isinstance(outputs, Mapping) else outputs[0]
        return token_weighted_cross_entropy(
            logits,
            labels,
            self._terms,
            label_smoothing=self.tvd_args.label_smoothing,
            ignore_index=IGNORE_INDEX,
            shift_labels=shift,
            num_items_in_batch=num_items_in_batch,
        )[0]
