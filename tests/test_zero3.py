"""The chunked loss under a parameter-freeing engine like DeepSpeed ZeRO-3, on one CPU process.

:class:`FreeAfterForward` is a stand-in for ZeRO-3's parameter management: every module's own parameters are
"partitioned" (their ``.data`` replaced by an empty tensor) except while the module runs. A forward pre-hook
materialises them, a forward hook frees them again and wraps the module's outputs in an autograd function that
re-materialises them when backward reaches the module (ZeRO-3 does the same with its pre-backward hooks on
module outputs). Reading ``lm_head.weight`` after the model's forward therefore gives an empty tensor, as it gives
ZeRO-3's placeholder; the chunked loss, which runs inside the head's forward, must not notice.
DeepSpeed's own ZeRO-3 on CPU: docs/DISTRIBUTED.md.
"""

from __future__ import annotations

import copy

import pytest
import torch
from tiny import tiny_model
from torch import nn

TVD = {"gamma": 0.3, "min_weight": 0.1, "label_smoothing": 0.1}


class _Rematerialise(torch.autograd.Function):
    """Identity in forward; in backward, gives the module its parameters back before its own backward runs."""

    @staticmethod
    def forward(ctx, engine, module, *tensors):  # type: ignore[override]
        ctx.engine, ctx.module = engine, module
        return tensors if len(tensors) > 1 else tensors[0]

    @staticmethod
    def backward(ctx, *grads):  # type: ignore[override]
        ctx.engine.gather(ctx.module)
        return (None, None, *grads)


class FreeAfterForward:
    """Partitions every parameter of ``model``; each module holds its own parameters only while it runs."""

    def __init__(self, model: nn.Module) -> None:
        self.full: dict[nn.Parameter, torch.Tensor] = {}
        self.gathers = 0
        for module in model.modules():
            if any(True for _ in module.parameters(recurse=False)):
                module.register_forward_pre_hook(lambda m, args: self.gather(m))
                module.register_forward_hook(self._after_forward)
        for param in model.parameters():
            self.full[param] = param.data
            param.data = torch.empty(0, dtype=param.dtype)

    def gather(self, module: nn.Module) -> None:
        self.gathers += 1
        for param in module.parameters(recurse=False):
            param.data = self.full[param]

    def release(self, module: nn.Module) -> None:
        for param in module.parameters(recurse=False):
            param.data = torch.empty(0, dtype=param.dtype)

    def _after_forward(self, module: nn.Module, args, output):
        self.release(module)
        if torch.is_grad_enabled() and torch.is_tensor(output) and output.requires_grad:
            return _Rematerialise.apply(self, module, output)
        if isinstance(output, tuple) and torch.is_grad_enabled():
            tensors = [i for i, t in enumerate(output) if torch.is_tensor(t) and t.requires_grad]
            if tensors:
                wrapped = _Rematerialise.apply(self, module, *(output[i] for i in tensors))
                wrapped = wrapped if isinstance(wrapped, tuple) else (wrapped,)
                output = list(output)
                for i, t in zip(tensors, wrapped):
                    output[i] = t
                return tuple(output)
        return output

    def gather_all(self) -> None:
        for param, data in self.full.items():
            param.data = data


def _batch(family: str) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 64, (3, 10), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    if family in ("t5", "bart"):
        labels = torch.randint(3, 64, (3, 6), generator=g)
        labels[2, 4:] = -100
    else:
        labels = ids.masked_fill(mask == 0, -100)
        labels[:, :2] = -100
    return {"input_ids": ids.masked_fill(mask == 0, 0), "attention_mask": mask, "labels": labels}


def _trainer(model, impl: str, tmp_path):
    from transformers import Seq2SeqTrainingArguments

    from hf_tvd_loss import TVDArguments, TVDSeq2SeqTrainer, TVDTrainer

    args = Seq2SeqTrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", disable_tqdm=True)
    cls = TVDSeq2SeqTrainer if model.config.is_encoder_decoder else TVDTrainer
    return cls(model=model, args=args, tvd_args=TVDArguments(**TVD, loss_impl=impl))


@pytest.mark.parametrize("family,tied", [("llama", False), ("llama", True), ("bart", True)])
def test_chunked_under_free_after_forward_equals_unsharded(family, tied, tmp_path):
    reference = tiny_model(family)
    if family == "llama" and tied:
        reference.config.tie_word_embeddings = True
        reference.tie_weights()
        assert reference.lm_head.weight is reference.get_input_embeddings().weight
    model = copy.deepcopy(reference)
    batch = _batch(family)
    ref_trainer = _trainer(reference, "logits", tmp_path)
    ref_loss = ref_trainer.compute_loss(reference, batch)
    ref_loss.backward()

    engine = FreeAfterForward(model)
    trainer = _trainer(reference, "chunked", tmp_path)  # compute_loss only reads the model it is given
    for step in range(2):  # the first step verifies the head (an extra no-grad forward), the second is plain
        model.zero_grad(set_to_none=True)
        loss = trainer.compute_loss(model, batch)
        assert model.lm_head.weight.numel() == 0  # partitioned again once the model's forward returned
        loss.backward()
        assert float(loss.detach()) == pytest.approx(float(ref_loss.detach()), rel=1e-5), step
        engine.gather_all()
        ref_params = dict(reference.named_parameters())
        for name, param in model.named_parameters():
            expected = ref_params[name].grad
            torch.testing.assert_close(param.grad, expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()) + 1e-9)
        for param in model.parameters():  # partition again for the next step
            param.data = torch.empty(0, dtype=param.dtype)
    assert engine.gathers > 0


def test_head_weight_after_forward_is_unusable_under_free_after_forward():
    """Why the loss must run inside the head's forward: after the model's forward the weight is a placeholder."""
    from hf_tvd_loss.ops import linear_gamma_cross_entropy

    model = tiny_model("llama")
    FreeAfterForward(model)
    batch = _batch("llama")
    hidden = model.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    assert hidden.shape[-1] == 32 and model.lm_head.weight.shape == (0,)
    with pytest.raises((RuntimeError, ValueError)):
        linear_gamma_cross_entropy(hidden, model.lm_head.weight, batch["labels"], gamma=0.3, shift_labels=True)


@pytest.fixture(scope="module")
def zero3_results(sharded_gradient_runs):
    # tests/conftest.py: zero3_worker.main runs in the same torchrun launch as tests/test_fsdp.py's gradients
    import json

    with open(sharded_gradient_runs / "zero3.json") as f:
        return json.load(f)


@pytest.mark.slow
def test_deepspeed_zero3_on_cpu_matches_unsharded(zero3_results):
    """DeepSpeed's real ZeRO-3 (2 CPU processes, gloo, DS_ACCELERATOR=cpu): tests/zero3_worker.py."""
    results = zero3_results
    from zero3_worker import CONFIGS

    assert [(r["family"], r["tied"], r["impl"]) for r in results] == list(CONFIGS)
    for r in results:
        assert r["engine"] == "DeepSpeedEngine"
        assert r["head_numel_after_forward"] == 0  # ZeRO-3 freed lm_head.weight right after its forward
        assert r["loss"] == pytest.approx(r["ref_loss"], rel=1e-5), r
        largest = max(r["grad_scales"].values())
        for name, error in r["grad_errors"].items():
            assert error <= 1e-5 * max(r["grad_scales"][name], 1e-2 * largest), (r["family"], r["impl"], name, error)


@pytest.mark.slow
def test_trainer_under_zero3_trains_saves_and_resumes_like_one_process(tmp_path):
    """TVDTrainer.train() under ``accelerate launch --config_file configs/accelerate/deepspeed_zero3.yaml`` on 2 CPU
    processes (DS_ACCELERATOR=cpu), chunked, checkpoints and a resume: the 1-process loss curve, the same final
    parameters. (TrainingArguments(deepspeed={ZeRO-3 dict}) under torchrun works the same: fsdp_worker ``zero3``.)"""
    from test_fsdp import check_trainer_run

    check_trainer_run(tmp_path, "zero3-accelerate-config", "DeepSpeedEngine", port=29618)
