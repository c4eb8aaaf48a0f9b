"""Round three of the hostile-input work, where a table case does not fit: valid input that must be read, a changed
argument that must be applied, a compiled model that must train, the output-folder modules' import direction."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch


def test_a_field_first_seen_past_the_first_chunk_is_read(tmp_path):
    """datasets casts every later 10 MB chunk to the first chunk's columns: a valid file whose field first appears
    deep into it failed with a cast error. It is read in one chunk now."""
    from hf_tvd_loss.tasks.data import _load_file

    rows = [json.dumps({"document": f"the council met on day {i} and approved the plan", "summary": f"plan {i}"})
            for i in range(130_000)]  # fmt: skip
    rows.append(json.dumps({"document": "the last report", "summary": "last", "source": "archive"}))
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(rows) + "\n")
    assert path.stat().st_size > 10 << 20
    dataset = _load_file(str(path), "train_file", "train", str(tmp_path / "cache"))
    assert len(dataset) == 130_001 and dataset[-1]["source"] == "archive" and dataset[0]["source"] is None


def test_an_output_dir_name_too_long_is_refused(tmp_path):
    from hf_tvd_loss.tasks.checks import check_output_dir

    with pytest.raises(ValueError, match=r"--output_dir .* is too long \(300 bytes"):
        check_output_dir(str(tmp_path / ("x" * 300) / "out"))


def test_tvd_loss_applies_a_field_changed_after_it_was_built():
    from hf_tvd_loss import TVDArguments, TVDLoss, gamma_cross_entropy

    args = TVDArguments(gamma=0.5)
    loss = TVDLoss(args, shift_labels=False)
    logits, labels = torch.randn(2, 4, 7), torch.randint(0, 7, (2, 4))
    args.min_weight = 0.3  # valid: used from the next call on, not silently ignored
    expected = gamma_cross_entropy(logits, labels, gamma=0.5, min_weight=0.3)
    torch.testing.assert_close(loss({"logits": logits}, labels), expected)


def test_a_trainer_applies_a_field_changed_before_train(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel, TrainingArguments

    from hf_tvd_loss import TVDArguments, TVDTrainer

    model = GPT2LMHeadModel(GPT2Config(vocab_size=32, n_embd=16, n_layer=1, n_head=2, n_positions=16))
    data = [{"input_ids": row, "labels": row} for row in torch.randint(0, 32, (8, 8))]
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True, disable_tqdm=True,
                             max_steps=1, per_device_train_batch_size=4, save_strategy="no", logging_steps=1)  # fmt: skip
    tvd = TVDArguments(gamma=0.5)
    trainer = TVDTrainer(model=model, args=args, train_dataset=data, tvd_args=tvd)
    tvd.gamma = 0.2
    trainer.train()
    assert next(log["gamma"] for log in trainer.state.log_history if "gamma" in log) == pytest.approx(0.2)


def test_a_compiled_model_trains(tmp_path):
    """torch.compile's wrapper has a forward of (*args, **kwargs): the dataset's columns are those of the compiled
    model (Trainer dropped every column, then refused the empty batch)."""
    from transformers import GPT2Config, GPT2LMHeadModel, TrainingArguments

    from hf_tvd_loss import TVDTrainer

    model = GPT2LMHeadModel(GPT2Config(vocab_size=32, n_embd=16, n_layer=1, n_head=2, n_positions=16))
    compiled = torch.compile(model, backend="eager")
    data = [{"input_ids": row, "labels": row} for row in torch.randint(0, 32, (8, 8))]
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True, disable_tqdm=True,
                             max_steps=1, per_device_train_batch_size=4, save_strategy="no")  # fmt: skip
    out = TVDTrainer(model=compiled, args=args, train_dataset=data).train()
    assert out.global_step == 1 and torch.isfinite(torch.tensor(out.training_loss))


def test_outputs_does_not_import_checks():
    """The output folder's ledger (tasks/outputs.py) is used by the checks (tasks/checks.py), never the reverse."""
    source = (Path(__file__).parents[1] / "hf_tvd_loss" / "tasks" / "outputs.py").read_text()
    imported = {node.module for node in ast.walk(ast.parse(source)) if isinstance(node, ast.ImportFrom)}
    assert "checks" not in imported and "hf_tvd_loss.tasks.checks" not in imported
