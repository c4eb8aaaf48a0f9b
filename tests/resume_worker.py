"""Subprocess for tests/test_reliability.py and tests/test_run_safety.py: trains a tiny Llama with checkpoints,
optionally SIGKILLs itself at a step or once training returned (before its final files), optionally resumes, and
saves its log history and final parameters."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys

import torch
from transformers import TrainerCallback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tiny import collator, tiny_dataset, tiny_model  # noqa: E402


class KillAt(TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class FailOnRank(TrainerCallback):
    def __init__(self, rank: int, step: int) -> None:
        self.rank, self.step = rank, step

    def on_step_end(self, args, state, control, **kwargs):
        if args.process_index == self.rank and state.global_step == self.step:
            raise RuntimeError(f"simulated failure on rank {self.rank} at step {self.step}")


def main() -> None:
    from transformers import TrainingArguments

    from hf_tvd_loss import TVDArguments, TVDTrainer

    p = argparse.ArgumentParser()
    p.add_argument("output_dir")
    p.add_argument("--max_steps", type=int, default=8)
    p.add_argument("--kill_at", type=int, default=0)
    p.add_argument("--fail_rank_at", type=int, default=0)
    p.add_argument("--kill_after_train", action="store_true")  # after the last step, before the final files
    p.add_argument("--resume", action="store_true")
    a = p.parse_args()
    args = TrainingArguments(
        output_dir=a.output_dir, per_device_train_batch_size=4, gradient_accumulation_steps=2,
        max_steps=a.max_steps, learning_rate=1e-2, lr_scheduler_type="linear", warmup_steps=2, logging_steps=1,
        save_strategy="steps", save_steps=2, save_total_limit=2, report_to="none", use_cpu=True, seed=0,
        data_seed=0, disable_tqdm=True,
    )  # fmt: skip
    callbacks = [KillAt(a.kill_at)] if a.kill_at else []
    if a.fail_rank_at:
        callbacks.append(FailOnRank(1, a.fail_rank_at))
    trainer = TVDTrainer(
        model=tiny_model("llama"), args=args, train_dataset=tiny_dataset("llama", n=48),
        data_collator=collator("llama"), callbacks=callbacks,
        tvd_args=TVDArguments(gamma=0.8, min_weight=0.2, gamma_schedule="linear", gamma_schedule_ratio=0.75),
    )  # fmt: skip
    result = trainer.train(resume_from_checkpoint=True if a.resume else None)
    if a.kill_after_train:
        os.kill(os.getpid(), signal.SIGKILL)
    if trainer.args.process_index == 0:
        state = {k: v.detach().cpu() for k, v in trainer.model.state_dict().items()}
        torch.save(state, os.path.join(a.output_dir, "final_state.pt"))
        with open(os.path.join(a.output_dir, "history.json"), "w") as f:
            json.dump(trainer.state.log_history, f)
        with open(os.path.join(a.output_dir, "train_metrics.json"), "w") as f:
            json.dump({"global_step": trainer.state.global_step, **result.metrics}, f)


if __name__ == "__main__":
    main()
