"""Speed and memory of the γ-CE implementations against ``F.cross_entropy``, side by side in one process.

Usage::

    python -m benchmarks.bench --tokens 2048 --vocab 32000 --dtype float32 --run cpu_n2048_v32000_fp32
    python -m benchmarks.bench --tokens 4096 --vocab 32000 --hidden 512 --repeats 3 --run cpu_n4096
    python -m benchmarks.bench --quick --out /tmp/bench        # tiny shapes, a few seconds (smoke test)
    python -m benchmarks.bench --table                         # regenerate the tables in BENCHMARKS.md

Each variant is timed over ``--repeats`` forward+backward passes (after one warm-up; variants are interleaved
round-robin so that drift on a shared machine hits all of them alike) and reported as the median and the
minimum, each also as a ratio to its baseline. Loss-on-logits variants (input: ``[N, V]`` logits, gradient w.r.t. the logits):

* ``cross_entropy``: ``F.cross_entropy`` on fp32-upcast logits (what transformers' ``ForCausalLMLoss`` does),
  with the same label smoothing as the γ-CE runs; the baseline.
* ``gamma_ce``: :func:`hf_tvd_loss.gamma_cross_entropy`.
* ``tailr_fairseq``: the official TaiLr fairseq criterion's computation written in PyTorch (full log-softmax,
  ``softmax().log()`` of it, a second softmax for the weight, a smoothing sum).
* ``dft_trl``: TRL's ``loss_type="dft"`` (log-softmax, gather, ``-sg(p) · log p``); γ = 1 by definition.

Loss-on-hidden-states variants (input: hidden ``[N, d]`` and lm_head weight ``[V, d]``, gradients w.r.t. both):

* ``linear_cross_entropy``: ``F.cross_entropy(F.linear(h, W).float())``; the baseline of this group.
* ``linear_gamma_ce_materialised``: ``gamma_cross_entropy(F.linear(h, W))``.
* ``linear_gamma_ce_fused``: :func:`hf_tvd_loss.ops.linear_gamma_cross_entropy` (no ``[N, V]`` logits;
  gradients computed in the forward pass).
* ``linear_gamma_ce_fused_recompute``: the same loss through its ``reduction="none"`` path, which recomputes the
  logits chunk by chunk in backward instead (summed and divided by the token count outside): the alternative
  design, measured to justify the choice.
* ``linear_entropy_rule_fused``: a custom ``TokenWeightRule`` that reads each position's entropy
  (``uses_entropy=True``: w = 1 where H > 1, else p), through the same fused path: the entropy's cost.

Kernel variants (same group and baseline; CUDA only, where the package is installed, and then part of the default
list): ``linear_cross_entropy_cce`` (cut-cross-entropy's own ``linear_cross_entropy``: plain cross-entropy, no
label smoothing, its default gradient filtering), ``linear_gamma_ce_cce`` (γ-CE with ``impl="cce"``),
``linear_cross_entropy_liger`` (liger-kernel's ``liger_fused_linear_cross_entropy``, with the run's label
smoothing) and ``linear_gamma_ce_liger`` (γ-CE with ``impl="liger"``). Compare like with like: run them with
``--label-smoothing 0`` when cut-cross-entropy's cross-entropy is the reference.

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` minus what was allocated before the pass; on CPU each
variant runs once in its own subprocess and reports its peak RSS minus the RSS after its inputs were created
(the peak is the kernel's ``VmHWM``, reset after setup; see :class:`_PeakRSS` for why not ``ru_maxrss``). Each loss is also compared with the float64 reference of
:mod:`hf_tvd_loss.ops.reference` ("err vs f64"). Unless ``--no-train-step``, a training step of ``TVDTrainer`` and
of the stock ``Trainer`` on a tiny Llama built from a config (``--vocab`` sized vocabulary) is timed too, each
in its own subprocess, and ``TVDTrainer`` with ``loss_impl="chunked"`` (backend ``--chunked-backend``) as a third.
Results: one row per variant appended to ``--results`` (``benchmarks/results.jsonl``) under the label ``--run``;
``--out DIR`` writes the run as ``bench.json`` and ``bench.md`` as well (alone, instead). The tables of
``BENCHMARKS.md`` are generated from the results file (:mod:`benchmarks.results`, ``--table``).
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F

from hf_tvd_loss.ops import (
    TokenWeightRule,
    gamma_cross_entropy,
    kernels,
    linear_gamma_cross_entropy,
    linear_token_weighted_cross_entropy,
)
from hf_tvd_loss.ops.reference import gamma_cross_entropy_reference

from . import results

LOGIT_VARIANTS = ("cross_entropy", "gamma_ce", "tailr_fairseq", "dft_trl")
HIDDEN_VARIANTS = (
    "linear_cross_entropy",
    "linear_gamma_ce_materialised",
    "linear_gamma_ce_fused",
    "linear_gamma_ce_fused_recompute",
    # a custom TokenWeightRule that reads each position's entropy (issue 22.9): its cost over the γ-CE fused row
    "linear_entropy_rule_fused",
)
# variant -> the backend it needs (CUDA kernels of optional packages)
KERNEL_VARIANTS = {
    "linear_cross_entropy_cce": "cce",
    "linear_gamma_ce_cce": "cce",
    "linear_cross_entropy_liger": "liger",
    "linear_gamma_ce_liger": "liger",
    # PyTorch's own chunked torch.nn.functional.linear_cross_entropy (torch >= 2.13): CPU and CUDA
    "linear_cross_entropy_torch_lce": "torch_linear_ce",
    "linear_gamma_ce_torch_lce": "torch_linear_ce",
}
TRAIN_VARIANTS = ("train_step_stock_trainer", "train_step_tvd_trainer", "train_step_tvd_trainer_chunked")
# with --train-metrics: the two TVDTrainer steps again with TVDArguments(extra_metrics=True)
METRICS_TRAIN_VARIANTS = ("train_step_tvd_trainer_metrics", "train_step_tvd_trainer_chunked_metrics")
BASELINE = {
    **dict.fromkeys(LOGIT_VARIANTS, "cross_entropy"),
    **dict.fromkeys((*HIDDEN_VARIANTS, *KERNEL_VARIANTS), "linear_cross_entropy"),
    **dict.fromkeys((*TRAIN_VARIANTS, *METRICS_TRAIN_VARIANTS), "train_step_stock_trainer"),
}
IGNORE_INDEX = -100


@dataclass
class Settings:
    tokens: int
    vocab: int
    hidden: int
    dtype: str
    device: str
    repeats: int
    gamma: float
    min_weight: float
    label_smoothing: float
    ignore_fraction: float
    seed: int
    train_steps: int
    train_batch: int
    train_seq_len: int
    chunk_size: int | None = None
    chunked_backend: str = "torch"
    train_model: str | None = None
    train_metrics: bool = False


# ------------------------------------------------------------------------------------------------ variants


def tailr_fairseq_loss(logits: torch.Tensor, labels: torch.Tensor, gamma: float, min_weight: float, eps: float):
    """The computation of the official TaiLr fairseq criterion (``tailr``), in PyTorch.

    As described in TAILR.md: a full log-softmax, ``softmax().log()`` of it (the criterion asks the model for
    normalised probabilities again), a second softmax for the weight (under no_grad, in log space, clamped to
    [b, 1]), label smoothing as an unweighted sum over the vocabulary, sum over targets / number of targets.
    """
    lprobs = F.log_softmax(logits.float(), dim=-1)
    lprobs = lprobs.softmax(dim=-1).log()
    mask = labels != IGNORE_INDEX
    safe = labels.masked_fill(~mask, 0).unsqueeze(-1)
    with torch.no_grad():
        probs = F.softmax(logits.float(), dim=-1)
        p = probs.gather(-1, safe).squeeze(-1)
        weight = torch.exp(torch.log(p) - torch.log(gamma + (1.0 - gamma) * p)).clamp(min=min_weight, max=1.0)
    nll = -lprobs.gather(-1, safe).squeeze(-1)
    smooth = -lprobs.sum(dim=-1)
    per_token = (1.0 - eps) * weight * nll + (eps / logits.shape[-1]) * smooth
    return (per_token * mask).sum() / mask.sum().clamp(min=1)


def dft_trl_loss(logits: torch.Tensor, labels: torch.Tensor):
    """TRL's DFT loss (``loss_type="dft"``): ``-sg(p) · log p`` per target token, mean over targets."""
    mask = labels != IGNORE_INDEX
    log_p = F.log_softmax(logits.float(), dim=-1).gather(-1, labels.masked_fill(~mask, 0).unsqueeze(-1)).squeeze(-1)
    per_token = -log_p.detach().exp() * log_p
    return (per_token * mask).sum() / mask.sum().clamp(min=1)


def _make_inputs(s: Settings, group: str) -> dict[str, torch.Tensor]:
    """Inputs of one group, created directly in their final dtype/device (no transient copies)."""
    dtype = getattr(torch, s.dtype)
    g = torch.Generator(device="cpu").manual_seed(s.seed)
    labels = torch.randint(0, s.vocab, (s.tokens,), generator=g)
    labels[torch.rand(s.tokens, generator=g) < s.ignore_fraction] = IGNORE_INDEX
    labels = labels.to(s.device)
    if group == "logits":
        torch.manual_seed(s.seed)
        logits = torch.randn(s.tokens, s.vocab, dtype=dtype, device=s.device).mul_(2.0).requires_grad_()
        return {"logits": logits, "labels": labels}
    torch.manual_seed(s.seed)
    hidden = torch.randn(s.tokens, s.hidden, dtype=dtype, device=s.device).requires_grad_()
    weight = torch.randn(s.vocab, s.hidden, dtype=dtype, device=s.device).mul_(s.hidden**-0.5).requires_grad_()
    return {"hidden": hidden, "weight": weight, "labels": labels}


def _loss_fn(name: str, s: Settings, inputs: dict[str, torch.Tensor]) -> Callable[[], torch.Tensor]:
    labels = inputs["labels"]
    gce = dict(gamma=s.gamma, min_weight=s.min_weight, label_smoothing=s.label_smoothing)
    if name in LOGIT_VARIANTS:
        logits = inputs["logits"]
        return {
            "cross_entropy": lambda: F.cross_entropy(
                logits.float(), labels, ignore_index=IGNORE_INDEX, label_smoothing=s.label_smoothing
            ),
            "gamma_ce": lambda: gamma_cross_entropy(logits, labels, **gce),
            "tailr_fairseq": lambda: tailr_fairseq_loss(logits, labels, s.gamma, s.min_weight, s.label_smoothing),
            "dft_trl": lambda: dft_trl_loss(logits, labels),
        }[name]
    hidden, weight = inputs["hidden"], inputs["weight"]
    return {
        "linear_cross_entropy": lambda: F.cross_entropy(
            F.linear(hidden, weight).float(), labels, ignore_index=IGNORE_INDEX, label_smoothing=s.label_smoothing
        ),
        "linear_gamma_ce_materialised": lambda: gamma_cross_entropy(F.linear(hidden, weight), labels, **gce),
        "linear_gamma_ce_fused": lambda: linear_gamma_cross_entropy(
            hidden, weight, labels, chunk_size=s.chunk_size, **gce
        ),
        "linear_gamma_ce_fused_recompute": lambda: (
            linear_gamma_cross_entropy(hidden, weight, labels, chunk_size=s.chunk_size, reduction="none", **gce).sum()
            / (labels != IGNORE_INDEX).sum().clamp(min=1)
        ),
        "linear_entropy_rule_fused": lambda: linear_token_weighted_cross_entropy(
            hidden, weight, labels, ENTROPY_GATE, chunk_size=s.chunk_size, label_smoothing=s.label_smoothing
        )[0],
        "linear_cross_entropy_cce": lambda: _cce_cross_entropy(hidden, weight, labels),
        "linear_gamma_ce_cce": lambda: linear_gamma_cross_entropy(hidden, weight, labels, impl="cce", **gce),
        "linear_cross_entropy_liger": lambda: _liger_cross_entropy(hidden, weight, labels, s.label_smoothing),
        "linear_gamma_ce_liger": lambda: linear_gamma_cross_entropy(hidden, weight, labels, impl="liger", **gce),
        # no label smoothing: torch's chunked path takes none (with it, it warns and materialises the logits)
        "linear_cross_entropy_torch_lce": lambda: F.linear_cross_entropy(
            hidden, weight, labels, ignore_index=IGNORE_INDEX, options=torch.nn.LinearCrossEntropyOptions()
        ).float(),
        "linear_gamma_ce_torch_lce": lambda: linear_gamma_cross_entropy(
            hidden, weight, labels, impl="torch_linear_ce", **gce
        ),
    }[name]


# an elementwise rule of the token's probability and its position's entropy (the entropy is what costs)
ENTROPY_GATE = TokenWeightRule.from_weight(
    lambda log_p, entropy: torch.where(entropy > 1.0, 1.0, log_p.exp()), uses_entropy=True, name="entropy_gate"
)


def _cce_cross_entropy(hidden, weight, labels):
    from cut_cross_entropy import linear_cross_entropy

    # the package's fused kernel ("cce") unless the kernel settings were switched (a CPU test: "torch_compile")
    cce_impl = kernels.kernel_settings().cce_impl
    return linear_cross_entropy(hidden, weight, labels, ignore_index=IGNORE_INDEX, impl=cce_impl)


def _liger_cross_entropy(hidden, weight, labels, label_smoothing):
    from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

    return liger_fused_linear_cross_entropy(
        hidden, weight, labels, ignore_index=IGNORE_INDEX, label_smoothing=label_smoothing
    )


def kernel_variant_problem(name: str, device: str) -> str | None:
    """Why kernel variant ``name`` cannot run on ``device`` here (None if it can)."""
    backend = KERNEL_VARIANTS[name]
    if backend == kernels.TORCH_LINEAR_CE:  # PyTorch's own: wherever torch runs
        return kernels.kernel_problem(backend)
    if not device.startswith(kernels.kernel_settings().devices):
        return f"it needs --device cuda (the {backend} kernels are CUDA kernels)"
    return kernels.kernel_problem(backend)


def _reference_settings(name: str, s: Settings) -> dict[str, float]:
    """The γ-CE hyperparameters each variant computes (for the float64 comparison)."""
    if name == "dft_trl":
        return dict(gamma=1.0, min_weight=0.0, label_smoothing=0.0)
    if name in ("linear_cross_entropy_cce", "linear_cross_entropy_torch_lce"):  # no label smoothing in these
        return dict(gamma=0.0, min_weight=0.0, label_smoothing=0.0)
    if name in (
        "cross_entropy",
        "linear_cross_entropy",
        "linear_cross_entropy_liger",
    ):
        return dict(gamma=0.0, min_weight=0.0, label_smoothing=s.label_smoothing)
    return dict(gamma=s.gamma, min_weight=s.min_weight, label_smoothing=s.label_smoothing)


_REFERENCE_BLOCK_ELEMENTS = 1 << 26  # 512 MiB of float64 logits per block


def _references(inputs: dict[str, torch.Tensor], names, s: Settings, group: str) -> dict[str, float]:
    """Each variant's loss in float64 (:mod:`hf_tvd_loss.ops.reference`), a block of rows at a time.

    Blocks keep the float64 logits small (at N = 16384, V = 128256 the whole matrix would be 16 GiB).
    """
    labels = inputs["labels"]
    rows = max(1, _REFERENCE_BLOCK_ELEMENTS // s.vocab)
    sums = dict.fromkeys(names, 0.0)
    with torch.no_grad():
        weight = inputs["weight"].double() if group == "hidden" else None
        for start in range(0, s.tokens, rows):
            block = slice(start, start + rows)
            if group == "logits":
                logits = inputs["logits"][block].double()
            else:
                logits = F.linear(inputs["hidden"][block].double(), weight)
            for n in names:
                if n == "linear_entropy_rule_fused":
                    sums[n] += _entropy_gate_reference_sum(logits, labels[block], s.label_smoothing)
                    continue
                settings = _reference_settings(n, s)
                sums[n] += float(gamma_cross_entropy_reference(logits, labels[block], reduction="sum", **settings))
            del logits
    count = max(int((labels != IGNORE_INDEX).sum()), 1)
    return {n: total / count for n, total in sums.items()}


def _entropy_gate_reference_sum(logits: torch.Tensor, labels: torch.Tensor, eps: float) -> float:
    """Σ over scored tokens of ENTROPY_GATE's loss on float64 logits, from the formula:
    (1-ε)·w·(-log p_y) + (ε/V)·Σ_v(-log p_v), w = 1 where H > 1 else p_y, H = -Σ_v p_v log p_v."""
    log_probs = torch.log_softmax(logits, dim=-1)
    mask = labels != IGNORE_INDEX
    log_p = log_probs.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    entropy = -(log_probs.exp() * log_probs).sum(-1)
    weight = torch.where(entropy > 1.0, 1.0, log_p.exp())
    per_token = (1 - eps) * weight * (-log_p) - eps * log_probs.mean(-1)
    return float(per_token[mask].sum())


def _step(fn: Callable[[], torch.Tensor], leaves: list[torch.Tensor]) -> float:
    for t in leaves:
        t.grad = None
    loss = fn()
    loss.backward()
    value = float(loss.detach())  # host sync
    for t in leaves:
        t.grad = None
    return value


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


# ------------------------------------------------------------------------------------------------ memory


def _status_bytes(field: str) -> int:
    """``VmRSS`` (current) or ``VmHWM`` (peak) of this process from ``/proc/self/status``, in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise OSError(f"{field} not in /proc/self/status")


class _PeakRSS:
    """Peak resident memory of this process from a reset point, on Linux.

    ``getrusage(RUSAGE_SELF).ru_maxrss`` cannot be used as is: Linux carries it over ``execve``, so a child
    started by a large parent starts with the parent's peak (measured here: every variant then showed the
    parent's ~1 GB). Instead the per-process high-water mark ``VmHWM`` is reset to the current RSS by writing
    5 to ``/proc/self/clear_refs`` (Linux >= 4.0); where that is refused, ``ru_maxrss`` is used and the result
    is flagged as an upper bound when it did not move.
    """

    def __init__(self) -> None:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.method = "cpu_vmhwm"
            self.baseline = _status_bytes("VmRSS")
        except OSError:
            self.method = "cpu_maxrss"
            self.baseline = _status_bytes("VmRSS")
            self.high_water = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux

    def result(self) -> dict[str, Any]:
        if self.method == "cpu_vmhwm":
            return {"extra_peak_bytes": _status_bytes("VmHWM") - self.baseline, "method": self.method}
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return {
            "extra_peak_bytes": peak - self.baseline,
            "method": self.method,
            "upper_bound_only": peak <= self.high_water,
        }


def _memory_child(name: str, s: Settings) -> dict[str, Any]:
    """Run one variant once in this (fresh) process and report its extra peak memory in bytes."""
    if name in TRAIN_VARIANTS or name in METRICS_TRAIN_VARIANTS:
        return _train_child(name, s)
    group = "logits" if name in LOGIT_VARIANTS else "hidden"
    # Warm up on tiny shapes first so that lazily loaded kernels and thread pools are not counted.
    tiny = Settings(**{**asdict(s), "tokens": 8, "vocab": 16, "hidden": 8})
    tiny_inputs = _make_inputs(tiny, group)
    _step(_loss_fn(name, tiny, tiny_inputs), [t for t in tiny_inputs.values() if t.requires_grad])
    del tiny_inputs
    inputs = _make_inputs(s, group)
    leaves = [t for t in inputs.values() if t.requires_grad]
    fn = _loss_fn(name, s, inputs)
    gc.collect()
    if s.device.startswith("cuda"):
        _sync(s.device)
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        _step(fn, leaves)
        _sync(s.device)
        return {"extra_peak_bytes": torch.cuda.max_memory_allocated() - before, "method": "cuda_max_allocated"}
    meter = _PeakRSS()
    _step(fn, leaves)
    return meter.result()


def _run_child(name: str, s: Settings) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "benchmarks.bench", "--_child", name, "--_settings", json.dumps(asdict(s))]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([p for p in sys.path if p] + [os.environ.get("PYTHONPATH", "")]),
    }
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"benchmark subprocess for {name} failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------------ training step


def _tiny_llama(s: Settings):
    from transformers import LlamaConfig, LlamaForCausalLM

    heads = max(4, s.hidden // 128)  # head_dim 128 from d = 512 on, like Llama
    config = LlamaConfig(
        vocab_size=s.vocab, hidden_size=s.hidden, intermediate_size=2 * s.hidden, num_hidden_layers=2,
        num_attention_heads=heads, num_key_value_heads=heads // 2, max_position_embeddings=max(64, s.train_seq_len),
        pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
    )  # fmt: skip
    return LlamaForCausalLM(config)


def _train_child(name: str, s: Settings) -> dict[str, Any]:
    """Train for ``train_steps`` steps; per-step times (after the first) and extra peak memory.

    The model is ``--train-model`` (a local checkpoint folder) or a tiny Llama built from a config.
    """
    from transformers import AutoModelForCausalLM, Trainer, TrainerCallback, TrainingArguments

    from hf_tvd_loss.args import TVDArguments
    from hf_tvd_loss.trainer import TVDTrainer

    torch.manual_seed(s.seed)
    dtype = getattr(torch, s.dtype)
    if s.train_model:
        model = AutoModelForCausalLM.from_pretrained(s.train_model, dtype=dtype).to(s.device)
        vocab = model.config.vocab_size
    else:
        model, vocab = _tiny_llama(s).to(device=s.device, dtype=dtype), s.vocab
    g = torch.Generator().manual_seed(s.seed)
    rows = []
    for _ in range(s.train_batch * (s.train_steps + 1)):
        ids = torch.randint(3, vocab, (s.train_seq_len,), generator=g)
        labels = ids.clone()
        labels[: s.train_seq_len // 4] = IGNORE_INDEX  # a prompt
        rows.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels})

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self.t0 = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            _sync(s.device)
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            _sync(s.device)
            self.times.append(time.perf_counter() - self.t0)

    args = TrainingArguments(
        output_dir=os.path.join(os.environ.get("TMPDIR", "/tmp"), f"hf_tvd_bench_{os.getpid()}"),
        per_device_train_batch_size=s.train_batch, max_steps=s.train_steps, learning_rate=1e-4,
        lr_scheduler_type="constant", logging_steps=10**6, save_strategy="no", report_to="none",
        use_cpu=not s.device.startswith("cuda"), seed=s.seed, dataloader_num_workers=0, disable_tqdm=True,
        bf16=False, fp16=False,
    )  # fmt: skip
    timer = StepTimer()
    kwargs = dict(model=model, args=args, train_dataset=rows, callbacks=[timer])
    gce = dict(gamma=s.gamma, min_weight=s.min_weight, label_smoothing=s.label_smoothing)
    if name in METRICS_TRAIN_VARIANTS:
        gce["extra_metrics"] = True
        name = name.removesuffix("_metrics")
    if name == "train_step_tvd_trainer":
        trainer = TVDTrainer(**kwargs, tvd_args=TVDArguments(**gce))
    elif name == "train_step_tvd_trainer_chunked":
        chunked = TVDArguments(**gce, loss_impl="chunked", chunked_backend=s.chunked_backend)
        trainer = TVDTrainer(**kwargs, tvd_args=chunked)
    else:
        trainer = Trainer(**kwargs)
    gc.collect()
    if s.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        meter = _PeakRSS()
    trainer.train()
    if s.device.startswith("cuda"):
        memory = {"extra_peak_bytes": torch.cuda.max_memory_allocated() - before, "method": "cuda_max_allocated"}
    else:
        memory = meter.result()
    # Memory includes the optimizer state created at the first step, alike for both trainers.
    return {**memory, "step_seconds": timer.times[1:] or timer.times}


# ------------------------------------------------------------------------------------------------ precision


def precision_inputs(
    dtype: torch.dtype, tokens: int, vocab: int, hidden: int, *, seed: int = 0, ignore_fraction: float = 0.1
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(hidden [N, d], weight [V, d], labels [N])`` in ``dtype``, shaped and scaled like a real model's head.

    Hidden states ~ N(0, 1) per dimension (the output of the final norm), weight rows of norm ~3 so that logits have
    a standard deviation of about 3; each target's logit is raised by a margin uniform in [4, 26], so that target
    probabilities range from ~1/V to near 1 as in training (a uniform random target alone would sit at p ≈ 1/V,
    all at the floor b); ``ignore_fraction`` of the labels set to -100.
    """
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(vocab, hidden, generator=g) * (3.0 / hidden**0.5)
    labels = torch.randint(0, vocab, (tokens,), generator=g)
    # raise each target's logit by a margin uniform in [4, 26] (no [N, V] work needed)
    target_rows = w[labels]
    margin = 4.0 + torch.rand(tokens, 1, generator=g) * 22.0
    h = torch.randn(tokens, hidden, generator=g) + margin * target_rows / target_rows.square().sum(-1, keepdim=True)
    labels[torch.rand(tokens, generator=g) < ignore_fraction] = IGNORE_INDEX
    return h.to(dtype), w.to(dtype), labels


def precision_errors(
    dtype: torch.dtype,
    tokens: int,
    vocab: int,
    hidden: int,
    *,
    gamma: float = 0.5,
    min_weight: float = 0.2,
    label_smoothing: float = 0.1,
    seed: int = 0,
    loss_scale: float | None = None,
) -> dict[str, dict[str, float]]:
    """Errors of the logits path and the chunked path in ``dtype`` against the float64 reference.

    ``loss_scale`` multiplies the loss before backward and divides the gradients after, as fp16 training does
    (``GradScaler``): default 2**16 for fp16 (without it, gradients w.r.t. the logits of a mean over N tokens,
    ~p_v / N, fall into fp16's subnormals), 1 otherwise.

    The reference is the exact (float64) γ-CE of the same low-precision hidden states and weight
    (:func:`~hf_tvd_loss.ops.reference.linear_gamma_cross_entropy_reference`), so the errors are those of the
    computation: the logits rounded to ``dtype`` by the model's matmul, the loss math, and the gradient matmuls
    in ``dtype``. Logits path: ``F.linear`` in ``dtype`` (what the model's lm_head does), then
    :func:`~hf_tvd_loss.ops.gamma_cross_entropy`, its gradient w.r.t. the logits (in ``dtype``), and the lm_head
    backward's two matmuls in ``dtype``. Chunked path:
    :func:`~hf_tvd_loss.ops.linear_gamma_cross_entropy` (impl="torch").

    Returns ``{path: {loss_rel_err, grad_hidden_rel_err, grad_weight_rel_err, seconds}}``; gradient errors are
    normwise, ``‖g - g_ref‖₂ / ‖g_ref‖₂``; ``reference`` holds the reference's loss and time.
    """
    from hf_tvd_loss.ops.reference import linear_gamma_cross_entropy_reference

    h, w, labels = precision_inputs(dtype, tokens, vocab, hidden, seed=seed)
    options = dict(gamma=gamma, min_weight=min_weight, label_smoothing=label_smoothing)
    scale = loss_scale if loss_scale is not None else (2.0**16 if dtype == torch.float16 else 1.0)
    t0 = time.perf_counter()
    ref_loss, ref_gh, ref_gw = linear_gamma_cross_entropy_reference(h, w, labels, **options)
    results: dict[str, dict[str, float]] = {
        "reference": {"loss": float(ref_loss), "seconds": time.perf_counter() - t0, "loss_scale": scale}
    }

    def rel(a: torch.Tensor, b: torch.Tensor) -> float:
        return float(torch.linalg.vector_norm(a.double() - b) / torch.linalg.vector_norm(b))

    for path in ("logits", "chunked"):
        hl, wl = h.clone().requires_grad_(), w.clone().requires_grad_()
        t0 = time.perf_counter()
        if path == "logits":
            logits = F.linear(hl, wl).detach().requires_grad_()
            loss = gamma_cross_entropy(logits, labels, **options)
            (grad_logits,) = torch.autograd.grad(loss * scale, logits)
            # what autograd's lm_head backward computes, in dtype; ``weight`` as a column-major right operand
            # because torch's CPU fp16 matmul is ~100x slower (and measured less accurate) with a row-major one
            gh = torch.mm(grad_logits, w.t().contiguous().t())
            gw = torch.mm(grad_logits.t(), h)
            del logits, grad_logits
        else:
            loss = linear_gamma_cross_entropy(hl, wl, labels, **options)
            gh, gw = torch.autograd.grad(loss * scale, (hl, wl))
        gh, gw = gh.double() / scale, gw.double() / scale
        results[path] = {
            "loss_rel_err": abs(float(loss.detach()) - float(ref_loss)) / abs(float(ref_loss)),
            "grad_hidden_rel_err": rel(gh, ref_gh),
            "grad_weight_rel_err": rel(gw, ref_gw),
            "seconds": time.perf_counter() - t0,
        }
        del hl, wl, gh, gw, loss
    return results


# ------------------------------------------------------------------------------------------------ driver


def _environment(s: Settings) -> dict[str, Any]:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    device = torch.cuda.get_device_name(s.device) if s.device.startswith("cuda") else f"CPU: {cpu}"
    return {
        "device": device,
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": importlib.metadata.version("transformers"),  # without importing it (seconds)
        "python": platform.python_version(),
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        # Other processes on the machine skew timings: the 1-minute load average at the end of the run.
        "load_average_1min": os.getloadavg()[0],
    }


def run(
    s: Settings, variants: tuple[str, ...], train_step: bool, jobs: int = 2, parallel_train: bool = False
) -> dict[str, Any]:
    """Time every variant in this process, measure memory in subprocesses, and return the results dict."""
    results: dict[str, dict[str, Any]] = {}
    for group, names in (("logits", LOGIT_VARIANTS), ("hidden", (*HIDDEN_VARIANTS, *KERNEL_VARIANTS))):
        names = tuple(n for n in names if n in variants)
        if not names:
            continue
        inputs = _make_inputs(s, group)
        leaves = [t for t in inputs.values() if t.requires_grad]
        references = _references(inputs, names, s, group)
        fns = {n: _loss_fn(n, s, inputs) for n in names}
        times: dict[str, list[float]] = {n: [] for n in names}
        values: dict[str, float] = {}
        for n in names:  # warm-up
            values[n] = _step(fns[n], leaves)
        for _ in range(s.repeats):
            for n in names:  # round-robin
                _sync(s.device)
                t0 = time.perf_counter()
                _step(fns[n], leaves)
                _sync(s.device)
                times[n].append(time.perf_counter() - t0)
        for n in names:
            results[n] = {
                "group": group,
                "seconds": times[n],
                "median_s": statistics.median(times[n]),
                "min_s": min(times[n]),
                "loss": values[n],
                "abs_err_vs_float64": abs(values[n] - references[n]),
            }
        del inputs, leaves, fns
        gc.collect()
        if s.device.startswith("cuda"):
            torch.cuda.empty_cache()  # the memory subprocesses below share this GPU
    # Memory children are not timed, so they may run side by side (each reads only its own process's RSS).
    # The training-step children are timed: they run one at a time after the others, unless the run is a smoke
    # test (``parallel_train``), where everything runs at once.
    memory_names = list(results)
    train_names = [*TRAIN_VARIANTS, *(METRICS_TRAIN_VARIANTS if s.train_metrics else ())] if train_step else []
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        # Longest first (the training children import transformers), so that the pool ends together.
        order = (train_names if parallel_train else []) + memory_names
        pending = {n: pool.submit(_run_child, n, s) for n in order}
        children = {n: future.result() for n, future in pending.items()}
    for n in train_names:
        if n not in children:
            children[n] = _run_child(n, s)
    for n in memory_names:
        results[n].update(children[n])
    for n in train_names:
        child = children[n]
        results[n] = {"group": "train", **child, "seconds": child.pop("step_seconds")}
        results[n]["median_s"] = statistics.median(results[n]["seconds"])
        results[n]["min_s"] = min(results[n]["seconds"])
    for n, r in results.items():
        base = results.get(BASELINE[n])
        r["baseline"] = BASELINE[n]
        r["time_ratio"] = r["median_s"] / base["median_s"] if base else None
        # The fastest repeat is the least disturbed by other processes on a shared machine.
        r["min_time_ratio"] = r["min_s"] / base["min_s"] if base else None
        r["memory_ratio"] = (
            r["extra_peak_bytes"] / base["extra_peak_bytes"] if base and base["extra_peak_bytes"] > 0 else None
        )
    return {"settings": asdict(s), "environment": _environment(s), "results": results}


def to_markdown(report: dict[str, Any]) -> str:
    """One run's report as markdown: settings, environment and the ``full`` table of :mod:`benchmarks.results`."""
    s, env = report["settings"], report["environment"]
    lines = [
        f"Device: {env['device']} ({env['cpu_threads']} threads); torch {env['torch']}, transformers "
        f"{env['transformers']}, Python {env['python']}; {env['date_utc']} UTC; load average "
        f"{env['load_average_1min']:.2f} at the end.",
        f"N = {s['tokens']} tokens, V = {s['vocab']}, d = {s['hidden']}, dtype {s['dtype']}, device {s['device']}, "
        f"{s['repeats']} repeats (median), γ = {s['gamma']}, b = {s['min_weight']}, ε = {s['label_smoothing']}, "
        f"{s['ignore_fraction']:.0%} of labels ignored; fused chunk size "
        f"{s.get('chunk_size') or 'auto'}.",
        "",
        *results.LAYOUTS["full"]({"this run": results.report_rows(report, run="this run")}),
    ]
    if "train_step_tvd_trainer" in report["results"]:
        model = (
            f"`{os.path.basename(os.path.normpath(s['train_model']))}` (pretrained checkpoint)"
            if s.get("train_model")
            else f"tiny Llama (2 layers, d = {s['hidden']}, V = {s['vocab']})"
        )
        lines += [
            "",
            f"Training steps: {model}, batch {s['train_batch']} × "
            f"{s['train_seq_len']} tokens, {s['train_steps']} steps, median over all but the first; memory "
            f"includes the optimizer state; the chunked step uses chunked_backend="
            f"{s.get('chunked_backend', 'torch')!r}.",
        ]
    return "\n".join(lines) + "\n"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, default=2048, help="N: number of token rows")
    p.add_argument("--vocab", type=int, default=32000, help="V: vocabulary size")
    p.add_argument("--hidden", type=int, default=512, help="d: hidden size for the fused-linear and train-step runs")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--repeats", type=int, default=5, help="timed forward+backward passes per variant")
    p.add_argument("--gamma", type=float, default=0.1)
    p.add_argument("--min-weight", type=float, default=0.3)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--ignore-fraction", type=float, default=0.05, help="fraction of labels set to -100")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--variants",
        default=None,
        help="comma-separated subset of: "
        + ", ".join((*LOGIT_VARIANTS, *HIDDEN_VARIANTS, *KERNEL_VARIANTS))
        + " (default: all that can run on the device; the kernel variants need CUDA and their package)",
    )
    p.add_argument(
        "--chunked-backend",
        choices=("torch", "cce", "liger", "torch_linear_ce", "auto"),
        default="torch",
        help="chunked_backend of the loss_impl='chunked' training step",
    )
    p.add_argument(
        "--chunk-size", type=int, default=None, help="token rows per chunk of the fused path (default: auto)"
    )
    p.add_argument("--no-train-step", action="store_true", help="skip the TVDTrainer vs Trainer step comparison")
    p.add_argument("--train-steps", type=int, default=6, help="training steps per trainer (the first is not timed)")
    p.add_argument("--train-batch", type=int, default=8)
    p.add_argument("--train-seq-len", type=int, default=128)
    p.add_argument(
        "--train-model",
        default=None,
        help="local causal-LM checkpoint folder for the training steps (e.g. the SmolLM2 of scripts/prepare_model.py)"
        "; default: a tiny Llama built from a config with --vocab / --hidden",
    )
    p.add_argument(
        "--train-metrics",
        action="store_true",
        help="also time both TVDTrainer steps with TVDArguments(extra_metrics=True) (accuracy, entropy, calibration)",
    )
    p.add_argument("--jobs", type=int, default=2, help="memory-measuring subprocesses run at once (not timed)")
    p.add_argument(
        "--quick", action="store_true", help="tiny shapes and 2 repeats, subprocesses in parallel (smoke test)"
    )
    p.add_argument(
        "--results",
        default=None,
        help=f"JSON-lines file the run's rows are appended to (default: {results.DEFAULT_RESULTS}, unless --out is "
        "given); with --table, the file the tables are made from",
    )
    p.add_argument(
        "--run",
        default=None,
        help="label of this run's rows in the results file, new to it (default: device, shape, dtype and the time)",
    )
    p.add_argument(
        "--out", help="also write this run as bench.json and bench.md into this directory (alone: nothing appended)"
    )
    p.add_argument(
        "--table",
        action="store_true",
        help="measure nothing: regenerate the tables between bench-table markers in --markdown from --results",
    )
    p.add_argument("--markdown", default=results.DEFAULT_MARKDOWN, help="the file --table rewrites")
    p.add_argument("--check", action="store_true", help="with --table: write nothing, exit 1 if a table is stale")
    p.add_argument(
        "--precision",
        action="store_true",
        help="instead of timing: errors of the logits and chunked paths in --dtype (bfloat16 / float16) against the "
        "float64 reference at --tokens / --vocab / --hidden (see precision_errors); writes precision.json",
    )
    p.add_argument("--_child", help=argparse.SUPPRESS)
    p.add_argument("--_settings", help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    args = _parser().parse_args(argv)
    if args._child:
        print(json.dumps(_memory_child(args._child, Settings(**json.loads(args._settings)))))
        return None
    if args.table:
        return _write_tables(args.results or results.DEFAULT_RESULTS, args.markdown, check=args.check)
    if args.precision:
        if not args.out:
            raise SystemExit("python -m benchmarks.bench --precision: error: --out DIR is required")
        options = dict(gamma=args.gamma, min_weight=args.min_weight, label_smoothing=args.label_smoothing)
        report = {
            "command": "python -m benchmarks.bench " + " ".join(sys.argv[1:] if argv is None else argv),
            "settings": dict(tokens=args.tokens, vocab=args.vocab, hidden=args.hidden, dtype=args.dtype, **options),
            "results": precision_errors(
                getattr(torch, args.dtype), args.tokens, args.vocab, args.hidden, seed=args.seed, **options
            ),  # fmt: skip
        }
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "precision.json"), "w") as f:
            json.dump(report, f, indent=2)
        print(json.dumps(report, indent=2))
        return report
    results_path = args.results if args.results or args.out else results.DEFAULT_RESULTS
    if args.quick:
        args.tokens, args.vocab, args.hidden, args.repeats = 64, 512, 32, 2
        args.train_steps, args.train_batch, args.train_seq_len = 3, 2, 16
    known = (*LOGIT_VARIANTS, *HIDDEN_VARIANTS, *KERNEL_VARIANTS)
    if args.variants is None:
        usable = tuple(n for n in KERNEL_VARIANTS if kernel_variant_problem(n, args.device) is None)
        variants = (*LOGIT_VARIANTS, *HIDDEN_VARIANTS, *usable)
    else:
        variants = tuple(v for v in args.variants.split(",") if v)
    unknown = sorted(set(variants) - set(known))
    if unknown:
        raise ValueError(f"unknown --variants {unknown}; choose from {known}")
    for name in variants:
        problem = kernel_variant_problem(name, args.device) if name in KERNEL_VARIANTS else None
        if problem:
            raise ValueError(f"--variants {name} cannot run: {problem}")
    for name in ("tokens", "vocab", "hidden", "repeats", "train_steps", "train_batch", "train_seq_len"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be a positive integer")
    if args.train_model is not None and not os.path.isfile(os.path.join(args.train_model, "config.json")):
        raise ValueError(f"--train-model {args.train_model!r} is not a checkpoint folder (no config.json in it)")
    settings = Settings(
        tokens=args.tokens, vocab=args.vocab, hidden=args.hidden, dtype=args.dtype, device=args.device,
        repeats=args.repeats, gamma=args.gamma, min_weight=args.min_weight, label_smoothing=args.label_smoothing,
        ignore_fraction=args.ignore_fraction, seed=args.seed, train_steps=args.train_steps,
        train_batch=args.train_batch, train_seq_len=args.train_seq_len, chunk_size=args.chunk_size,
        chunked_backend=args.chunked_backend, train_model=args.train_model, train_metrics=args.train_metrics,
    )  # fmt: skip
    run_label = args.run or "{}_n{}_v{}_{}_{}".format(
        settings.device.split(":")[0], settings.tokens, settings.vocab, settings.dtype, time.strftime("%Y%m%dT%H%M%S")
    )
    if results_path and any(row["run"] == run_label for row in results.read_rows(results_path)):
        raise ValueError(f"--run {run_label!r} is already in {results_path}; choose a new label")
    jobs = max(1, args.jobs)
    report = run(settings, variants, train_step=not args.no_train_step, jobs=jobs, parallel_train=args.quick)
    report["command"] = "python -m benchmarks.bench " + " ".join(sys.argv[1:] if argv is None else argv)
    markdown = to_markdown(report)
    if results_path:
        results.append_rows(results_path, results.report_rows(report, run_label))
        print(f"appended {len(report['results'])} rows as run {run_label!r} to {results_path}")
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "bench.json"), "w") as f:
            json.dump(report, f, indent=2)
        with open(os.path.join(args.out, "bench.md"), "w") as f:
            f.write(markdown)
    print(markdown)
    return report


def _write_tables(results_path: str, markdown_path: str, *, check: bool) -> None:
    """Regenerate the tables of ``markdown_path`` from ``results_path`` (with ``check``: only compare)."""
    with open(markdown_path, encoding="utf-8") as f:
        text = f.read()
    updated = results.update_markdown(text, results.read_rows(results_path))
    if check:
        if updated != text:
            raise SystemExit(
                f"{markdown_path}: tables differ from {results_path}; run python -m benchmarks.bench --table"
            )
        print(f"{markdown_path}: tables match {results_path}")
    elif updated != text:
        with open(markdown_path, "w", encoding="utf-8") as f:
            f.write(updated)
        print(f"{markdown_path}: tables regenerated from {results_path}")
    else:
        print(f"{markdown_path}: tables already match {results_path}")


if __name__ == "__main__":
    main()
