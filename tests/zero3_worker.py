"""Run (``main``) by tests/fsdp_worker.py ``zero3`` for tests/test_zero3.py, or alone, under ``torchrun --nproc_per_node 2`` with ``DS_ACCELERATOR=cpu``: DeepSpeed ZeRO-3
on CPU (gloo) against the unsharded model.

For each configuration (Llama untied / tied, BART with loss_impl chunked; Llama untied with logits) the model is partitioned by
``deepspeed.initialize`` (stage 3), each process computes ``TVDTrainer.compute_loss`` on its half of a batch, and
the main process writes the global loss, the unsharded model's loss and every parameter's largest gradient error
(``safe_get_full_grad``) to ``OUT/zero3.json``; also the size of ``lm_head.weight`` as seen after the forward.
"""

from __future__ import annotations

import copy
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fsdp_worker import TVD, _batch, _count  # noqa: E402
from tiny import is_seq2seq, tiny_model  # noqa: E402

CONFIGS = (
    ("llama", False, "logits"),
    ("llama", False, "chunked"),
    ("llama", True, "chunked"),
    ("bart", True, "chunked"),
)


def main(out_dir: str) -> None:
    import deepspeed
    import torch.distributed as dist
    from deepspeed.utils import safe_get_full_grad
    from transformers import Seq2SeqTrainingArguments

    from hf_tvd_loss import TVDArguments, TVDSeq2SeqTrainer, TVDTrainer

    deepspeed.init_distributed(dist_backend="gloo")
    args = Seq2SeqTrainingArguments(output_dir=out_dir, use_cpu=True, report_to="none", disable_tqdm=True)
    rank, world = dist.get_rank(), dist.get_world_size()
    ds_config = {
        "train_micro_batch_size_per_gpu": 2,
        "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
        "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "torch_adam": True}},
    }
    results = []
    # The logits path once (the harness itself is exact), the chunked path on each model.
    for family, tied, impl in CONFIGS:
        reference = tiny_model(family)
        if family == "llama" and tied:
            reference.config.tie_word_embeddings = True
            reference.tie_weights()
        model = copy.deepcopy(reference)
        engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=ds_config)
        trainer_cls = TVDSeq2SeqTrainer if is_seq2seq(family) else TVDTrainer
        trainer = trainer_cls(model=reference, args=args, tvd_args=TVDArguments(**TVD, loss_impl=impl))
        batch = _batch(family)
        total = _count(family, batch["labels"])
        # The judge: the unsharded model on the whole batch, logits path (compute_loss multiplies by the processes).
        judge = trainer_cls(model=reference, args=args, tvd_args=TVDArguments(**TVD))
        ref_loss = judge.compute_loss(reference, batch, num_items_in_batch=total) / world
        ref_loss.backward()
        half = {k: v[rank * 2 : rank * 2 + 2] for k, v in batch.items()}
        loss = trainer.compute_loss(engine, half, num_items_in_batch=total)
        head_numel_after_forward = model.lm_head.weight.numel()
        engine.backward(loss)
        global_loss = loss.detach().clone()
        dist.all_reduce(global_loss)
        errors, scales = {}, {}
        ref_params = dict(reference.named_parameters())
        for name, param in model.named_parameters():
            grad = safe_get_full_grad(param)
            expected = ref_params[name].grad
            errors[name] = float((grad.reshape(expected.shape) - expected).abs().max())
            scales[name] = float(expected.abs().max())
        results.append(
            {
                "family": family,
                "tied": tied,
                "impl": impl,
                "loss": float(global_loss / world),
                "ref_loss": float(ref_loss.detach()),
                "grad_errors": errors,
                "grad_scales": scales,
                "head_numel_after_forward": head_numel_after_forward,
                "engine": type(engine).__name__,
            }
        )
        engine.destroy()
    if rank == 0:
        with open(os.path.join(out_dir, "zero3.json"), "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
    import torch.distributed as dist

    if dist.is_initialized():  # an orderly teardown: a process exiting with the gloo group alive can abort
        dist.barrier()
        dist.destroy_process_group()
