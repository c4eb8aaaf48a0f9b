"""Worker of tests/test_sft.py: TVDSFTTrainer with 2 CPU processes (gloo), 4 examples per process per step."""

from __future__ import annotations

import os
import sys

os.environ.setdefault("ACCELERATE_USE_CPU", "1")

import trl  # noqa: E402
from test_sft import dataset, make_model, make_tokenizer  # noqa: E402

from hf_tvd_loss import TVDArguments, TVDSFTTrainer  # noqa: E402


def main(output_dir: str, result_file: str) -> None:
    config = trl.SFTConfig(
        output_dir=output_dir, per_device_train_batch_size=4, gradient_accumulation_steps=1, max_steps=3,
        learning_rate=1e-3, lr_scheduler_type="constant", logging_steps=1, save_strategy="no", report_to="none",
        use_cpu=True, seed=0, data_seed=0, disable_tqdm=True, max_grad_norm=1e9, dataloader_num_workers=0,
        max_length=64,
    )  # fmt: skip
    trainer = TVDSFTTrainer(
        model=make_model(), args=config, train_dataset=dataset("prompt_completion"), processing_class=make_tokenizer(),
        tvd_args=TVDArguments(gamma=0.8, min_weight=0.2),
    )  # fmt: skip
    trainer.train()
    if trainer.args.process_index == 0:
        assert trainer.args.world_size == 2, trainer.args.world_size
        losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
        with open(result_file, "w") as f:
            f.write(" ".join(repr(x) for x in losses))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
    import torch.distributed as dist

    if dist.is_initialized():  # an orderly teardown: a process exiting with the gloo group alive can abort
        dist.barrier()
        dist.destroy_process_group()
