"""Pieces shared by the logits path (:mod:`.logits`) and the hidden-state path (:mod:`.linear`).

Everything here is pure PyTorch and works on flat ``[N]`` per-token tensors or ``[n, V]`` chunks of logits:

* option checks (:func:`check_number` and the two hyperparameter validators built on it);
* the per-token weight rule of each loss (:class:`TokenWeightRule`, built by :func:`gamma_terms`,
  :func:`focal_terms` and :func:`gce_terms`), selected once by the caller;
* target preparation (flattening, the causal shift, range checks) and the reductions;
* the closed-form gradient of a token-weighted cross-entropy with respect to a chunk of logits.

Notation: ``N`` scored-or-not token rows, ``V`` vocabulary size, ``log p`` the target token's log-probability.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F

__all__ = [
    "CALIBRATION_BINS",
    "CHUNK_ELEMENTS",
    "GammaCEStats",
    "PredictionStats",
    "calibration_from_sums",
    "Reduction",
    "TokenTerms",
    "TokenWeightRule",
    "as_token_weight_rule",
    "check_inputs",
    "check_number",
    "check_reduction",
    "focal_terms",
    "gamma_terms",
    "gce_terms",
    "logit_grad_coefficients",
    "per_token_values",
    "prepare_targets",
    "prepare_token_scale",
    "probability_power_rule",
    "probs_to_logit_grad_",
    "reduce_token_losses",
    "rows_per_chunk",
    "tvd_weight",
    "validate_focal_hyperparameters",
    "validate_loss_hyperparameters",
]

Reduction = Literal["mean", "sum", "none"]
REDUCTIONS: tuple[str, ...] = get_args(Reduction)

# Rows of logits processed at once, in both paths: about this many logits per chunk (64 MiB of fp32 scratch at
# 2**24; 524 rows at V = 32000), independently of the number of tokens. Measured on the 2-core CPU of
# BENCHMARKS.md (N = 2048, d = 512, hidden-state path): 262 / 524 / 1024 rows gave 3.86 / 3.43 / 3.28 s and
# 108 / 140 / 201 MiB extra peak memory; matmuls of a few hundred rows are noticeably less efficient there.
CHUNK_ELEMENTS = 1 << 24


def rows_per_chunk(vocab_size: int) -> int:
    """Token rows per chunk so that one chunk holds about :data:`CHUNK_ELEMENTS` logits."""
    return max(1, CHUNK_ELEMENTS // max(1, vocab_size))


# ---------------------------------------------------------------------------------------------- option checks
def check_number(
    name: str,
    value: object,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    integer: bool = False,
    allow_none: bool = False,
    prefix: str = "",
) -> None:
    """Raise ``ValueError`` naming ``prefix + name`` unless ``value`` is a finite number within the bounds.

    Booleans are refused (``True`` is an ``int`` in Python), and so are NaN and infinity. ``low_open`` /
    ``high_open`` make the bounds strict; ``None`` leaves a side unbounded.
    """
    if value is None and allow_none:
        return
    kind = "an integer" if integer else "a number"
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type:
        raise ValueError(f"{prefix}{name} must be {kind}, got {value!r} ({type(value).__name__})")
    v = float(value)  # type: ignore[arg-type]
    if high is None and low is not None:
        interval = f"{'>' if low_open else '>='} {low:g}"
    elif low is None and high is not None:
        interval = f"{'<' if high_open else '<='} {high:g}"
    else:
        low_text = "-inf" if low is None else f"{low:g}"
        high_text = "inf" if high is None else f"{high:g}"
        interval = f"in {'(' if low_open else '['}{low_text}, {high_text}{')' if high_open else ']'}"
    if math.isnan(v):
        raise ValueError(f"{prefix}{name} must be {kind} {interval}, got NaN")
    too_low = low is not None and (v <= low if low_open else v < low)
    too_high = high is not None and (v >= high if high_open else v > high)
    if math.isinf(v):
        raise ValueError(f"{prefix}{name} must be finite, {interval.removeprefix('in ')}; got {value!r}")
    if too_low or too_high:
        rule = interval if interval.startswith("in ") else f"{kind} {interval}"
        raise ValueError(f"{prefix}{name} must be {rule}, got {value!r}")


def validate_loss_hyperparameters(
    gamma: float, min_weight: float = 0.0, label_smoothing: float = 0.0, *, prefix: str = ""
) -> None:
    """Raise ``ValueError`` naming the first hyperparameter out of range: γ, b in [0, 1]; ε in [0, 1)."""
    check_number("gamma", gamma, low=0.0, high=1.0, prefix=prefix)
    check_number("min_weight", min_weight, low=0.0, high=1.0, prefix=prefix)
    check_number("label_smoothing", label_smoothing, low=0.0, high=1.0, high_open=True, prefix=prefix)


def validate_focal_hyperparameters(focusing: float, alpha: float, label_smoothing: float, *, prefix: str = "") -> None:
    """Raise ``ValueError`` naming the field: focusing f ≥ 0, alpha α > 0, label_smoothing in [0, 1)."""
    check_number("label_smoothing", label_smoothing, low=0.0, high=1.0, high_open=True, prefix=prefix)
    check_number("focal_gamma", focusing, low=0.0, prefix=prefix)
    check_number("focal_alpha", alpha, low=0.0, low_open=True, prefix=prefix)


def check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def check_inputs(
    scores: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int,
    shift_labels: bool,
    *,
    name: str = "logits",
    last_dim: str = "vocab_size",
) -> None:
    """Validate a ``[..., last_dim]`` float tensor (``name``: logits, or hidden states) against ``labels`` ``[...]``."""
    if not isinstance(scores, torch.Tensor) or not isinstance(labels, torch.Tensor):
        raise ValueError(f"{name} and labels must be tensors, got {type(scores).__name__} and {type(labels).__name__}")
    if not scores.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {scores.dtype}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor of class indices, got dtype {labels.dtype}")
    if scores.dim() < 2:
        raise ValueError(f"{name} must have shape [..., {last_dim}], got shape {tuple(scores.shape)}")
    if tuple(scores.shape[:-1]) != tuple(labels.shape):
        raise ValueError(
            f"{name} shape {tuple(scores.shape)} does not match labels shape {tuple(labels.shape)}: "
            f"expected {name} of shape labels.shape + ({last_dim},)"
        )
    if shift_labels and labels.dim() < 1:
        raise ValueError("shift_labels=True needs labels with a sequence dimension")
    if scores.shape[-1] == 0:
        if name == "logits":
            raise ValueError("logits have an empty vocabulary dimension (vocab_size = 0)")
        raise ValueError(f"{name} has an empty last dimension ({last_dim} = 0)")


# ---------------------------------------------------------------------------------------------- per-token terms
def tvd_weight(log_p: torch.Tensor, gamma: float, min_weight: float = 0.0) -> torch.Tensor:
    """TaiLr's per-token weight ``clamp(p / (γ + (1-γ) p), b, 1)`` from ``log p``, computed in log space.

    Args:
        log_p: ``[...]`` log-probabilities of the target tokens (≤ 0), any float dtype; math in fp32 or wider.
        gamma: γ in [0, 1].
        min_weight: the floor b in [0, 1].

    Returns:
        ``[...]`` weights in [b, 1], detached from the graph.
    """
    with torch.no_grad():
        log_p = log_p.float() if log_p.dtype in (torch.float16, torch.bfloat16) else log_p
        if gamma == 0.0:
            weight = torch.ones_like(log_p)
        elif gamma == 1.0:
            weight = log_p.exp()
        else:
            # log(γ + (1-γ)p) = logaddexp(log γ, log(1-γ) + log p): no cancellation, no overflow, even at γ=1e-7.
            log_denominator = torch.logaddexp(torch.full_like(log_p, math.log(gamma)), log_p + math.log1p(-gamma))
            weight = (log_p - log_denominator).exp()
        return weight.clamp(min=min_weight, max=1.0)


TokenTerms = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
"""``terms(log_p [N]) -> (a [N], c [N])``: ``a`` multiplies the NLL in the loss value, ``c = -d(a·nll)/d log p``
is the factor of the NLL's gradient (``c = a`` when ``a`` is held constant, as TaiLr's weight is). The terms of a
rule with ``uses_entropy`` are called ``terms(log_p, entropy)``, ``entropy`` ``[N]`` fp32 being each position's
predictive entropy in nats."""


@dataclass(frozen=True)
class TokenWeightRule:
    """A per-token weight rule: how a token-weighted cross-entropy weights each scored token's NLL.

    The losses of this package are ``(1-ε) · a(p_y) · (-log p_y) + (ε/V) · Σ_v(-log p_v)`` per token, differing
    only in the rule. Everything the loss functions read from a rule is here:

    * ``terms``: the per-token function ``log p -> (a, c)`` (see :data:`TokenTerms`): the weight ``a`` in the
      loss value and the factor ``c`` of the NLL's gradient. Elementwise: it is called on values without autograd
      (the losses build the gradient from ``c``), on all tokens or a chunk of them at a time.
    * ``floor``: the least weight the rule gives (γ-CE's ``min_weight`` b), or None when it has none. When it is
      > 0 the losses count the scored tokens held at the floor (:attr:`GammaCEStats.floor_count`).

    * ``name``: how logs, checkpoints and the model card name the rule (None: "custom").
    * ``uses_entropy``: the rule also reads each position's predictive entropy ``H = -Σ_v p_v log p_v`` (nats,
      fp32 ``[N]``, of the model's distribution, before label smoothing), and ``terms`` is called
      ``terms(log_p, entropy)``. Every path gives it: the logits path and the torch chunked backend from the pass
      they already make over each chunk (one more ``[chunk, V]`` fp32 buffer and multiply-add), the kernel
      backends (cut-cross-entropy, liger, torch_linear_ce: their kernels return only the NLL) from one extra
      gradient-free chunked pass, the one ``extra_metrics`` makes (about one more ``N·d·V`` matmul).

    Calling a rule calls its ``terms`` (so a rule stands wherever a bare :data:`TokenTerms` function did). Built by
    :func:`gamma_terms`, :func:`focal_terms`, :func:`probability_power_rule`, or from your own weight function with
    :meth:`from_weight`; taken by :func:`~.logits.token_weighted_cross_entropy`,
    :func:`~.linear.linear_token_weighted_cross_entropy` (every backend: the kernels give the per-token NLL, the rule
    runs in torch on it), ``TVDTrainer(weight_rule=...)`` and ``TVDLoss(weight_rule=...)``.
    """

    terms: TokenTerms
    floor: float | None = None
    name: str | None = None
    uses_entropy: bool = False

    def __call__(self, log_p: torch.Tensor, entropy: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(a, c)`` of these log-probabilities; ``entropy`` is passed on only to a rule that ``uses_entropy``."""
        return self.terms(log_p, entropy) if self.uses_entropy else self.terms(log_p)

    @classmethod
    def from_weight(
        cls,
        weight: Callable[..., torch.Tensor],
        *,
        floor: float | None = None,
        name: str | None = None,
        uses_entropy: bool = False,
    ) -> TokenWeightRule:
        """A rule whose weight ``weight(log_p)`` multiplies each token's NLL and is held constant in the gradient
        (a stop-gradient, as TaiLr's and DFT's weights are): ``a = c = weight(log_p)``.

        ``weight`` maps the scored tokens' log-probabilities (float32 or float64, ``[N]``, no autograd) to weights of
        the same shape, elementwise: it may be called on all tokens or a chunk at a time, so it must not look at
        other tokens. Weights should be finite and ≥ 0 (not checked per call, which would synchronise the device on
        every chunk: a NaN or inf weight makes the loss non-finite, which the trainers' non-finite guard stops).
        ``floor``: the least weight it gives, if it has one, to count the tokens held there
        (``tvd_weight_floor_fraction``). ``uses_entropy=True``: ``weight(log_p, entropy)`` also receives each
        position's predictive entropy (nats, same shape; see the class docstring for what it costs per path), e.g.
        an entropy gate that trains only on the positions where the model is uncertain::

            TokenWeightRule.from_weight(lambda log_p, entropy: (entropy > 1.0).to(log_p.dtype), uses_entropy=True)
        """
        if not callable(weight):
            raise ValueError(f"weight must be a function of the log-probabilities, got {type(weight).__name__}")
        if floor is not None:
            check_number("floor", floor, low=0.0)
        _check_weight_arity(weight, uses_entropy, name)

        def terms(log_p: torch.Tensor, entropy: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
            if uses_entropy and (entropy is None or entropy.shape != log_p.shape):
                raise RuntimeError("an entropy rule was called without one entropy per token (a loss path bug)")
            with torch.no_grad():
                value = weight(log_p, entropy.to(log_p.dtype)) if uses_entropy else weight(log_p)
                if not torch.is_tensor(value) or value.shape != log_p.shape:
                    shape = tuple(value.shape) if torch.is_tensor(value) else type(value).__name__
                    raise ValueError(
                        f"the weight rule {name or 'custom'!r} returned {shape} for log-probabilities of shape "
                        f"{tuple(log_p.shape)}: it must return one weight per token (elementwise)"
                    )
                value = value.to(log_p.dtype)
            return value, value

        return cls(terms, floor=floor, name=name, uses_entropy=bool(uses_entropy))


def _check_weight_arity(weight: Callable[..., Any], uses_entropy: bool, name: str | None) -> None:
    """Refuse a weight function that cannot be called as the rule will call it (when its signature is known)."""
    import inspect

    try:
        signature = inspect.signature(weight)
    except (TypeError, ValueError):  # some builtins have none: called as they are
        return
    call = "weight(log_p, entropy)" if uses_entropy else "weight(log_p)"
    try:
        signature.bind(*((None, None) if uses_entropy else (None,)))
    except TypeError:
        hint = "" if uses_entropy else " (a function of the entropy too needs uses_entropy=True)"
        raise ValueError(
            f"the weight rule {name or 'custom'!r} takes {signature} but is called as {call} "
            f"(uses_entropy={bool(uses_entropy)}){hint}"
        ) from None


def probability_power_rule(alpha: float) -> TokenWeightRule:
    """The probability-power family ``w = p^α`` (stop-gradient): α = 0 is cross-entropy, α = 1 is DFT (Wu et al.,
    *On the Generalization of SFT*, 2025: ``-sg(p)·log p``), values between interpolate; a worked example of
    :meth:`TokenWeightRule.from_weight` (``p^α = exp(α·log p)``)."""
    check_number("alpha", alpha, low=0.0)
    alpha = float(alpha)
    return TokenWeightRule.from_weight(lambda log_p: (alpha * log_p).exp(), name=f"probability_power(alpha={alpha:g})")


def as_token_weight_rule(rule: TokenWeightRule | TokenTerms) -> TokenWeightRule:
    """``rule`` itself, or a bare :data:`TokenTerms` function as a rule without a floor."""
    return rule if isinstance(rule, TokenWeightRule) else TokenWeightRule(rule)


def gamma_terms(gamma: float, min_weight: float) -> TokenWeightRule:
    """γ-CE: ``a = c = clamp(p / (γ + (1-γ) p), b, 1)`` (the weight is held constant: stop-gradient); floor b."""

    def terms(log_p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        weight = tvd_weight(log_p, gamma, min_weight)
        return weight, weight

    return TokenWeightRule(terms, floor=min_weight)


def focal_terms(focusing: float, alpha: float) -> TokenWeightRule:
    """Focal loss ``-α (1-p)^f log p``, with the gradient flowing through the modulating factor; no floor."""

    def terms(log_p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # d loss / d log p = -α [(1-p)^f + f p (1-p)^(f-1) (-log p)]
        one_minus_p = (-torch.expm1(log_p)).clamp(min=1e-30)
        factor = alpha * one_minus_p.pow(focusing)
        grad_factor = factor + alpha * focusing * log_p.exp() * one_minus_p.pow(focusing - 1.0) * (-log_p)
        return factor, grad_factor

    return TokenWeightRule(terms)


def gce_terms(q: float) -> TokenWeightRule:
    """Generalized cross-entropy (Zhang & Sabuncu, 2018): ``(1 - p^q) / q`` per token, q in (0, 1]; q → 0 tends to
    cross-entropy, q = 1 is ``1 - p`` (MAE up to a constant factor). No floor.

    Its gradient is ``p^q · ∇(-log p)``: the NLL's gradient weighted by ``sg(p^q)``, so ``c = p^q`` (at q = 1 the
    gradient of γ-CE at γ = 1, i.e. DFT). The loss value is GCE's own, not the surrogate ``sg(p^q)·(-log p)``:
    ``a = (1 - p^q) / (q · (-log p))``, the mean of ``p^(q·t)`` over t in [0, 1], which lies in [p^q, 1] and is 1
    at p = 1; it is what the stats' ``weight_sum`` sums. A target of probability exactly 0 (``-inf`` logit) gets
    the loss ``+inf`` like every loss here (:func:`per_token_values`), not GCE's bounded ``1/q``.
    """
    check_number("q", q, low=0.0, low_open=True, high=1.0)
    q = float(q)

    def terms(log_p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = -q * log_p.clamp(max=0.0)  # q · NLL ≥ 0 (log p may round a hair above 0)
        grad_factor = torch.exp(-x)  # p^q
        # (1 - p^q) / (q · NLL) = -expm1(-x) / x, without cancellation near p = 1; its limit 1 at x = 0
        ratio = torch.where(x > 0, -torch.expm1(-x) / x.clamp(min=torch.finfo(x.dtype).tiny), torch.ones_like(x))
        return ratio, grad_factor

    return TokenWeightRule(terms, name=f"gce(q={q:g})")


# Equal-width bins of top-1 probability over [0, 1] for the calibration sums (ECE etc.).
CALIBRATION_BINS = 15  # equal-width bins of the top-1 probability, as Guo et al. 2017 (the common convention)


@dataclass
class GammaCEStats:
    """Detached sums over the scored (non-ignored) tokens of one call, for logging.

    All fields are fp32 tensors on the inputs' device (no host synchronisation is needed to build them). The
    first four are always there; ``floor_count`` when the loss has a floor b > 0 (γ-CE's ``min_weight``); the
    prediction metrics only when the loss was called with ``extra_metrics=True``.
    """

    objective_sum: torch.Tensor  # Σ loss_i
    nll_sum: torch.Tensor  # Σ -log p_y  (plain cross-entropy, comparable across losses)
    weight_sum: torch.Tensor  # Σ w_i
    num_tokens: torch.Tensor  # number of scored tokens
    floor_count: torch.Tensor | None = None  # scored tokens whose weight is clamped at the floor b
    correct_sum: torch.Tensor | None = None  # scored tokens with argmax_v p_v = y
    entropy_sum: torch.Tensor | None = None  # Σ H(p) = Σ -Σ_v p_v log p_v (nats)
    calibration: torch.Tensor | None = None  # [3, CALIBRATION_BINS]: count, Σ confidence, Σ correct per bin


class PredictionStats:
    """Per-token prediction statistics filled a chunk of rows at a time, reduced to sums at the end.

    From each chunk's fp32 logits ``z`` (after soft-capping) with row maximum ``m``, ``e = exp(z - m)``,
    ``S = Σ_v e_v``: the prediction is ``argmax_v z_v``, its probability (the confidence) ``1 / S``, and the
    predictive entropy ``H = log S - Σ_v e_v (z_v - m) / S``. Only ``[N]`` vectors are kept.
    """

    def __init__(self, num_rows: int, device: torch.device) -> None:
        self.argmax = torch.zeros(num_rows, dtype=torch.long, device=device)
        self.confidence = torch.zeros(num_rows, dtype=torch.float32, device=device)
        self.entropy = torch.zeros(num_rows, dtype=torch.float32, device=device)

    def exp_rows(
        self, logits: torch.Tensor, shifted_out: torch.Tensor, exp_out: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(row_max [n, 1], exp(logits - row_max) [n, V], its row sums [n, 1])`` for a chunk of fp32 logits.

        ``logits - row_max`` goes to ``shifted_out`` (may be ``logits`` itself: in place), the exponential to
        ``exp_out``, a separate buffer. Also computes the argmax (first maximum, like ``torch.argmax``),
        confidence and entropy of these rows; :meth:`store` says which rows they are.
        """
        row_max, argmax = logits.max(dim=-1, keepdim=True)
        shifted = torch.sub(logits, row_max, out=shifted_out)
        e = torch.exp(shifted, out=exp_out)
        sumexp = e.sum(dim=-1, keepdim=True)
        # Σ_v e_v (z_v - m) without an [n, V] temporary: a batch of 1×V · V×1 products
        dot = torch.bmm(e.unsqueeze(1), shifted.unsqueeze(2)).view(-1)
        self._pending = (argmax.view(-1), sumexp.view(-1), dot)
        return row_max, e, sumexp

    def store(self, start: int, end: int) -> None:
        argmax, sumexp, dot = self._pending
        del self._pending
        self.argmax[start:end] = argmax
        self.confidence[start:end] = sumexp.reciprocal()
        self.entropy[start:end] = sumexp.log() - dot / sumexp

    def sums(self, targets: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """``correct_sum``, ``entropy_sum`` and ``calibration`` over the rows where ``mask`` is true."""
        maskf = mask.float()
        correct = (self.argmax == targets).float() * maskf
        confidence = self.confidence.clamp(0.0, 1.0)
        bins = (confidence * CALIBRATION_BINS).long().clamp_(max=CALIBRATION_BINS - 1)
        calibration = torch.zeros(3, CALIBRATION_BINS, dtype=torch.float32, device=maskf.device)
        calibration[0].index_add_(0, bins, maskf)
        calibration[1].index_add_(0, bins, confidence * maskf)
        calibration[2].index_add_(0, bins, correct)
        return {
            "correct_sum": correct.sum(),
            "entropy_sum": (self.entropy * maskf).sum(),
            "calibration": calibration,
        }


def calibration_from_sums(sums: torch.Tensor) -> dict[str, float]:
    """``ece`` ``Σ_b |Σ correct_b - Σ confidence_b| / N``, mean ``confidence`` and ``accuracy`` from
    ``[3, bins]`` sums (count, Σ confidence, Σ correct per bin); empty when nothing was scored."""
    sums = sums.double()
    count = float(sums[0].sum())
    if count == 0:
        return {}
    return {
        "ece": float((sums[2] - sums[1]).abs().sum()) / count,
        "confidence": float(sums[1].sum()) / count,
        "accuracy": float(sums[2].sum()) / count,
    }


def per_token_values(
    target_logit: torch.Tensor,
    lse: torch.Tensor,
    logit_sum: torch.Tensor | None,
    mask: torch.Tensor,
    vocab_size: int,
    rule: TokenWeightRule,
    label_smoothing: float,
    entropy: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token ``(loss, nll, a, c)`` (fp32 ``[N]``, 0 where ``mask`` is False) from fp32 ``[N]`` row statistics;
    ``entropy`` (``[N]``, or None where the path made no prediction pass) is read by a rule that ``uses_entropy``.

    ``target_logit`` is ``logit_y``, ``lse`` is ``logsumexp_v logit_v``, ``logit_sum`` is ``Σ_v logit_v`` (only
    needed when ``label_smoothing > 0``: Σ_v -log p_v = V · lse - Σ_v logit_v); ``(a, c) = rule(log p, entropy)``.

    A target with probability exactly 0 (``-inf`` logit) has an infinite NLL; its loss is ``+inf`` (as with
    ``F.cross_entropy``), not the ``0 · inf = NaN`` of the weighted product, so a caller sees a non-finite loss.
    """
    log_p = target_logit - lse
    nll = (-log_p).masked_fill(~mask, 0.0)
    weight, grad_factor = rule(log_p, entropy)
    weight = weight.masked_fill(~mask, 0.0)
    grad_factor = grad_factor.masked_fill(~mask, 0.0)
    weighted = weight * nll
    weighted = torch.where(torch.isinf(nll), nll, weighted)
    loss = (1.0 - label_smoothing) * weighted
    if label_smoothing > 0:
        smooth = vocab_size * lse - logit_sum
        loss = loss + (label_smoothing / vocab_size) * smooth.masked_fill(~mask, 0.0)
    return loss, nll, weight, grad_factor


# ---------------------------------------------------------------------------------------------- gradient
def logit_grad_coefficients(
    grad_loss: torch.Tensor, grad_factor: torch.Tensor, mask: torch.Tensor, eps: float, vocab_size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(softmax_coef, onehot_coef, constant)``, each ``[N]`` fp32 (constant None without smoothing), such that

    ``d loss_i / d logit_iv · g_i = softmax_coef_i · softmax_iv - onehot_coef_i · [v = y_i] - constant_i``, i.e.
    ``((1-ε) c_i + ε) · softmax_iv  -  (1-ε) c_i · [v = y_i]  -  ε / V``, times the upstream gradient ``g_i``.
    Ignored rows get exactly zero: ``c`` is 0 there and the smoothing terms are masked.
    """
    grad_loss = grad_loss.float()
    onehot_coef = grad_loss * (1.0 - eps) * grad_factor
    if eps > 0:
        smooth_coef = grad_loss.masked_fill(~mask, 0.0) * eps
        return onehot_coef + smooth_coef, onehot_coef, smooth_coef / vocab_size
    return onehot_coef, onehot_coef, None


def probs_to_logit_grad_(
    probs: torch.Tensor,
    targets: torch.Tensor,
    softmax_coef: torch.Tensor,
    onehot_coef: torch.Tensor,
    constant: torch.Tensor | None,
    rows: slice,
) -> torch.Tensor:
    """Turn a chunk of softmax rows ``probs`` ``[n, V]`` (fp32) into the logits' gradient, in place.

    ``targets`` ``[n]`` are this chunk's (safe) targets; the ``[N]`` coefficients are indexed with ``rows``.
    """
    probs.mul_(softmax_coef[rows].unsqueeze(1))
    probs.scatter_add_(1, targets.unsqueeze(1), -onehot_coef[rows].unsqueeze(1))
    if constant is not None:
        probs.sub_(constant[rows].unsqueeze(1))
    return probs


# ---------------------------------------------------------------------------------------------- targets, reduction
def prepare_targets(
    labels: torch.Tensor, vocab_size: int, *, ignore_index: int, shift_labels: bool, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flatten (and, for causal LMs, shift) the labels; check their range.

    Returns ``(safe_targets [N], mask [N])`` aligned with the flattened score rows: ``mask`` true where scored,
    ``safe_targets`` with ignored positions replaced by 0 (safe to gather).
    """
    labels = labels.to(device=device, dtype=torch.long)
    if shift_labels:
        # Score row t against labels[..., t+1] by padding the labels instead of slicing the scores: slicing
        # would force a copy of the whole [N, V] (or [N, d]) tensor.
        targets = F.pad(labels[..., 1:], (0, 1), value=ignore_index)
    else:
        targets = labels
    targets = targets.reshape(-1)
    mask = targets != ignore_index
    bad = mask & ((targets < 0) | (targets >= vocab_size))
    if bool(bad.any()):  # one host sync; a CUDA gather with a bad index would be a device-side assert instead
        offending = targets[bad][:5].tolist()
        raise ValueError(
            f"labels must be in [0, {vocab_size}) (the vocabulary size) or equal ignore_index={ignore_index}; "
            f"found {offending}"
        )
    return targets.masked_fill(~mask, 0), mask


def prepare_token_scale(
    token_scale: torch.Tensor | None,
    labels: torch.Tensor,
    *,
    shift_labels: bool,
    device: torch.device,
) -> torch.Tensor | None:
    """Flat fp32 ``[N]`` per-row loss factors from ``token_scale`` shaped like ``labels`` or ``[batch]``.

    A ``[batch]`` tensor gives every token of an example its example's factor. With ``shift_labels`` the factor of
    ``labels[..., t+1]`` moves to row t, like the target. ``ValueError`` for a wrong shape or a non-finite value.
    """
    if token_scale is None:
        return None
    if not torch.is_tensor(token_scale) or token_scale.is_complex():
        raise ValueError(f"loss_weights must be a real tensor, got {type(token_scale).__name__}")
    scale = token_scale.to(device=device, dtype=torch.float32)
    if labels.dim() >= 1 and tuple(scale.shape) == tuple(labels.shape[:1]) and labels.dim() > 1:
        scale = scale.reshape(-1, *([1] * (labels.dim() - 1))).expand(labels.shape)
    if tuple(scale.shape) != tuple(labels.shape):
        raise ValueError(
            f"loss_weights shape {tuple(token_scale.shape)} matches neither labels {tuple(labels.shape)} nor "
            f"[batch] = {tuple(labels.shape[:1])}"
        )
    if not bool(torch.isfinite(scale).all()):  # one host sync
        raise ValueError("loss_weights contain NaN or inf")
    if shift_labels:
        scale = F.pad(scale[..., 1:], (0, 1), value=0.0)
    return scale.reshape(-1)


def _per_token_output(per_token: torch.Tensor, labels_shape: torch.Size, shift_labels: bool) -> torch.Tensor:
    """``[N]`` per-token values reshaped like the labels (``reduction="none"``)."""
    per_token = per_token.view(labels_shape)
    if shift_labels:
        # Align each value with the label it scores: position t holds the loss of predicting labels[..., t].
        per_token = F.pad(per_token[..., :-1], (1, 0), value=0.0)
    return per_token


def _mean(
    total: torch.Tensor, num_tokens: torch.Tensor, num_items_in_batch: torch.Tensor | int | float | None
) -> torch.Tensor:
    """``total / num_items_in_batch`` (default: the scored-token count), never dividing by less than 1."""
    if num_items_in_batch is None:
        denominator = num_tokens
    elif torch.is_tensor(num_items_in_batch):
        denominator = num_items_in_batch.to(device=total.device, dtype=total.dtype)
    else:
        if not num_items_in_batch > 0:  # a count given by hand: 0, negative or NaN cannot be right
            raise ValueError(
                f"num_items_in_batch must be a positive count (the scored tokens, or sequences, of the whole step), "
                f"got {num_items_in_batch!r}"
            )
        denominator = torch.tensor(float(num_items_in_batch), device=total.device)
    # A batch with nothing to score gives 0 (and zero gradients), not 0/0.
    return total / denominator.clamp(min=1.0)


def reduce_token_losses(
    per_token: torch.Tensor,
    nll: torch.Tensor,
    weight: torch.Tensor,
    mask: torch.Tensor,
    *,
    labels_shape: torch.Size,
    shift_labels: bool,
    num_items_in_batch: torch.Tensor | int | float | None,
    reduction: str,
    total: torch.Tensor | None = None,
    floor: float | None = None,
    prediction: dict[str, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, GammaCEStats]:
    """Apply ``reduction`` to flat per-token losses ``[N]`` and build the logging sums.

    ``total`` is the differentiable ``Σ per_token`` when the caller already has it (the fused hidden-state path,
    whose gradient flows through the total, not through ``per_token``). ``floor``: the weight floor b of the
    loss's rule (:attr:`TokenWeightRule.floor`), counted when > 0; ``prediction``: :meth:`PredictionStats.sums`,
    when computed.
    """
    num_tokens = mask.sum().float()
    stats = GammaCEStats(
        objective_sum=per_token.detach().sum(),
        nll_sum=nll.detach().sum(),
        weight_sum=weight.detach().sum(),
        num_tokens=num_tokens,
        **(prediction or {}),
    )
    if floor is not None and floor > 0:
        stats.floor_count = ((weight.detach() <= floor) & mask).sum().float()
    if reduction == "none":
        return _per_token_output(per_token, labels_shape, shift_labels), stats
    if total is None:
        total = per_token.sum()
    if reduction == "sum":
        return total, stats
    return _mean(total, num_tokens, num_items_in_batch), stats
