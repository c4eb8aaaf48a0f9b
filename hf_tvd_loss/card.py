"""The loss settings in a model card: one text and one metadata record, for the trainers' ``create_model_card`` (and
so ``push_to_hub``) and for the scripts' own card.

A model trained with γ-CE is not a cross-entropy model with another number: whoever loads it from the Hub should
see which loss made it, with γ, b, ε and the γ schedule, in the card's text and in its YAML metadata
(``hf_tvd_loss:`` beside the standard ``tags``), where a search or a script can read them.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .args import TVDArguments
    from .ops.common import TokenWeightRule

__all__ = ["CARD_TAGS", "add_loss_to_model_card", "card_path", "loss_metadata", "loss_name", "loss_section"]

CARD_TAGS = ("hf_tvd_loss", "tailr")
_SECTION = "## Loss (hf_tvd_loss)"


def loss_name(tvd: TVDArguments) -> str:
    """The loss in words: γ-CE, the cross-entropy baseline (γ = 0 throughout), the focal or the GCE baseline."""
    if tvd.loss_type == "focal":
        return f"token-level focal loss (baseline; focal_gamma={tvd.focal_gamma}, focal_alpha={tvd.focal_alpha})"
    if tvd.loss_type == "gce":
        return f"generalized cross-entropy (baseline, Zhang & Sabuncu 2018; gce_q={tvd.gce_q})"
    if tvd.gamma == 0 and tvd.gamma_schedule == "constant":
        return "cross-entropy (γ = 0: the MLE baseline)"
    return "token-level γ-cross-entropy (TaiLr)"


def schedule_text(tvd: TVDArguments) -> str:
    if tvd.gamma_schedule == "constant":
        return "constant"
    length = f"steps {tvd.gamma_schedule_steps}" if tvd.gamma_schedule_steps else f"ratio {tvd.gamma_schedule_ratio}"
    return f"{tvd.gamma_schedule} from {tvd.gamma_start} to {tvd.gamma} ({length} of training)"


def loss_metadata(tvd: TVDArguments, rule: TokenWeightRule | None = None) -> dict[str, Any]:
    """The settings that define the objective (not how it is computed: ``loss_impl``, backends, logging); with a
    custom weight ``rule``, its name instead of the γ / focal settings it replaces."""
    meta: dict[str, Any] = {"loss_type": tvd.loss_type, "label_smoothing": tvd.label_smoothing,
                            "normalization": tvd.normalization}  # fmt: skip
    if rule is not None:
        meta.update(loss_type="custom_weight_rule", weight_rule=rule.name or "custom")
    elif tvd.loss_type == "focal":
        meta.update(focal_gamma=tvd.focal_gamma, focal_alpha=tvd.focal_alpha)
    elif tvd.loss_type == "gce":
        meta.update(gce_q=tvd.gce_q)
    else:
        meta.update(gamma=tvd.gamma, min_weight=tvd.min_weight, gamma_schedule=tvd.gamma_schedule)
        if tvd.gamma_schedule != "constant":
            meta.update(gamma_start=tvd.gamma_start, gamma_schedule_ratio=tvd.gamma_schedule_ratio,
                        gamma_schedule_steps=tvd.gamma_schedule_steps)  # fmt: skip
    return meta


def loss_section(tvd: TVDArguments, rule: TokenWeightRule | None = None) -> list[str]:
    """The card's loss section: what the loss is, the formula, and a table of its settings."""
    focal, gce = tvd.loss_type == "focal", tvd.loss_type == "gce"
    if rule is not None:
        return [
            _SECTION, "",
            f"Trained with a token-weighted cross-entropy whose per-token weight rule is `{rule.name or 'custom'}` "
            "(`hf_tvd_loss.TokenWeightRule`): per target (a token, or a classifier's class label) with probability p, "
            "`loss = (1-ε)·w(p)·(-log p) + (ε/V)·Σ_v(-log p_v)`.", "",
            "| setting | value |", "|---|---|",
            f"| weight rule | {rule.name or 'custom'} |",
            f"| ε (label_smoothing) | {tvd.label_smoothing} |",
            f"| normalization | {tvd.normalization} |", "",
        ]  # fmt: skip
    return [
        _SECTION,
        "",
        f"Trained with {loss_name(tvd)}. Token-level γ-cross-entropy is from TaiLr (Ji et al., *Tailoring Language "
        "Generation Models under Total Variation Distance*, ICLR 2023), as implemented by `hf_tvd_loss`: per target "
        "(a token, or a classifier's class label) with probability p, `loss = (1-ε)·w·(-log p) + (ε/V)·Σ_v(-log p_v)` with "
        "`w = clamp(p / (γ + (1-γ)p), b, 1)` (no gradient through w); γ = 0 is cross-entropy."
        + (" This model used the focal-loss baseline instead (γ and b unused)." if focal else "")
        + (
            " This model used generalized cross-entropy instead (γ and b unused): "
            "`loss = (1-ε)·(1 - p^q)/q + (ε/V)·Σ_v(-log p_v)`."
            if gce
            else ""
        ),
        "",
        "| setting | value |",
        "|---|---|",
        f"| γ (gamma) | {tvd.gamma} |",
        f"| b (min_weight) | {tvd.min_weight} |",
        f"| ε (label_smoothing) | {tvd.label_smoothing} |",
        f"| γ schedule | {schedule_text(tvd)} |",
        f"| normalization | {tvd.normalization} |",
        *([f"| focal_gamma, focal_alpha | {tvd.focal_gamma}, {tvd.focal_alpha} |"] if focal else []),
        *([f"| q (gce_q) | {tvd.gce_q} |"] if gce else []),
        "",
    ]


def add_loss_to_model_card(path: str, tvd: TVDArguments, rule: TokenWeightRule | None = None) -> None:
    """Add the loss to the model card at ``path`` (the stock Trainer's or TRL's): the tags, the ``hf_tvd_loss``
    metadata and the loss section, placed before the card's training section (or at its end). Idempotent."""
    from huggingface_hub import ModelCard

    card = ModelCard.load(path)
    tags = list(card.data.tags or [])
    card.data.tags = tags + [tag for tag in CARD_TAGS if tag not in tags]
    card.data.hf_tvd_loss = loss_metadata(tvd, rule)
    text = card.text
    if _SECTION in text:  # written before: replace it
        start = text.index(_SECTION)
        end = text.find("\n## ", start + len(_SECTION))
        text = text[:start] + (text[end + 1 :] if end >= 0 else "")
    section = "\n".join(loss_section(tvd, rule)) + "\n"
    at = next((text.index(h) for h in ("## Training procedure", "## Training details") if h in text), -1)
    card.text = text[:at] + section + text[at:] if at >= 0 else text.rstrip("\n") + "\n\n" + section
    card.save(path)


def card_path(output_dir: str) -> str:
    return os.path.join(output_dir, "README.md")
