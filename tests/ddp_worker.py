"""Run by tests/test_trainer_distributed.py under `accelerate launch --multi_gpu --num_processes 2` (CPU, gloo).

Trains each tiny family with 4 per device × 2 accumulation and saves, from the main process, the log history,
the final parameters and the world size the run really had.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tiny import train_tiny  # noqa: E402


def unscored(out_dir: str, case: str) -> None:
    """``all``: every label of the first step is -100 on both processes (must be refused on both, at once);
    ``one-shard``: only process 0's shard of the step is unscored (must train: process 1 has targets)."""
    from tiny import tiny_dataset

    rows = tiny_dataset("llama", n=4).to_list()
    for i, row in enumerate(rows):
        if case == "all" or i % 2 == 0:  # sequential order: batch i goes to process i % 2
            row["labels"] = [-100] * len(row["labels"])
    from datasets import Dataset

    result: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        try:
            _, _, trainer = train_tiny(
                "llama", tmp, per_device_batch=1, grad_accum=1, max_steps=2, dataset=Dataset.from_list(rows),
                extra_args={"train_sampling_strategy": "sequential"},
            )  # fmt: skip
            result = {
                "steps": trainer.state.global_step,
                "loss": [h["loss"] for h in trainer.state.log_history if "loss" in h],
            }
        except ValueError as error:
            result = {"error": str(error)}
    rank = int(os.environ.get("RANK", "0"))
    with open(os.path.join(out_dir, f"unscored-{case}-rank{rank}.json"), "w") as f:
        json.dump(result, f)


def main(out_dir: str, families: list[str], tvd: dict) -> None:
    for entry in families:
        if entry.startswith("unscored-"):
            unscored(out_dir, entry.removeprefix("unscored-"))
            continue
        # "llama:chunked" trains with loss_impl="chunked" (the head's input is captured through the DDP forward)
        family, _, impl = entry.partition(":")
        run_tvd = {**tvd, "loss_impl": impl} if impl else tvd
        with tempfile.TemporaryDirectory() as tmp:
            history, state, trainer = train_tiny(family, tmp, per_device_batch=4, grad_accum=2, tvd=run_tvd)
            eval_metrics = trainer.evaluate(trainer.train_dataset)
        if trainer.args.process_index == 0:
            torch.save(state, os.path.join(out_dir, f"{entry}.pt"))
            with open(os.path.join(out_dir, f"{entry}.json"), "w") as f:
                json.dump({"history": history, "eval": eval_metrics, "world_size": trainer.args.world_size}, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2].split(","), json.loads(sys.argv[3]))
    import torch.distributed as dist

    if dist.is_initialized():  # an orderly teardown: a process exiting with the gloo group alive can abort
        dist.barrier()
        dist.destroy_process_group()
