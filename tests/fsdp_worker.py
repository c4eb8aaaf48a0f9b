"""Run by tests/test_fsdp.py under ``torchrun --nproc_per_node 2`` (CPU, gloo): FSDP2 (``fully_shard``) against
the unsharded model.

``grads OUT`` (with ``grads+zero3 OUT``, tests/zero3_worker.py's ZeRO-3 gradients follow in the same processes):
for every configuration (loss_impl × lm_head placement × reshard_after_forward × tied embeddings,
and a tiny BART), each process computes ``TVDTrainer.compute_loss`` on its half of a batch with the model sharded
over both processes, and the unsharded model computes the loss of the whole batch; the main process writes the
loss and the largest relative gradient error of every parameter to ``OUT/grads.json``.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tiny import PAD, VOCAB, is_seq2seq, tiny_model  # noqa: E402

TVD = {"gamma": 0.3, "min_weight": 0.1, "label_smoothing": 0.1}
V = 97  # the models' vocabulary (inputs use ids < tests/tiny.py's VOCAB)
CHUNK_ROWS = 4  # rows of logits per chunk in the chunked path (a batch half has 24 positions)


class LogitsWatch:
    """Records the most token rows of any ``[..., V]`` tensor an operation creates (``[d, V]`` weight views aside)."""

    def __init__(self, hidden_size: int) -> None:
        from torch.utils._python_dispatch import TorchDispatchMode

        watch = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                for t in out if isinstance(out, (tuple, list)) else (out,):
                    if torch.is_tensor(t) and t.dim() >= 2 and t.shape[-1] == V:
                        rows = t.numel() // V
                        if tuple(t.shape[:-1]) != (hidden_size,):
                            watch.max_rows = max(watch.max_rows, rows)
                return out

        self.mode = Mode()
        self.max_rows = 0


def _batch(family: str, rows: int = 4, seed: int = 1) -> dict[str, torch.Tensor]:
    """The same padded batch on every process (rows of different lengths, a masked prompt)."""
    g = torch.Generator().manual_seed(seed)
    length = 12
    ids = torch.randint(3, VOCAB, (rows, length), generator=g)
    mask = torch.ones(rows, length, dtype=torch.long)
    for r in range(rows):
        mask[r, length - r :] = 0  # row r has r padded positions at the end
    ids = ids.masked_fill(mask == 0, PAD)
    if is_seq2seq(family):
        labels = torch.randint(3, VOCAB, (rows, 7), generator=g)
        labels[1, 5:] = -100
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :3] = -100
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _count(family: str, labels: torch.Tensor) -> torch.Tensor:
    targets = labels if is_seq2seq(family) else labels[:, 1:]
    return targets.ne(-100).sum().float()


def _shard(model: torch.nn.Module, *, head_unit: bool, reshard: bool, tied: bool) -> None:
    """Each transformer block its own unit (as accelerate's TRANSFORMER_BASED_WRAP), lm_head optionally, then the root."""
    from torch.distributed.fsdp import fully_shard

    blocks = tuple(model._no_split_modules)
    for module in list(model.modules()):
        if type(module).__name__ in blocks:
            fully_shard(module, reshard_after_forward=reshard)
    if head_unit:
        # A tied weight must live in one unit: the input embedding and lm_head are then sharded together.
        modules = [model.get_input_embeddings(), model.lm_head] if tied else [model.lm_head]
        fully_shard(modules, reshard_after_forward=reshard)
    fully_shard(model, reshard_after_forward=reshard)


def _tiny(family: str, tied: bool) -> torch.nn.Module:
    """tests/tiny.py's model with a vocabulary of its own size (no other dimension equals it: see LogitsWatch)."""
    config = copy.deepcopy(tiny_model(family).config)
    config.vocab_size = V
    config.tie_word_embeddings = tied
    torch.manual_seed(0)
    return type(tiny_model(family))(config)


def grads(out_dir: str) -> None:
    import torch.distributed as dist
    from transformers import Seq2SeqTrainingArguments

    from hf_tvd_loss import TVDArguments, TVDSeq2SeqTrainer, TVDTrainer

    args = Seq2SeqTrainingArguments(output_dir=out_dir, use_cpu=True, report_to="none", disable_tqdm=True)
    rank, world = args.process_index, args.world_size
    assert world == 2 and dist.is_initialized(), (world, dist.is_initialized())
    configs = [
        dict(family="llama", impl=impl, head_unit=head_unit, reshard=reshard, tied=tied)
        for impl, head_unit, reshard, tied in itertools.product(
            ("logits", "chunked"), (False, True), (True, False), (False, True)
        )
    ] + [
        dict(family=family, impl=impl, head_unit=False, reshard=True, tied=True)
        for family in ("bart", "t5")
        for impl in ("logits", "chunked")
    ]
    # FSDP1 (FullyShardedDataParallel, use_orig_params so that the full gradients can be summoned), lm_head in the
    # root unit or wrapped on its own.
    configs += [
        dict(family="llama", impl="chunked", head_unit=head_unit, reshard=True, tied=False, engine="fsdp1")
        for head_unit in (False, True)
    ]
    from hf_tvd_loss.ops import common

    common.CHUNK_ELEMENTS = CHUNK_ROWS * V
    results = []
    for config in configs:
        family = config["family"]
        reference = _tiny(family, config["tied"])
        model = copy.deepcopy(reference)
        if config.get("engine") == "fsdp1":
            from torch.distributed.fsdp import FullyShardedDataParallel

            cpu = torch.device("cpu")
            if config["head_unit"]:
                model.lm_head = FullyShardedDataParallel(model.lm_head, use_orig_params=True, device_id=cpu)
            model = FullyShardedDataParallel(model, use_orig_params=True, device_id=cpu)
        else:
            _shard(model, head_unit=config["head_unit"], reshard=config["reshard"], tied=config["tied"])
        trainer_cls = TVDSeq2SeqTrainer if is_seq2seq(family) else TVDTrainer
        trainer = trainer_cls(model=reference, args=args, tvd_args=TVDArguments(**TVD, loss_impl=config["impl"]))
        batch = _batch(family)
        total = _count(family, batch["labels"])
        # The unsharded model, whole batch, one process: the judge (always on the logits path).
        reference_trainer = trainer_cls(model=reference, args=args, tvd_args=TVDArguments(**TVD))
        # compute_loss multiplies by the number of processes (DDP/FSDP average gradients): undo it here.
        ref_loss = reference_trainer.compute_loss(reference, batch, num_items_in_batch=total) / world
        ref_loss.backward()
        half = {k: v[rank * 2 : rank * 2 + 2] for k, v in batch.items()}
        loss = trainer.compute_loss(model, half, num_items_in_batch=total)
        loss.backward()
        # Each process's loss is its share × world (FSDP averages gradients); their mean is the global loss.
        global_loss = loss.detach().clone()
        dist.all_reduce(global_loss)
        global_loss /= world
        errors, scales = {}, {}
        ref_params = dict(reference.named_parameters())
        with contextlib.ExitStack() as stack:
            if config.get("engine") == "fsdp1":
                stack.enter_context(type(model).summon_full_params(model, with_grads=True))
            for name, param in model.named_parameters():
                name = name.replace("_fsdp_wrapped_module.", "")
                grad = param.grad.full_tensor() if hasattr(param.grad, "full_tensor") else param.grad
                expected = ref_params[name].grad
                errors[name] = float((grad.reshape(expected.shape) - expected).abs().max())
                scales[name] = float(expected.abs().max())
        # A second step (the head is verified by now) watched for [tokens, V] tensors.
        model.zero_grad(set_to_none=True)
        watch = LogitsWatch(reference.config.hidden_size)
        with watch.mode:
            trainer.compute_loss(model, half, num_items_in_batch=total).backward()
        results.append(
            {
                **config,
                "loss": float(global_loss),
                "ref_loss": float(ref_loss.detach()),
                "grad_errors": errors,
                "grad_scales": scales,
                "max_logit_rows": watch.max_rows,
                "head_class": type(model.lm_head).__name__,
                "model_class": type(model).__name__,
            }
        )
        del trainer, reference_trainer
    results.append(_tensor_parallel_refusal(args))
    results.append(_fsdp_on_cpu_refusal(out_dir))
    if rank == 0:
        with open(os.path.join(out_dir, "grads.json"), "w") as f:
            json.dump(results, f, indent=1)


def _tensor_parallel_refusal(args) -> dict:
    """lm_head tensor-parallel over the vocabulary (its weight a DTensor inside its forward): refused, named."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.parallel import ColwiseParallel, parallelize_module

    from hf_tvd_loss import TVDArguments, TVDTrainer

    model = _tiny("llama", tied=False)
    parallelize_module(model, init_device_mesh("cpu", (args.world_size,)), {"lm_head": ColwiseParallel()})
    trainer = TVDTrainer(model=_tiny("llama", False), args=args, tvd_args=TVDArguments(**TVD, loss_impl="chunked"))
    batch = _batch("llama")
    try:
        trainer.compute_loss(model, batch, num_items_in_batch=_count("llama", batch["labels"]))
        error = None
    except ValueError as exc:
        error = str(exc)
    return {"engine": "tensor_parallel", "error": error}


def _fsdp_on_cpu_refusal(out_dir: str) -> dict:
    """TrainingArguments(fsdp=..., use_cpu=True) on 2 processes: accelerate would train with DDP; refused, named."""
    from transformers import TrainingArguments

    from hf_tvd_loss import TVDTrainer

    args = TrainingArguments(output_dir=out_dir, use_cpu=True, report_to="none", fsdp=True)
    try:
        TVDTrainer(model=_tiny("llama", False), args=args)
        error = None
    except ValueError as exc:
        error = str(exc)
    return {"engine": "fsdp_on_cpu", "error": error}


# ---------------------------------------------------------------------------------------------- a full Trainer run
def _fsdp_on_cpu(trainer_cls):
    """``trainer_cls`` whose accelerator takes its FSDP plugin on CPU.

    accelerate 1.15 (``AcceleratorState.__init__`` in accelerate/state.py) switches to ``DistributedType.FSDP`` only
    when the process group's type is MULTI_GPU (or another accelerator's), never MULTI_CPU: with ``use_cpu`` the
    plugin is dropped and the model is wrapped in DistributedDataParallel. Declaring the CPU group MULTI_GPU just
    before the accelerator is created makes accelerate take the FSDP2 path it takes on GPUs (``fsdp2_prepare_model``,
    FSDP checkpointing); the device stays the CPU and the backend gloo.
    """

    class OnCPU(trainer_cls):
        def create_accelerator_and_postprocess(self):
            from accelerate.state import PartialState
            from accelerate.utils import DistributedType

            state = PartialState()
            if state.distributed_type == DistributedType.MULTI_CPU:
                state._shared_state["distributed_type"] = DistributedType.MULTI_GPU
            super().create_accelerator_and_postprocess()
            assert self.accelerator.distributed_type == DistributedType.FSDP and self.accelerator.is_fsdp2

    return OnCPU


def _engine_arguments(engine: str, model: torch.nn.Module) -> dict:
    if engine == "fsdp2":
        return {
            "fsdp": True,
            "fsdp_config": {
                "version": 2,
                "transformer_layer_cls_to_wrap": list(model._no_split_modules),
                "reshard_after_forward": True,
                "state_dict_type": "FULL_STATE_DICT",
            },
        }
    if engine.endswith("accelerate-config"):  # settings from `accelerate launch --config_file ...` (environment)
        return {}
    if engine == "zero3":
        # Under torchrun with use_cpu, TrainingArguments(deepspeed=...) does give DeepSpeed's engine (measured).
        zero = {"stage": 3, "stage3_param_persistence_threshold": 0, "stage3_gather_16bit_weights_on_model_save": True}
        return {
            "deepspeed": {
                "train_micro_batch_size_per_gpu": "auto",
                "gradient_accumulation_steps": "auto",
                "gradient_clipping": "auto",
                "zero_optimization": zero,
            }
        }
    raise ValueError(engine)


def train(out_dir: str, family: str, impl: str, engine: str = "fsdp2") -> None:
    """FSDP2 (or DeepSpeed ZeRO-3: ``engine="zero3"``) through the Trainer, 4 per process × 2 processes × 2
    accumulation (= batch 16), 4 steps, checkpoints every 2 steps; then a second run resumed from the first run's
    step-2 checkpoint. Writes ``OUT/<run>.json`` (log history, world size, engine) and ``OUT/<run>.pt`` (the final
    parameters, gathered) for both."""
    from tiny import collator, tiny_dataset
    from transformers import Seq2SeqTrainingArguments

    from hf_tvd_loss import TVDArguments, TVDSeq2SeqTrainer, TVDTrainer

    for run, resume_from in (("full", None), ("resumed", os.path.join(out_dir, "full", "checkpoint-2"))):
        model = tiny_model(family)
        args = Seq2SeqTrainingArguments(
            output_dir=os.path.join(out_dir, run),
            per_device_train_batch_size=4,
            gradient_accumulation_steps=2,
            max_steps=4,
            learning_rate=1e-2,
            lr_scheduler_type="constant",
            optim="adamw_torch",
            weight_decay=0.0,
            max_grad_norm=1e9,
            logging_steps=1,
            save_strategy="steps",
            save_steps=2,
            report_to="none",
            use_cpu=True,
            seed=0,
            data_seed=0,
            dataloader_num_workers=0,
            disable_tqdm=True,
            **_engine_arguments(engine, model),
        )
        trainer_cls = TVDSeq2SeqTrainer if is_seq2seq(family) else TVDTrainer
        if engine.startswith("fsdp2"):
            trainer_cls = _fsdp_on_cpu(trainer_cls)
        trainer = trainer_cls(
            model=model,
            args=args,
            train_dataset=tiny_dataset(family),
            data_collator=collator(family),
            tvd_args=TVDArguments(**TVD, loss_impl=impl),
        )
        trainer.train(resume_from_checkpoint=resume_from)
        wrapped = trainer.model_wrapped
        state = trainer.accelerator.get_state_dict(wrapped)  # the full state dict, gathered on the main process
        if trainer.args.process_index == 0:
            torch.save({k: v.detach().cpu().clone() for k, v in state.items()}, os.path.join(out_dir, f"{run}.pt"))
            with open(os.path.join(out_dir, f"{run}.json"), "w") as f:
                json.dump(
                    {
                        "history": trainer.state.log_history,
                        "world_size": trainer.args.world_size,
                        "distributed_type": str(trainer.accelerator.distributed_type),
                        "model_class": type(wrapped).__name__,
                        "head_class": type(wrapped.lm_head).__name__,
                        "checkpoints": sorted(os.listdir(args.output_dir)),
                        "chunked_head_verified": bool(trainer._tvd_head and trainer._tvd_head[1].verified),
                    },
                    f,
                )


def zero3(out_dir: str) -> None:
    """tests/zero3_worker.py's DeepSpeed ZeRO-3 gradients (``OUT/zero3.json``), in this launch's process group."""
    import zero3_worker

    zero3_worker.main(out_dir)


if __name__ == "__main__":
    # "grads+zero3 OUT": several modes in one launch (tests/conftest.py sharded_gradient_runs), in the order given
    # Each mode starts from the launch's environment: TrainingArguments(fsdp=...) (grads' FSDP-on-CPU refusal) leaves
    # ACCELERATE_USE_FSDP and FSDP_* set in os.environ, which a later TrainingArguments would read.
    environment = dict(os.environ)
    for mode in sys.argv[1].split("+"):
        os.environ.clear()
        os.environ.update(environment)
        {"grads": grads, "train": train, "zero3": zero3}[mode](*sys.argv[2:])
    import torch.distributed as dist

    if dist.is_initialized():  # an orderly teardown: a process exiting with the gloo group alive can abort
        dist.barrier()
        dist.destroy_process_group()
