"""The output head of a transformers model, and the hidden-state ("chunked") loss run inside it.

One unwrap (:func:`unwrap_model`), one resolver (:func:`resolve_output_head`), and one way to reach the head in
training and evaluation (:func:`loss_in_output_head`): for the length of one forward pass the head's ``forward``
is replaced by a function that computes the loss from its input (the final hidden states) and its own weight, a
chunk of tokens at a time, and returns that loss in place of the ``[batch, seq, vocab]`` logits::

    head = resolve_output_head(model)                  # ValueError naming the reason if it cannot be used
    loss, stats, outputs = loss_in_output_head(model, head, inputs, loss_fn)

Why inside the head's own forward: sharding engines gather a module's parameters just before its forward and
free them right after (FSDP2 ``fully_shard`` with ``reshard_after_forward``, DeepSpeed ZeRO-3), and register their
backward hooks on the module's outputs. Computing the loss there, and back-propagating through the tensor the
head returned, lets the engines gather, reduce and free as for any module; reading ``lm_head.weight`` after the
model's forward fails under both (a sharded DTensor, or a freed ZeRO-3 placeholder). DDP, FSDP1 (also with lm_head
wrapped on its own) and torch.compile'd or PEFT-wrapped models go through the same path: the model's own forward
always runs. Tensor parallelism on lm_head (its weight a DTensor even inside its forward) is refused by name.
Measured engine by engine: ``docs/DISTRIBUTED.md``.

What the model does to the head's output (a bias such as BART's ``final_logits_bias``, Gemma-2/3 soft-capping,
a logit scale) is read from the model and then **checked on the concrete model** at first use
(:func:`verify_output_head`): one forward pass on a few positions of the first batch compares the model's real
logits with what the loss will compute. A model that fails the check is refused with the reason; nothing falls
back silently.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

__all__ = [
    "IGNORE_INDEX",
    "OutputHead",
    "check_gathered",
    "decoder_input_ids_from_labels",
    "LabelLayout",
    "check_trainable_model",
    "has_lm_head",
    "is_encoder_decoder",
    "label_layout",
    "logits_of",
    "loss_in_output_head",
    "model_class_name",
    "output_layout",
    "resolve_output_head",
    "unwrap_model",
    "verify_output_head",
]

IGNORE_INDEX = -100
# Decoder positions of the first batch row used by verify_output_head (a causal prefix: the model's logits on it
# equal those of the full sequence at the same positions).
_VERIFY_POSITIONS = 8
# Batch keys that belong to the loss, not to the model.
_NOT_MODEL_INPUTS = ("labels", "shift_labels", "num_items_in_batch", "loss_weights")
# Per-position inputs of a causal LM (sliced together by verify_output_head).
_CAUSAL_SEQ_KEYS = ("input_ids", "attention_mask", "position_ids", "token_type_ids", "inputs_embeds")
_DECODER_SEQ_KEYS = ("decoder_input_ids", "decoder_attention_mask", "decoder_inputs_embeds", "decoder_position_ids")


# ---------------------------------------------------------------------------------------------- the model
def unwrap_model(model: nn.Module) -> nn.Module:
    """The transformers model inside DDP / DataParallel / DeepSpeed (``.module``), torch.compile (``._orig_mod``)
    and PEFT (``get_base_model()``) wrappers. FSDP2 shards in place (same object, class renamed ``FSDP<Class>``),
    so it needs no unwrapping."""
    for _ in range(8):  # wrappers nest only a few levels deep
        if isinstance(getattr(model, "module", None), nn.Module):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        elif hasattr(model, "peft_config") and callable(getattr(model, "get_base_model", None)):
            model = model.get_base_model()
        else:
            break
    return model


def model_class_name(model: nn.Module) -> str:
    """The class name users know: ``LlamaForCausalLM`` also for FSDP2's renamed ``FSDPLlamaForCausalLM``."""
    cls = type(model)
    if cls.__name__.startswith("FSDP") and len(cls.__bases__) >= 2:
        return cls.__bases__[-1].__name__
    return cls.__name__


def is_encoder_decoder(model: nn.Module) -> bool:
    return bool(getattr(getattr(unwrap_model(model), "config", None), "is_encoder_decoder", False))


def decoder_input_ids_from_labels(model: nn.Module, labels: torch.Tensor) -> torch.Tensor:
    """Right-shifted decoder inputs for an encoder-decoder model, as its own loss path would build them."""
    base = unwrap_model(model)
    prepare = getattr(base, "prepare_decoder_input_ids_from_labels", None)
    if callable(prepare):
        return prepare(labels=labels)
    config = base.config
    start = getattr(config, "decoder_start_token_id", None)
    pad = getattr(config, "pad_token_id", None)
    if start is None or pad is None:
        raise ValueError(
            f"{model_class_name(base)} has no prepare_decoder_input_ids_from_labels and its config lacks "
            "decoder_start_token_id/pad_token_id: pass decoder_input_ids in the batch (e.g. with "
            "DataCollatorForSeq2Seq(model=...))."
        )
    shifted = labels.new_full(labels.shape, pad)
    shifted[..., 1:] = labels[..., :-1]
    shifted[..., 0] = start
    return shifted.masked_fill_(shifted == IGNORE_INDEX, pad)


LayoutKind = Literal["causal", "encoder_decoder", "masked", "classification"]


@dataclass(frozen=True)
class LabelLayout:
    """How a model's labels line up with its outputs: the one place that decides it.

    * ``causal``: a causal LM's position t predicts ``labels[t+1]`` (the loss shifts, and the first label of a row is
      never scored).
    * ``encoder_decoder``: a decoder position t predicts ``labels[t]``, and the decoder inputs are the labels shifted
      right (built here when the batch has none).
    * ``masked``: a masked LM (``BertForMaskedLM``, ...): position t predicts ``labels[t]`` (-100 where not masked),
      no shift.
    * ``classification``: the model's ``logits`` score classes for labels of the same leading shape, no shift:
      sequence classification and multiple choice (``[B, C]`` for ``[B]``), token classification (``[B, T, C]`` for
      ``[B, T]``), image and audio classification. Any model without a language-modelling head whose forward takes
      ``labels`` is one (``BartForSequenceClassification`` too, although its config is an encoder-decoder's).

    A batch's own ``shift_labels`` (padding-free collators) are already aligned with the positions: they are the
    targets, unshifted, whatever the model.
    """

    kind: LayoutKind

    @property
    def encoder_decoder(self) -> bool:
        return self.kind == "encoder_decoder"

    @property
    def classification(self) -> bool:
        return self.kind == "classification"

    @property
    def shifts(self) -> bool:
        """Whether ``labels`` are shifted inside the loss (causal LMs)."""
        return self.kind == "causal"

    def targets(self, labels: torch.Tensor | None, shift_labels: torch.Tensor | None) -> tuple[torch.Tensor, bool]:
        """The loss's targets and whether it shifts them."""
        if shift_labels is not None:
            if self.classification:
                raise ValueError(
                    "the batch has shift_labels (a padding-free language-modelling collator), but the model is a "
                    "classifier, whose labels are not shifted: collate its batches with `labels` only"
                )
            return shift_labels, False
        assert labels is not None
        return labels, self.shifts

    def model_inputs(self, model: nn.Module, inputs: dict[str, Any], labels: torch.Tensor | None) -> dict[str, Any]:
        """``inputs`` with an encoder-decoder's ``decoder_input_ids`` built from ``labels`` when it has none."""
        if (
            self.encoder_decoder
            and labels is not None
            and not ({"decoder_input_ids", "decoder_inputs_embeds"} & set(inputs))
        ):
            inputs = {**inputs, "decoder_input_ids": decoder_input_ids_from_labels(model, labels)}
        return inputs


def output_layout(outputs: Any) -> LabelLayout | None:
    """The layout a model's outputs reveal, for losses that see the outputs and not the model
    (``Trainer(compute_loss_func=...)``): transformers' encoder-decoder outputs (``Seq2Seq*Output``, or any with
    encoder states), causal-LM outputs (``*CausalLM*Output*``), masked-LM outputs (``MaskedLMOutput``) and classifier outputs (``*ClassifierOutput*``,
    ``MultipleChoiceModelOutput``). None for any other output (a tuple, a dict of a custom model)."""
    name = type(outputs).__name__
    if name.startswith("Seq2Seq") or (
        isinstance(outputs, Mapping) and outputs.get("encoder_last_hidden_state") is not None
    ):
        return LabelLayout("encoder_decoder")
    if "CausalLM" in name:
        return LabelLayout("causal")
    if "MaskedLM" in name:
        return LabelLayout("masked")
    if "Classifier" in name or "MultipleChoice" in name:
        return LabelLayout("classification")
    return None


def has_lm_head(model: nn.Module) -> bool:
    """Whether the (unwrapped) model has a language-modelling head (an output embedding, or an ``lm_head``)."""
    base = unwrap_model(model)
    getter = getattr(base, "get_output_embeddings", None)
    head = getter() if callable(getter) else None
    return head is not None or isinstance(getattr(base, "lm_head", None), nn.Module)


def _forward_takes_labels(model: nn.Module) -> bool:
    """Whether the model class's forward takes ``labels`` (the class's: an instance may have its forward wrapped)."""
    try:
        return "labels" in inspect.signature(type(model).forward).parameters
    except (TypeError, ValueError):  # a forward without a signature: a wrapper; let the batch decide
        return True


def _is_masked_lm(model: nn.Module) -> bool:
    """Whether transformers lists the model's class as a masked LM only (``AutoModelForMaskedLM``, not causal)."""
    try:
        from transformers.models.auto.modeling_auto import (
            MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
            MODEL_FOR_MASKED_LM_MAPPING_NAMES,
        )
    except ImportError:  # pure-torch use without transformers: no transformers model to classify
        return False
    name = model_class_name(model)
    return name in set(MODEL_FOR_MASKED_LM_MAPPING_NAMES.values()) - set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())


def label_layout(model: nn.Module) -> LabelLayout:
    base = unwrap_model(model)
    if not has_lm_head(base) and _forward_takes_labels(base):
        return LabelLayout("classification")
    if is_encoder_decoder(base):
        return LabelLayout("encoder_decoder")
    return LabelLayout("masked" if _is_masked_lm(base) else "causal")


def check_trainable_model(model: nn.Module) -> None:
    """``ValueError`` naming the reason when a model cannot be trained with γ-CE: no language-modelling head and no
    classification ``logits`` (a bare backbone such as ``GPT2Model``), or a classifier whose head is not a softmax
    over classes (regression, multi-label)."""
    base = unwrap_model(model)
    name = model_class_name(base)
    if has_lm_head(base):
        return
    if not _forward_takes_labels(base):
        raise ValueError(
            f"{name} has neither a language-modelling head (get_output_embeddings() is None) nor a classification "
            "head (its forward takes no labels), so it returns no logits to train with γ-CE; load it with "
            "AutoModelForCausalLM, AutoModelForSeq2SeqLM or an AutoModelFor...Classification class"
        )
    config = getattr(base, "config", None)
    problem = getattr(config, "problem_type", None)
    num_labels = getattr(config, "num_labels", None)
    if problem == "regression" or (problem is None and num_labels == 1):
        raise ValueError(
            f"{name} is a regression model (problem_type={problem!r}, num_labels={num_labels}): γ-CE is a loss over "
            "the classes of a softmax, and a single regression output has none; train it with the stock Trainer, "
            "or give it num_labels >= 2 classes"
        )
    if problem == "multi_label_classification":
        raise ValueError(
            f"{name} is a multi-label classifier (problem_type='multi_label_classification', one sigmoid per "
            "label): γ-CE weights the probability of the one true class of a softmax, which such a model does not "
            "have; train it with the stock Trainer, or as single-label (problem_type='single_label_classification')"
        )


def logits_of(outputs: Any, model: nn.Module) -> torch.Tensor:
    """The logits of a model's outputs (a ModelOutput, a dict or a tuple), or a ValueError naming the model."""
    logits = outputs.get("logits") if isinstance(outputs, Mapping) else outputs[0]
    if not torch.is_tensor(logits):
        raise ValueError(
            f"{model_class_name(unwrap_model(model))} returned no logits; γ-CE needs a language-modelling head "
            "(e.g. AutoModelForCausalLM or AutoModelForSeq2SeqLM)."
        )
    return logits


# ---------------------------------------------------------------------------------------------- the head
@dataclass
class OutputHead:
    """How a model turns its final hidden states into logits: ``softcap(scale · (hidden @ W.T + b) + bias_after)``.

    Attributes:
        module: the module returned by ``get_output_embeddings()`` (its forward is replaced during the loss).
        bias_after: ``[V]`` or ``[1, V]`` added by the model after the head (BART/Marian ``final_logits_bias``).
        logit_scale: factor the model applies to the logits after the head (``config.logit_scale``), else 1.
        final_logit_softcapping: ``cap`` in ``cap · tanh(logits / cap)`` (Gemma 2/3), or None.
        shift_labels: True for causal LMs (position t predicts ``labels[t+1]``), False for encoder-decoders.
        model_class: class name of the (unwrapped) model, for messages.
    """

    module: nn.Module
    bias_after: torch.Tensor | None
    logit_scale: float
    final_logit_softcapping: float | None
    shift_labels: bool
    model_class: str
    verified: bool = False

    def linear(self) -> nn.Linear:
        """The ``nn.Linear`` that computes the logits now (PEFT ``modules_to_save``: the active trained copy)."""
        return _effective_linear(self.module)


def _effective_linear(module: nn.Module) -> nn.Linear:
    copies = getattr(module, "modules_to_save", None)
    if isinstance(copies, nn.ModuleDict) and isinstance(getattr(module, "original_module", None), nn.Module):
        active = list(getattr(module, "active_adapters", []) or [])
        if getattr(module, "disable_adapters", False) or not active or any(a not in copies for a in active):
            return module.original_module
        if len(active) > 1:
            raise ValueError(
                f"output head with several active PEFT adapters {active}: not supported by the chunked loss"
            )
        return copies[active[0]]
    return module  # type: ignore[return-value]


def _head_problem(module: nn.Module | None, name: str) -> str | None:
    if module is None:
        return f"{name} has no output embedding (get_output_embeddings() is None): it is not a language model"
    if hasattr(module, "lora_A") or hasattr(module, "base_layer"):
        return (
            f"{name}: its output head is a PEFT adapter layer ({type(module).__name__}, e.g. LoRA on lm_head), whose "
            "output base(x) + B(A(dropout(x)))·s is not a single weight the chunked loss can use; train with "
            "loss_impl='logits', or leave lm_head out of target_modules (modules_to_save=['lm_head'] works)"
        )
    try:
        linear = _effective_linear(module)
    except ValueError as exc:
        return f"{name}: {exc}"
    if not isinstance(linear, nn.Linear) or type(linear).forward is not nn.Linear.forward:
        return (
            f"{name}: its output head is a {type(linear).__name__}, not a plain torch.nn.Linear, so its weight alone "
            "does not give the logits"
        )
    return None


def resolve_output_head(model: nn.Module) -> OutputHead:
    """The output head of a (possibly wrapped) transformers model; ``ValueError`` naming the reason otherwise."""
    base = unwrap_model(model)
    name = model_class_name(base)
    config = getattr(base, "config", None)
    if getattr(base, "hf_quantizer", None) is not None or getattr(config, "quantization_config", None):
        raise ValueError(
            f"{name}: quantized models store lm_head in a packed format that the chunked loss cannot read"
        )
    getter = getattr(base, "get_output_embeddings", None)
    module = getter() if callable(getter) else None
    # FSDP1 (FullyShardedDataParallel) wrapping lm_head as its own unit: replace the forward of the Linear inside,
    # which the wrapper calls once it has gathered the weight.
    inner = getattr(module, "_fsdp_wrapped_module", None)
    if isinstance(inner, nn.Module):
        module = inner
    problem = _head_problem(module, name)
    if problem is not None:
        raise ValueError(problem)
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    softcap = getattr(text_config, "final_logit_softcapping", None)
    scale = getattr(text_config, "logit_scale", None)
    bias_after = getattr(base, "final_logits_bias", None)
    return OutputHead(
        module=module,  # type: ignore[arg-type]
        bias_after=bias_after if torch.is_tensor(bias_after) else None,
        logit_scale=float(scale) if isinstance(scale, (int, float)) and not isinstance(scale, bool) else 1.0,
        final_logit_softcapping=float(softcap) if softcap else None,
        shift_labels=label_layout(model).shifts,
        model_class=name,
    )


def _postprocess(head: OutputHead, z: torch.Tensor) -> torch.Tensor:
    """What the model does to the head's output ``z``, per :class:`OutputHead` (fp32)."""
    logits = z.float()
    if head.bias_after is not None:
        logits = logits + head.bias_after.float()
    logits = logits * head.logit_scale
    if head.final_logit_softcapping is not None:
        cap = head.final_logit_softcapping
        logits = cap * torch.tanh(logits / cap)
    return logits


def _is_dtensor(t: Any) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # torch without distributed
        return False
    return isinstance(t, DTensor)


def check_gathered(head: OutputHead, hidden: torch.Tensor, linear: nn.Linear) -> None:
    """``ValueError`` if, inside the head's forward, its weight or input is still a distributed tensor.

    FSDP2, FSDP1 and ZeRO-3 hand the head its whole weight while it runs; tensor parallelism (``tp_plan``,
    ``parallelize_module`` on lm_head) keeps it a DTensor sharded over the vocabulary, which the chunked loss,
    computing a softmax over the whole vocabulary on each process, cannot use.
    """
    for what, t in (("weight", linear.weight), ("input", hidden)):
        if _is_dtensor(t):
            raise ValueError(
                f"{head.model_class}: inside its forward the output head's {what} is a DTensor (placements "
                f"{tuple(t.placements)}): tensor parallelism on lm_head is not supported by the chunked loss, which "
                "needs the whole vocabulary on each process; use loss_impl='logits' (or leave lm_head out of the "
                "tensor-parallel plan)"
            )


def loss_arguments(head: OutputHead, linear: nn.Linear) -> dict[str, Any]:
    """``weight`` / ``bias`` / ``logit_scale`` / ``final_logit_softcapping`` for :mod:`hf_tvd_loss.ops.linear`.

    Call inside the head's forward (where engines have the parameters gathered). With a logit scale s the logits
    are ``s · (W h + b) = W (s h) + s b``.
    """
    bias = linear.bias
    if head.bias_after is not None:
        after = head.bias_after.reshape(-1).to(linear.weight.dtype)
        bias = after if bias is None else bias + after
    if bias is not None and head.logit_scale != 1.0:
        bias = bias * head.logit_scale
    return {
        "weight": linear.weight,
        "bias": bias,
        "logit_scale": head.logit_scale,
        "final_logit_softcapping": head.final_logit_softcapping,
    }


# ---------------------------------------------------------------------------------------------- replacing forward
class _HeadForward:
    """Replaces ``module.forward`` (an instance attribute shadows the class method; engine hooks stay in place)
    and records what the module's ``__call__`` returned after every hook (DeepSpeed wraps outputs there)."""

    def __init__(self, module: nn.Module, forward: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.module, self.forward = module, forward
        self.calls = 0
        self.output: torch.Tensor | None = None

    def __enter__(self) -> _HeadForward:
        if "forward" in self.module.__dict__:
            raise RuntimeError(f"{type(self.module).__name__}.forward is already replaced (nested chunked loss?)")

        def forward(hidden: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
            self.calls += 1
            return self.forward(hidden)

        def record(_module: nn.Module, _args: Any, output: Any) -> None:
            self.output = output

        self.module.forward = forward  # type: ignore[method-assign]
        self._handle = self.module.register_forward_hook(record)  # registered last: sees the final output
        return self

    def __exit__(self, *exc: Any) -> None:
        self._handle.remove()
        del self.module.forward


def _model_inputs(batch: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in batch.items() if k not in _NOT_MODEL_INPUTS}


def loss_in_output_head(
    model: nn.Module,
    head: OutputHead,
    inputs: Mapping[str, Any],
    loss_fn: Callable[..., tuple[torch.Tensor, Any]],
) -> tuple[torch.Tensor, Any, Any]:
    """Run ``model(**inputs)`` with the loss computed inside the output head's forward.

    ``loss_fn(hidden, weight=..., bias=..., logit_scale=..., final_logit_softcapping=...)`` gets the head's input
    ``[B, T, d]`` and the head's parameters (gathered by whatever engine shards them) and returns
    ``(0-dim loss, stats)``; see :func:`hf_tvd_loss.ops.linear_token_weighted_cross_entropy`. ``inputs`` are the
    model's inputs (labels removed; encoder-decoders need ``decoder_input_ids``).

    Returns ``(loss, stats, outputs)``: the loss is taken from the tensor the head returned (so every engine hook
    on it fires in backward), and the model's outputs are kept in its graph with a zero factor (so hooks a root
    module registered on them fire too). ``outputs.logits`` is a placeholder, not logits.
    """
    stats: list[Any] = []

    def forward(hidden: torch.Tensor) -> torch.Tensor:
        linear = head.linear()
        check_gathered(head, hidden, linear)
        loss, loss_stats = loss_fn(hidden, **loss_arguments(head, linear))
        stats.append(loss_stats)
        # "Logits" of one position and one class, so the model's post-processing is cheap. A copy, not a view:
        # FSDP2 registers its pre-backward hook on the tensor a unit returns, and an in-place op on a view would
        # drop it.
        return loss.reshape(1, 1, 1).clone()

    with _HeadForward(head.module, forward) as replaced:
        outputs = model(**_model_inputs(inputs))
    if replaced.calls != 1 or replaced.output is None:
        raise RuntimeError(
            f"{head.model_class}: the output head ran {replaced.calls} times in one forward pass (expected once); "
            "the chunked loss cannot be used with this model: use loss_impl='logits'"
        )
    loss = replaced.output.reshape(())
    logits = outputs.get("logits") if isinstance(outputs, Mapping) else None
    if torch.is_tensor(logits) and logits.requires_grad:
        loss = loss + 0.0 * logits.sum()
    return loss, stats[0], outputs


# ---------------------------------------------------------------------------------------------- first-use check
def _verification_inputs(model: nn.Module, inputs: Mapping[str, Any], shift_labels: bool) -> dict[str, Any]:
    """The first row of the batch, cut to its first positions (decoder positions for encoder-decoders)."""
    small: dict[str, Any] = {}
    seq_keys = _CAUSAL_SEQ_KEYS if shift_labels else _DECODER_SEQ_KEYS
    for key, value in _model_inputs(inputs).items():
        if torch.is_tensor(value) and value.dim() >= 1 and value.shape[0] >= 1 and key != "cache_position":
            value = value[:1]
            if key in seq_keys and value.dim() >= 2:
                value = value[:, :_VERIFY_POSITIONS]
        small[key] = value
    return small


def verify_output_head(model: nn.Module, head: OutputHead, inputs: Mapping[str, Any]) -> None:
    """Check on this model that ``postprocess(head(hidden))`` reproduces its logits; ``ValueError`` if not.

    One forward pass without gradients on the first row of ``inputs`` (a few positions): inside the head the
    normal output is kept, and after the model returns, its logits are compared with what the chunked loss
    computes from that output. Dropout does not matter (both come from the same pass). Every process of a
    distributed run must call this at the same point (the forward is collective under FSDP/ZeRO-3).
    """
    kept: list[torch.Tensor] = []

    def forward(hidden: torch.Tensor) -> torch.Tensor:
        linear = head.linear()
        check_gathered(head, hidden, linear)
        z = nn.functional.linear(hidden, linear.weight, linear.bias)
        kept.append(z.detach())
        return z

    small = _verification_inputs(model, inputs, head.shift_labels)
    with torch.no_grad(), _HeadForward(head.module, forward) as replaced:
        outputs = model(**small)
    if replaced.calls != 1:
        raise ValueError(
            f"{head.model_class}: its output head ran {replaced.calls} times in one forward pass (expected once), "
            "so the chunked loss cannot replace it; use loss_impl='logits'"
        )
    logits = logits_of(outputs, model).float()
    ours = _postprocess(head, kept[0])
    if ours.shape != logits.shape:
        raise ValueError(
            f"{head.model_class}: the model's logits {tuple(logits.shape)} are not the output head's output "
            f"{tuple(ours.shape)} position by position; the chunked loss cannot be used (loss_impl='logits')"
        )
    low_precision = kept[0].dtype in (torch.float16, torch.bfloat16)
    tolerance = (2e-2 if low_precision else 1e-4) * max(1.0, float(logits.abs().max()))
    error = float((ours - logits).abs().max())
    if not math.isfinite(error) or error > tolerance:
        raise ValueError(
            f"{head.model_class}: its logits differ from softcap(scale · lm_head(hidden) + bias) by {error:.3g} "
            f"(tolerance {tolerance:.3g}): the model transforms the head's output in a way the chunked loss does "
            "not reproduce; use loss_impl='logits'"
        )
    head.verified = True
