"""Find a transformers model's output head, so the loss can run on hidden states without full logits.

:func:`resolve_output_head` returns an :class:`OutputHead`: the ``lm_head`` weight ``[V, d]``, an optional
bias (BART/Marian ``final_logits_bias``), the scale applied to the hidden states before the projection (T5
with tied embeddings: ``d_model**-0.5``), Gemma-2's ``final_logit_softcapping``, whether labels are shifted
(causal LMs), and a function that computes the final hidden states from a training batch without calling
the head. Together with :func:`hf_tvd_loss.linear_loss.linear_gamma_cross_entropy` this reproduces the
model's own logits-based loss::

    head = resolve_output_head(model)
    if head is not None:
        hidden = head.hidden_states(batch)                                     # [B, T, d]
        loss = linear_gamma_cross_entropy(hidden, head.weight, batch["labels"], gamma=0.1, **head.loss_kwargs())

Only architectures whose ``forward`` was read and checked against their real logits are accepted (the
class names in :data:`SUPPORTED_CLASSES`); anything else gets ``None`` and a reason from
:func:`resolve_output_head_with_reason`, so the caller can fall back to the logits path.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = ["SUPPORTED_CLASSES", "OutputHead", "resolve_output_head", "resolve_output_head_with_reason"]

# Decoder-only models whose forward is ``lm_head(base_model(...).last_hidden_state)`` (+ softcapping for Gemma 2).
_CAUSAL = (
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen3ForCausalLM",
    "GemmaForCausalLM",
    "Gemma2ForCausalLM",
    "GPT2LMHeadModel",
)
# Encoder-decoders whose forward is ``lm_head(model.model(...)[0]) + final_logits_bias``.
_BART_LIKE = ("BartForConditionalGeneration", "MarianMTModel")
_T5_LIKE = ("T5ForConditionalGeneration",)
SUPPORTED_CLASSES: tuple[str, ...] = _CAUSAL + _BART_LIKE + _T5_LIKE

# Batch keys that belong to the loss, not to the base model.
_NOT_MODEL_INPUTS = ("labels", "num_items_in_batch", "logits_to_keep", "return_dict", "return_loss")


@dataclass
class OutputHead:
    """How a model turns hidden states into logits: ``softcap((logit_scale · hidden) @ weight.T + bias)``.

    Attributes:
        weight: ``[V, d]`` output embedding (``lm_head.weight``; tied to the input embedding where the model ties).
        bias: ``[1, V]`` or ``[V]`` added to the logits (BART/Marian ``final_logits_bias``), or None.
        logit_scale: factor applied to the hidden states before the projection (1.0 unless T5 rescales).
        final_logit_softcapping: Gemma-2's ``cap`` in ``cap · tanh(logits / cap)``, or None.
        shift_labels: True for causal LMs (position t predicts ``labels[t+1]``), False for encoder-decoders.
        hidden_states: ``fn(batch) -> [B, T, d]`` final hidden states (after the final norm), computed without
            the head. ``batch`` is the training batch (``input_ids``, ``attention_mask``, ``labels``, ...);
            encoder-decoders build ``decoder_input_ids`` from ``labels`` as the model itself does.
        model_class: class name of the (unwrapped) model.
    """

    weight: torch.Tensor
    bias: torch.Tensor | None
    logit_scale: float
    final_logit_softcapping: float | None
    shift_labels: bool
    hidden_states: Callable[[Mapping[str, Any]], torch.Tensor]
    model_class: str

    def loss_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for :func:`~hf_tvd_loss.linear_loss.linear_gamma_cross_entropy` describing this head."""
        return {
            "bias": self.bias,
            "logit_scale": self.logit_scale,
            "final_logit_softcapping": self.final_logit_softcapping,
            "shift_labels": self.shift_labels,
        }


def _model_inputs(batch: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in batch.items() if k not in _NOT_MODEL_INPUTS}


def _decoder_input_ids(model: nn.Module, batch: Mapping[str, Any]) -> dict[str, Any]:
    inputs = _model_inputs(batch)
    if inputs.get("decoder_input_ids") is None and inputs.get("decoder_inputs_embeds") is None:
        labels = batch.get("labels")
        if labels is None:
            raise ValueError(
                f"{type(model).__name__}: the batch has neither decoder_input_ids nor labels to build them from"
            )
        inputs["decoder_input_ids"] = model.prepare_decoder_input_ids_from_labels(labels=labels)
    return inputs


def _causal_hidden(model: nn.Module) -> Callable[[Mapping[str, Any]], torch.Tensor]:
    base = model.base_model  # LlamaModel, GPT2Model, ...: everything up to and including the final norm

    def hidden_states(batch: Mapping[str, Any]) -> torch.Tensor:
        inputs = _model_inputs(batch)
        inputs.setdefault("use_cache", False)  # a KV cache is useless in training and costs memory
        return base(**inputs).last_hidden_state

    return hidden_states


def _bart_hidden(model: nn.Module) -> Callable[[Mapping[str, Any]], torch.Tensor]:
    def hidden_states(batch: Mapping[str, Any]) -> torch.Tensor:
        inputs = _decoder_input_ids(model, batch)
        inputs.setdefault("use_cache", False)
        return model.model(**inputs).last_hidden_state

    return hidden_states


def _t5_hidden(model: nn.Module) -> Callable[[Mapping[str, Any]], torch.Tensor]:
    # T5ForConditionalGeneration.forward, without the lm_head (and without the output scaling, which the
    # OutputHead's logit_scale carries).
    def hidden_states(batch: Mapping[str, Any]) -> torch.Tensor:
        inputs = _decoder_input_ids(model, batch)
        encoder_outputs = inputs.get("encoder_outputs")
        if encoder_outputs is None:
            encoder_outputs = model.encoder(
                input_ids=inputs.get("input_ids"),
                attention_mask=inputs.get("attention_mask"),
                inputs_embeds=inputs.get("inputs_embeds"),
            )
        return model.decoder(
            input_ids=inputs.get("decoder_input_ids"),
            attention_mask=inputs.get("decoder_attention_mask"),
            inputs_embeds=inputs.get("decoder_inputs_embeds"),
            encoder_hidden_states=encoder_outputs[0],
            encoder_attention_mask=inputs.get("attention_mask"),
            use_cache=False,
        ).last_hidden_state

    return hidden_states


def _unwrap(model: nn.Module) -> tuple[nn.Module | None, str | None]:
    """Strip torch.compile and PEFT wrappers; refuse DataParallel/DDP (see the reason string)."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            return None, (
                f"{type(model).__name__} wraps {type(model.module).__name__}: hidden states computed through the "
                "wrapped model's submodules would bypass the wrapper's forward, and DDP then does not all-reduce "
                "the gradients; use the logits path (or a kernel that patches the model's forward)"
            )
        if hasattr(model, "_orig_mod") and type(model).__name__ == "OptimizedModule":
            model = model._orig_mod
            continue
        if hasattr(model, "get_base_model") and hasattr(model, "peft_config"):
            config = getattr(model, "active_peft_config", None)
            if config is not None and getattr(config, "is_prompt_learning", False):
                return None, (
                    f"{type(model).__name__} uses prompt learning ({type(config).__name__}): its forward adds "
                    "virtual tokens that the base model alone does not see"
                )
            model = model.get_base_model()
            continue
        return model, None


def resolve_output_head_with_reason(model: nn.Module) -> tuple[OutputHead | None, str | None]:
    """:func:`resolve_output_head`, plus the reason (naming the model class) when it returns None."""
    inner, reason = _unwrap(model)
    if inner is None:
        return None, reason
    name = type(inner).__name__
    if name not in SUPPORTED_CLASSES:
        return None, (
            f"{name}: not one of the architectures whose output head was checked against its logits "
            f"({', '.join(SUPPORTED_CLASSES)})"
        )
    config = inner.config
    if getattr(inner, "hf_quantizer", None) is not None or getattr(config, "quantization_config", None):
        return None, f"{name}: quantized models store lm_head in a packed format that the fused loss cannot read"
    head = inner.get_output_embeddings()
    if type(head) is not nn.Linear:
        return None, (
            f"{name}: its output embedding is a {type(head).__name__}, not a plain torch.nn.Linear (e.g. an "
            "adapter or modules_to_save wrapper on lm_head), so its weight alone does not give the logits"
        )
    if head.bias is not None:
        return None, f"{name}: lm_head has a bias, which none of the checked architectures has"
    weight = head.weight
    bias = None
    logit_scale = 1.0
    softcap = None
    if name in _CAUSAL:
        hidden_fn = _causal_hidden(inner)
        shift = True
        softcap = getattr(config, "final_logit_softcapping", None) if name == "Gemma2ForCausalLM" else None
    elif name in _BART_LIKE:
        hidden_fn = _bart_hidden(inner)
        shift = False
        bias = inner.final_logits_bias
    else:
        hidden_fn = _t5_hidden(inner)
        shift = False
        # transformers 5.x: T5Config.scale_decoder_outputs (set from tie_word_embeddings); older: tie_word_embeddings.
        if getattr(config, "scale_decoder_outputs", getattr(config, "tie_word_embeddings", True)):
            logit_scale = inner.model_dim**-0.5
    return (
        OutputHead(
            weight=weight,
            bias=bias,
            logit_scale=logit_scale,
            final_logit_softcapping=softcap,
            shift_labels=shift,
            hidden_states=hidden_fn,
            model_class=name,
        ),
        None,
    )


def resolve_output_head(model: nn.Module) -> OutputHead | None:
    """The output head of a transformers model (PEFT and torch.compile wrappers are unwrapped), or None.

    None means the model is not one of :data:`SUPPORTED_CLASSES`, is quantized, has an adapter or wrapper on
    ``lm_head``, uses PEFT prompt learning, or is wrapped in DataParallel/DDP (whose forward must not be
    bypassed); :func:`resolve_output_head_with_reason` says which.
    """
    return resolve_output_head_with_reason(model)[0]
