"""A hostile-input run: bad inputs a careless or hostile user gives the scripts and the Python API.

Each :class:`Case` builds its input in a scratch folder (files, an earlier run's output folder, ...) and is judged
on the scale of issue 12:

* ``refused well``: one ``ValueError`` (or an argparse error, exit status 2) whose message names what is wrong
  (every string of ``Case.names`` appears in it), before any work: the output folder is not created and a folder
  that existed is left exactly as it was;
* ``refused late or unclearly``: an error that does not name the problem, an exception of another kind, or a
  refusal only after training started;
* ``accepted silently``: the run (or call) finished.

``python tests/hostile_cases.py`` runs every case and prints the table; cases that ``prepare`` accepts are then
trained for real (tiny synthetic runs) to tell a late refusal from a silent acceptance. ``tests/test_hostile.py``
runs the same table in-process and asserts that every case is refused well (the fast path: ``prepare`` only).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["CASES", "Case", "Verdict", "judge", "main"]

REFUSED_WELL = "refused well"
REFUSED_LATE = "refused late or unclearly"
ACCEPTED = "accepted silently"
Verdict = str

# Small, quick runs: a tiny synthetic corpus and model (the tasks' defaults), no TensorBoard, no progress bars.
# The synthetic corpus's sizes go only with the synthetic corpus (beside data files the scripts refuse them).
SYNTHETIC = ["--synthetic_train_examples", "24", "--synthetic_eval_examples", "4"]
QUICK_FILES = ["--report_to", "none", "--disable_tqdm", "true", "--generation_num_beams", "1",
               "--max_source_length", "64"]  # fmt: skip
QUICK_LM_FILES = ["--report_to", "none", "--disable_tqdm", "true", "--block_size", "32"]
QUICK = [*QUICK_FILES, *SYNTHETIC]
QUICK_LM = [*QUICK_LM_FILES, *SYNTHETIC]


@dataclass(frozen=True)
class Case:
    """One bad input. ``build(tmp)`` returns ``(task, argv)`` for a script run, or a callable for the Python API."""

    id: str
    group: str  # cli | yaml | data | output | api
    build: Callable[[Path], Any]
    names: tuple[str, ...]  # what the error message must mention (option, file, line, ...)
    note: str = ""


def _out(tmp: Path) -> str:
    return str(tmp / "out")


def _argv(task: str, base: list[str], extra: tuple[str, ...]) -> tuple[str, list[str]]:
    """``(task, argv)``: the quick settings in ``base``, with the options of ``extra`` in place of theirs (a case
    that repeats an option within ``extra`` keeps the repeat)."""
    from hf_tvd_loss.tasks import get_task

    return task, get_task(task).build_parser().merge_args(base, extra)


def _lm(*extra: str) -> Callable[[Path], Any]:
    return lambda tmp: _argv("language_modeling", ["--output_dir", _out(tmp), *QUICK_LM], extra)


def _sum(*extra: str) -> Callable[[Path], Any]:
    return lambda tmp: _argv("summarization", ["--output_dir", _out(tmp), *QUICK], extra)


def _tr(*extra: str) -> Callable[[Path], Any]:
    return lambda tmp: _argv("translation", ["--output_dir", _out(tmp), *QUICK], extra)


def _yaml(task: str, text: str | bytes, *extra: str) -> Callable[[Path], Any]:
    def build(tmp: Path) -> Any:
        path = tmp / "config.yaml"
        path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
        quick = QUICK_LM if task == "language_modeling" else QUICK
        return _argv(task, ["--output_dir", _out(tmp), *quick, "--config", str(path)], extra)

    return build


def _write_lines(path: Path, lines: list[str | bytes]) -> str:
    path.write_bytes(b"".join((line if isinstance(line, bytes) else line.encode("utf-8")) + b"\n" for line in lines))
    return str(path)


def _rows(rows: list[Any]) -> list[str]:
    return [json.dumps(row) for row in rows]


def _summ_rows(n: int) -> list[dict[str, Any]]:
    return [{"document": f"the council met on day {i} and approved the new bridge plan", "summary": f"bridge {i}"}
            for i in range(n)]  # fmt: skip


def _tr_rows(n: int) -> list[dict[str, Any]]:
    return [{"translation": {"de": f"der hund sieht das haus {i}", "en": f"the dog sees the house {i}"}}
            for i in range(n)]  # fmt: skip


def _data(task: str, file_name: str, lines: Callable[[], list[str | bytes]], *extra: str,
          option: str = "--train_file") -> Callable[[Path], Any]:  # fmt: skip
    def build(tmp: Path) -> Any:
        path = _write_lines(tmp / file_name, lines())
        quick = QUICK_LM_FILES if task == "language_modeling" else QUICK_FILES
        return _argv(task, ["--output_dir", _out(tmp), *quick, option, path], extra)

    return build


def _malformed_jsonl() -> list[str | bytes]:
    lines: list[str | bytes] = list(_rows(_summ_rows(40)))
    lines[21] = '{"document": "an unfinished row", "summary": '
    return lines


def _non_utf8_jsonl() -> list[str | bytes]:
    lines: list[str | bytes] = list(_rows(_summ_rows(40)))
    lines[2] = b'{"document": "caf\xe9 au lait on the square", "summary": "caf\xe9"}'
    return lines


def _null_summaries() -> list[str | bytes]:
    rows = _summ_rows(40)
    for row in rows[4:]:
        row["summary"] = None
    return list(_rows(rows))


def _empty_documents() -> list[str | bytes]:
    rows = _summ_rows(40)
    for row in rows[::2]:
        row["document"] = "   "
    return list(_rows(rows))


def _missing_target_key() -> list[str | bytes]:
    rows = _tr_rows(40)
    for row in rows[10:]:
        del row["translation"]["en"]
    return list(_rows(rows))


def _null_translation_rows() -> list[str | bytes]:
    rows: list[Any] = _tr_rows(40)
    for index in range(0, 40, 3):
        rows[index] = {"translation": None}
    return list(_rows(rows))


def _mixed_translation_types() -> list[str | bytes]:
    rows: list[Any] = _tr_rows(40)
    rows[7] = {"translation": "der hund = the dog"}
    return list(_rows(rows))


def _mixed_summary_types() -> list[str | bytes]:
    rows: list[Any] = _summ_rows(40)
    rows[12]["summary"] = 12
    return list(_rows(rows))


def _array_line() -> list[str | bytes]:
    lines: list[str | bytes] = list(_rows(_summ_rows(40)))
    lines[5] = '["a list", "not a row"]'
    return lines


def _null_lines() -> list[str | bytes]:
    lines: list[str | bytes] = list(_rows(_summ_rows(40)))
    for index in range(9, 40, 4):
        lines[index] = "null"
    return lines


def _flat_csv_null_targets() -> list[str | bytes]:
    lines: list[str | bytes] = ["de,en"]
    for i in range(40):
        lines.append(f"der hund {i}," + ("" if i % 3 == 0 else f"the dog {i}"))
    return lines


def _repeated_header_csv() -> list[str | bytes]:
    return ["de,en,en"] + [f"der hund {i},the dog {i},a dog {i}" for i in range(30)]


def _ragged_csv() -> list[str | bytes]:
    lines: list[str | bytes] = ["document,summary"] + [f"doc number {i} about a bridge,bridge {i}" for i in range(30)]
    lines[5] = "doc five,bridge,an extra field,and another"
    return lines


def _non_utf8_csv() -> list[str | bytes]:
    lines: list[str | bytes] = ["document,summary"] + [f"doc number {i} about a bridge,bridge {i}" for i in range(30)]
    lines[7] = b"the caf\xe9 on the square,caf\xe9"
    return lines


def _non_utf8_txt() -> list[str | bytes]:
    lines: list[str | bytes] = [f"line {i} of some text about the council and the bridge" for i in range(60)]
    lines[30] = b"na\xefve caf\xe9 text"
    return lines


def _lm_empty_completions() -> list[str | bytes]:
    rows = [{"prompt": "what is i plus one?", "completion": "" if i % 2 == 0 else "it is i+1"} for i in range(20)]
    return list(_rows(rows))


def _config_is_a_folder(tmp: Path) -> Any:
    folder = tmp / "configs"
    folder.mkdir()
    return "summarization", ["--output_dir", _out(tmp), *QUICK, "--config", str(folder)]


def _lm_null_texts() -> list[str | bytes]:
    return list(_rows([{"text": None if i % 5 < 3 else f"some words about the town {i} " * 5} for i in range(50)]))


def _corrupt_parquet(tmp: Path) -> Any:
    path = tmp / "train.parquet"
    path.write_text("this is not a parquet file\n")
    return "summarization", ["--output_dir", _out(tmp), *QUICK_FILES, "--train_file", str(path)]


def _json_object_file(tmp: Path) -> Any:
    path = tmp / "train.json"
    path.write_text(json.dumps({"version": 1, "data": "not rows"}))
    return "summarization", ["--output_dir", _out(tmp), *QUICK_FILES, "--train_file", str(path)]


# ------------------------------------------------------------------------------------------ classification
def _cls_files(train: list[dict[str, Any]], validation: list[dict[str, Any]] | None = None,
               *extra: str) -> Callable[[Path], Any]:  # fmt: skip
    """A classification run on a train (and validation) .jsonl written from ``train`` / ``validation`` rows."""

    def build(tmp: Path) -> Any:
        files = ["--train_file", _write_lines(tmp / "train.jsonl", list(_rows(train)))]
        files += ["--validation_file", _write_lines(tmp / "validation.jsonl", list(_rows(validation or train)))]
        base = ["--output_dir", _out(tmp), *QUICK_CLS_FILES, *files]
        return _argv("classification", base, extra)

    return build


QUICK_CLS_FILES = ["--report_to", "none", "--disable_tqdm", "true", "--do_predict", "false"]


def _cls_rows(n: int, labels: tuple[Any, ...] = ("sports", "weather", "prices")) -> list[dict[str, Any]]:
    return [{"sentence": f"report number {i} about the town", "label": labels[i % len(labels)]} for i in range(n)]


# ------------------------------------------------------------------------------------------ output folders
def _earlier_run(tmp: Path) -> None:
    out = tmp / "out"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"weights of an earlier run")
    (out / "run_info.json").write_text('{"task": "summarization"}')
    (out / "all_results.json").write_text('{"eval_rouge1": 41.0}')


_TOKENIZER: list[Any] = []


def _checkpoint_tokenizer() -> Any:
    """A small tokenizer for the fake checkpoints (a resumed run uses its checkpoint's tokenizer)."""
    if not _TOKENIZER:
        from hf_tvd_loss.tasks.modeling import train_tokenizer
        from hf_tvd_loss.tasks.synthetic import language_modeling_corpus

        _TOKENIZER.append(train_tokenizer(iter(r["text"] for r in language_modeling_corpus(50)), vocab_size=200))
    return _TOKENIZER[0]


def _checkpoint(folder: Path, step: int, *, complete: bool = True, truncated: bool = False,
                optimizer: bool = True, tokenizer: bool = True) -> None:  # fmt: skip
    import struct

    path = folder / f"checkpoint-{step}"
    path.mkdir(parents=True)
    header = json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}).encode()
    blob = struct.pack("<Q", len(header)) + header + b"\x00" * 16
    (path / "model.safetensors").write_bytes(blob[:20] if truncated else blob)
    if tokenizer:
        _checkpoint_tokenizer().save_pretrained(path)
    if optimizer:
        import torch

        torch.save({}, path / "optimizer.pt")
        torch.save({}, path / "scheduler.pt")
    if complete:
        (path / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": []}))
        (path / "tvd_checkpoint_complete.json").write_text(json.dumps({"global_step": step}))


def _reuse_earlier_run(tmp: Path) -> Any:
    _earlier_run(tmp)
    return "summarization", ["--output_dir", _out(tmp), *QUICK]


def _reuse_with_checkpoints(tmp: Path) -> Any:
    for step in range(100, 700, 100):
        _checkpoint(tmp / "out", step)
    return _argv("summarization", ["--output_dir", _out(tmp), *QUICK], ("--save_strategy", "steps", "--save_steps", "100",
                 "--max_steps", "200", "--save_total_limit", "2"))  # fmt: skip


def _unrelated_file(tmp: Path) -> Any:
    (tmp / "out").mkdir()
    (tmp / "out" / "notes.txt").write_text("my notes")
    return "language_modeling", ["--output_dir", _out(tmp), *QUICK_LM]


def _summ_files(*extra: str, validation: bool = False) -> Callable[[Path], Any]:
    """Summarization on a local train file (and a different validation file), the options of ``extra`` added."""

    def build(tmp: Path) -> Any:
        files = ["--train_file", _write_lines(tmp / "train.jsonl", list(_rows(_summ_rows(20))))]
        if validation:
            files += ["--validation_file", _write_lines(tmp / "val.jsonl", list(_rows(_summ_rows(5))))]
        return _argv("summarization", ["--output_dir", _out(tmp), *QUICK_FILES, *files], extra)

    return build


def _synthetic_size_in_yaml(tmp: Path) -> Any:
    config = tmp / "study.yaml"
    config.write_text("synthetic_eval_examples: 50\ngamma: 0.8\n")
    return _summ_files("--config", str(config))(tmp)


def _test_file_never_read(tmp: Path) -> Any:
    train = _write_lines(tmp / "train.jsonl", list(_rows(_summ_rows(20))))
    test = _write_lines(tmp / "test.jsonl", list(_rows(_summ_rows(5))))
    return _argv("summarization", ["--output_dir", _out(tmp), *QUICK_FILES],
                 ("--train_file", train, "--test_file", test, "--do_predict", "false"))  # fmt: skip


def _overwrite_users_files(*names: str) -> Callable[[Path], Any]:
    """A folder of the user's own files (no run of these scripts wrote it) and --overwrite_output_dir."""

    def build(tmp: Path) -> Any:
        for name in names:
            (tmp / "out" / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / "out" / name).write_text(f"the user's {name}")
        return "language_modeling", ["--output_dir", _out(tmp), *QUICK_LM, "--overwrite_output_dir", "true"]

    return build


def _resume_without_optimizer(tmp: Path) -> Any:
    _checkpoint(tmp / "out", 200, optimizer=False)  # optimizer.pt deleted, or saved with --save_only_model
    return "language_modeling", ["--output_dir", _out(tmp), *QUICK_LM, "--resume_from_checkpoint", "latest"]


def _resume_without_scheduler(tmp: Path) -> Any:
    _checkpoint(tmp / "out", 200)
    (tmp / "out" / "checkpoint-200" / "scheduler.pt").unlink()
    return "language_modeling", ["--output_dir", _out(tmp), *QUICK_LM, "--resume_from_checkpoint", "latest"]


def _resume_truncated_trainer_state(tmp: Path) -> Any:
    """Marked complete, but trainer_state.json cut short (a disk filled up): Trainer reads it only after the data
    and model work (issue 21: found late)."""
    _checkpoint(tmp / "out", 200)
    _checkpoint(tmp / "out", 300)
    state = tmp / "out" / "checkpoint-300" / "trainer_state.json"
    state.write_text(state.read_text()[:10])
    return "language_modeling", ["--output_dir", _out(tmp), *QUICK_LM, "--resume_from_checkpoint", "latest"]


def _resume_another_model(tmp: Path) -> Any:
    """A checkpoint whose config.json describes other sizes than this run's model (issue 21: a size-mismatch
    error once the weights were loaded, after the data and tokenizer work)."""
    _checkpoint(tmp / "out", 200)
    (tmp / "out" / "checkpoint-200" / "config.json").write_text(
        json.dumps(
            {
                "model_type": "llama",
                "hidden_size": 999,
                "num_hidden_layers": 7,
                "num_layers": 7,
                "n_layer": 7,
                "n_embd": 999,
                "d_model": 999,
            }
        )  # fmt: skip
    )
    return "language_modeling", ["--output_dir", _out(tmp), *QUICK_LM, "--resume_from_checkpoint", "latest"]


def _resume_truncated(tmp: Path) -> Any:
    _checkpoint(tmp / "out", 200)
    _checkpoint(tmp / "out", 300, truncated=True)
    return "language_modeling", ["--output_dir", _out(tmp), *QUICK_LM, "--resume_from_checkpoint", "latest"]


def _resume_incomplete_path(tmp: Path) -> Any:
    _checkpoint(tmp / "out", 200)
    _checkpoint(tmp / "out", 300, complete=False)
    return "language_modeling", ["--output_dir", _out(tmp), *QUICK_LM, "--resume_from_checkpoint",
                                 str(tmp / "out" / "checkpoint-300")]  # fmt: skip


def _resume_nothing(tmp: Path) -> Any:
    return "language_modeling", ["--output_dir", _out(tmp), *QUICK_LM, "--resume_from_checkpoint", "true"]


def _resume_missing_path(tmp: Path) -> Any:
    return "language_modeling", ["--output_dir", _out(tmp), *QUICK_LM, "--resume_from_checkpoint",
                                 str(tmp / "elsewhere" / "checkpoint-5")]  # fmt: skip


def _resume_and_overwrite(tmp: Path) -> Any:
    _checkpoint(tmp / "out", 200)
    return "language_modeling", ["--output_dir", _out(tmp), *QUICK_LM, "--resume_from_checkpoint", "latest",
                                 "--overwrite_output_dir", "true"]  # fmt: skip


def _resume_elsewhere_into_earlier_run(tmp: Path) -> Any:
    _checkpoint(tmp / "first", 200)
    _earlier_run(tmp)
    return "language_modeling", ["--output_dir", _out(tmp), *QUICK_LM, "--resume_from_checkpoint",
                                 str(tmp / "first" / "checkpoint-200")]  # fmt: skip


def _overwrite_the_model_it_loads(tmp: Path) -> Any:
    from transformers import GPT2Config, GPT2LMHeadModel

    _earlier_run(tmp)
    (tmp / "out" / "model.safetensors").unlink()
    GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=8, n_layer=1, n_head=2, n_positions=64)).save_pretrained(
        tmp / "out"
    )
    return "language_modeling", ["--output_dir", _out(tmp), *QUICK_LM, "--model_name_or_path", _out(tmp),
                                 "--overwrite_output_dir", "true"]  # fmt: skip


def _resume_past_max_steps(tmp: Path) -> Any:
    _checkpoint(tmp / "out", 300)
    return "language_modeling", ["--output_dir", _out(tmp), *QUICK_LM, "--resume_from_checkpoint", "latest",
                                 "--max_steps", "200"]  # fmt: skip


def _resume_other_loss(tmp: Path) -> Any:
    _checkpoint(tmp / "out", 200)
    marker = tmp / "out" / "checkpoint-200" / "tvd_checkpoint_complete.json"
    recorded = json.loads(marker.read_text())
    recorded["tvd_args"] = {"loss_type": "gamma_ce", "gamma": 0.1, "min_weight": 0.3, "label_smoothing": 0.1}
    marker.write_text(json.dumps(recorded))
    return "language_modeling", ["--output_dir", _out(tmp), *QUICK_LM, "--resume_from_checkpoint", "latest",
                                 "--gamma", "0.8", "--min_weight", "0.3", "--label_smoothing", "0.1"]  # fmt: skip


def _output_dir_is_file(tmp: Path) -> Any:
    (tmp / "out").write_text("a file")
    return "language_modeling", ["--output_dir", _out(tmp), *QUICK_LM]


def _output_dir_under_file(tmp: Path) -> Any:
    (tmp / "blocker").write_text("a file")
    return "language_modeling", ["--output_dir", str(tmp / "blocker" / "out"), *QUICK_LM]


def _output_dir_unwritable(tmp: Path) -> Any:
    return "language_modeling", ["--output_dir", "/proc/hf_tvd_loss_out", *QUICK_LM]


# ------------------------------------------------------------------------------------------ Python API
def _gce(**kwargs: Any) -> Callable[[Path], Any]:
    def build(tmp: Path) -> Any:
        import torch

        from hf_tvd_loss import gamma_cross_entropy

        def call() -> Any:
            options = {"gamma": 0.1, **kwargs}
            logits = options.pop("logits", torch.randn(2, 3, 5))
            labels = options.pop("labels", torch.randint(0, 5, (2, 3)))
            return gamma_cross_entropy(logits, labels, **options)

        return call

    return build


def _gce_neg_inf_target(tmp: Path) -> Any:
    import torch

    from hf_tvd_loss import gamma_cross_entropy

    def call() -> Any:
        logits = torch.randn(1, 4, 6, requires_grad=True)
        labels = torch.tensor([[1, 2, 3, 4]])
        poisoned = logits.clone()
        poisoned[0, 1, 2] = float("-inf")
        loss = gamma_cross_entropy(poisoned, labels, gamma=0.5)
        if not (math.isinf(loss.item()) and loss.item() > 0):
            return loss  # NaN or finite: a wrong result
        raise ValueError("expected: +inf for a -inf target logit (the non-finite guard stops such a step)")

    return call


def _tvd_args(**kwargs: Any) -> Callable[[Path], Any]:
    def build(tmp: Path) -> Any:
        from hf_tvd_loss import TVDArguments

        return lambda: TVDArguments(**kwargs)

    return build


def _trainer(model_kind: str = "lm", tvd: Any = None, resume: Any = None, **training: Any) -> Callable[[Path], Any]:
    def build(tmp: Path) -> Any:
        import torch
        from transformers import GPT2Config, GPT2LMHeadModel, GPT2Model, TrainingArguments

        from hf_tvd_loss import TVDArguments, TVDTrainer

        config = GPT2Config(vocab_size=32, n_embd=16, n_layer=1, n_head=2, n_positions=16)
        model = GPT2Model(config) if model_kind == "headless" else GPT2LMHeadModel(config)
        ids = torch.randint(0, 32, (8, 8))
        data = [{"input_ids": row, "labels": row} for row in ids]

        def call() -> Any:
            args = TrainingArguments(output_dir=_out(tmp), report_to="none", use_cpu=True, disable_tqdm=True, max_steps=2,
                                     per_device_train_batch_size=4, **training)  # fmt: skip
            trainer = TVDTrainer(model=model, args=args, train_dataset=data,
                                 tvd_args=TVDArguments() if tvd is None else tvd)  # fmt: skip
            return trainer.train(resume_from_checkpoint=resume)

        return call

    return build


def _api(call: Callable[[], Any]) -> Callable[[Path], Any]:
    """A Python-API case: ``call`` raises (or returns a result the judge checks)."""
    return lambda tmp: call


def _rule_not_a_rule() -> Any:
    from transformers import TrainingArguments

    from hf_tvd_loss import TVDTrainer

    args = TrainingArguments(output_dir="unused", report_to="none", use_cpu=True)
    return TVDTrainer(model=_tiny_gpt2(), args=args, weight_rule=lambda log_p: (log_p, log_p))


def _rule_beside_gamma() -> Any:
    from hf_tvd_loss import TVDArguments, TVDLoss, probability_power_rule

    return TVDLoss(TVDArguments(gamma=0.5, gamma_schedule="linear"), weight_rule=probability_power_rule(0.5))


def _rule_not_elementwise() -> Any:
    import torch

    from hf_tvd_loss import TokenWeightRule, token_weighted_cross_entropy

    rule = TokenWeightRule.from_weight(lambda log_p: log_p.exp().sum(), name="summed")
    return token_weighted_cross_entropy(torch.randn(4, 6), torch.randint(0, 6, (4,)), rule)


def _rule_alpha_negative() -> Any:
    from hf_tvd_loss import probability_power_rule

    return probability_power_rule(-0.5)


def _rule_entropy_weight_of_one_argument() -> Any:
    from hf_tvd_loss import TokenWeightRule

    return TokenWeightRule.from_weight(lambda log_p: log_p.exp(), uses_entropy=True, name="gate")


def _rule_of_entropy_without_uses_entropy() -> Any:
    from hf_tvd_loss import TokenWeightRule

    return TokenWeightRule.from_weight(lambda log_p, entropy: (entropy > 1).float(), name="gate")


def _tvd_loss_on_seq2seq_output() -> Any:
    import torch
    from transformers.modeling_outputs import Seq2SeqLMOutput

    from hf_tvd_loss import TVDLoss

    logits = torch.randn(2, 5, 11)
    out = Seq2SeqLMOutput(logits=logits, encoder_last_hidden_state=torch.randn(2, 7, 4))
    return TVDLoss(shift_labels=True)(out, torch.randint(0, 11, (2, 5)))


def _torch_linear_ce_with_softcap() -> Any:
    import torch

    from hf_tvd_loss import linear_gamma_cross_entropy

    return linear_gamma_cross_entropy(torch.randn(6, 4), torch.randn(9, 4), torch.randint(0, 9, (6,)), gamma=0.1,
                                      impl="torch_linear_ce", final_logit_softcapping=30.0)  # fmt: skip


def _loss_weights_under_the_stock_trainer() -> Any:
    from hf_tvd_loss import WithLossWeights

    collate = WithLossWeights(lambda rows: {"labels": [r["labels"] for r in rows]})
    return collate([{"labels": [1, 2], "loss_weights": 0.5}])


def _tiny_gpt2() -> Any:
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config(vocab_size=32, n_embd=16, n_layer=1, n_head=2, n_positions=16))


def _trainer_resume_truncated(tmp: Path) -> Any:
    """TVDTrainer.train(resume_from_checkpoint=True) with a truncated checkpoint marked complete."""
    _checkpoint(tmp / "out", 2)
    _checkpoint(tmp / "out", 3, truncated=True)
    build = _trainer(resume=True)
    return build(tmp)


def _trainer_poisoned(tmp: Path) -> Any:
    """A -inf logit at a target token on step 2: the run must stop before that update (NonFiniteLossError)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, TrainingArguments

    from hf_tvd_loss import NonFiniteLossError, TVDArguments, TVDTrainer

    model = GPT2LMHeadModel(GPT2Config(vocab_size=32, n_embd=16, n_layer=1, n_head=2, n_positions=16))
    calls = {"n": 0}

    def hook(module: Any, inputs: Any, output: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 2:
            output.logits = output.logits.clone()
            output.logits[0, 0, :] = float("-inf")
        return output

    model.register_forward_hook(hook)
    ids = torch.randint(0, 32, (8, 8))
    data = [{"input_ids": row, "labels": row} for row in ids]

    def call() -> Any:
        args = TrainingArguments(output_dir=_out(tmp), report_to="none", use_cpu=True, disable_tqdm=True, max_steps=3,
                                 per_device_train_batch_size=4, save_strategy="no")  # fmt: skip
        trainer = TVDTrainer(model=model, args=args, train_dataset=data, tvd_args=TVDArguments(gamma=0.5))
        try:
            return trainer.train()
        except NonFiniteLossError as err:
            raise ValueError(f"expected: {err}") from err

    return call


def _trainer_rotation(tmp: Path) -> Any:
    """Another run's checkpoint-100..600 in output_dir; save_total_limit=1 must not delete them."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, TrainingArguments

    from hf_tvd_loss import TVDTrainer

    for step in range(100, 700, 100):
        _checkpoint(tmp / "out", step)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=32, n_embd=16, n_layer=1, n_head=2, n_positions=16))
    ids = torch.randint(0, 32, (8, 8))
    data = [{"input_ids": row, "labels": row} for row in ids]

    def call() -> Any:
        args = TrainingArguments(output_dir=_out(tmp), report_to="none", use_cpu=True, disable_tqdm=True, max_steps=4,
                                 per_device_train_batch_size=4, save_steps=1, save_total_limit=1)  # fmt: skip
        TVDTrainer(model=model, args=args, train_dataset=data).train()
        kept = sorted(p.name for p in (tmp / "out").iterdir() if p.name.startswith("checkpoint-"))
        foreign = [f"checkpoint-{s}" for s in range(100, 700, 100)]
        if all(name in kept for name in foreign):
            raise ValueError(f"expected: checkpoints of the other run kept ({kept})")
        return kept  # something of the other run was deleted

    return call


# ------------------------------------------------------------------------------------------ round three (issue: no
# surprises, round three): what another library checks only when it uses it, the output folder's and checkpoints'
# state on disk, the library's arguments at the point of use, data files' keys, links and bytes
def _out_link_to(target: Callable[[Path], Path]) -> Callable[[Path], Any]:
    def build(tmp: Path) -> Any:
        os.symlink(target(tmp), tmp / "out")
        return "language_modeling", ["--output_dir", _out(tmp), *QUICK_LM]

    return build


def _link_loop(tmp: Path) -> Path:
    os.symlink(tmp / "out", tmp / "elsewhere")
    return tmp / "elsewhere"


def _resume_changed(
    change: Callable[[Path], None], value: Callable[[Path], str] | None = None
) -> Callable[[Path], Any]:
    """A complete checkpoint-200 in output_dir, changed by ``change(folder)``, resumed (``latest``, or ``value``)."""

    def build(tmp: Path) -> Any:
        _checkpoint(tmp / "out", 200)
        change(tmp / "out" / "checkpoint-200")
        resume = value(tmp) if value else "latest"
        return "language_modeling", ["--output_dir", _out(tmp), *QUICK_LM, "--resume_from_checkpoint", resume]

    return build


def _weights_folder(folder: Path) -> None:
    (folder / "model.safetensors").unlink()
    (folder / "model.safetensors").mkdir()


def _data_link_to(target: str) -> Callable[[Path], Any]:
    def build(tmp: Path) -> Any:
        os.symlink(target, tmp / "train.jsonl")
        return _argv("summarization", ["--output_dir", _out(tmp), *QUICK_FILES],
                     ("--train_file", str(tmp / "train.jsonl"), "--do_eval", "false", "--do_predict", "false"))  # fmt: skip

    return build


def _duplicate_key_jsonl() -> list[str | bytes]:
    lines: list[str | bytes] = list(_rows(_summ_rows(30)))
    lines[11] = '{"document": "the ferry runs again", "summary": "ferry", "document": "the bridge is closed"}'
    return lines


def _duplicate_key_json_array(tmp: Path) -> Any:
    rows = [json.dumps(r) for r in _summ_rows(12)]
    rows[2] = '{"document": "the library opens late", "summary": "late", "summary": "library"}'
    (tmp / "train.json").write_text("[\n" + ",\n".join(rows) + "\n]\n")
    return _argv("summarization", ["--output_dir", _out(tmp), *QUICK_FILES],
                 ("--train_file", str(tmp / "train.json"), "--do_eval", "false", "--do_predict", "false"))  # fmt: skip


def _cls_duplicate_label(tmp: Path) -> Any:
    lines: list[str | bytes] = list(_rows(_cls_rows(12)))
    lines[3] = '{"sentence": "snow in the hills", "label": "weather", "label": "sports"}'
    train = _write_lines(tmp / "train.jsonl", lines)
    return _argv("classification", ["--output_dir", _out(tmp), *QUICK_CLS_FILES],
                 ("--train_file", train, "--do_eval", "false"))  # fmt: skip


def _changed_args_trainer(field: str, value: Any) -> Callable[[Path], Any]:
    """TVDArguments changed after they were built (and after the trainer was built), then ``train()``."""

    def build(tmp: Path) -> Any:
        from hf_tvd_loss import TVDArguments

        tvd = TVDArguments(gamma=0.5)
        call = _trainer(tvd=tvd)(tmp)

        def changed_then_trained() -> Any:
            setattr(tvd, field, value)
            return call()

        return changed_then_trained

    return build


def _changed_args_loss(tmp: Path) -> Any:
    import torch

    from hf_tvd_loss import TVDArguments, TVDLoss

    def call() -> Any:
        args = TVDArguments(gamma=0.5)
        loss = TVDLoss(args, shift_labels=True)
        args.gamma = 1.5
        return loss({"logits": torch.randn(2, 4, 7)}, torch.randint(0, 7, (2, 4)))

    return call


def _frozen_model_trainer(tmp: Path) -> Any:
    import torch
    from transformers import TrainingArguments

    from hf_tvd_loss import TVDTrainer

    model = _tiny_gpt2().requires_grad_(False)
    data = [{"input_ids": row, "labels": row} for row in torch.randint(0, 32, (8, 8))]

    def call() -> Any:
        args = TrainingArguments(output_dir=_out(tmp), report_to="none", use_cpu=True, disable_tqdm=True, max_steps=2,
                                 per_device_train_batch_size=4, save_strategy="no")  # fmt: skip
        return TVDTrainer(model=model, args=args, train_dataset=data).train()

    return call


def _c(id: str, group: str, build: Callable[[Path], Any], *names: str, note: str = "") -> Case:
    return Case(id, group, build, tuple(names), note)


CASES: list[Case] = [
    # ---------------------------------------------------------------- command line: options that would do nothing
    _c("fp16-without-gpu", "cli", _sum("--fp16", "true"), "--fp16", "GPU", note="issue 21: trained in float32"),
    _c(
        "load-best-without-evaluations",
        "cli",
        _lm("--load_best_model_at_end", "true", "--eval_strategy", "no"),
        "load_best_model_at_end",
        "eval_strategy",
    ),  # fmt: skip
    _c(
        "load-best-without-training",
        "cli",
        _sum("--load_best_model_at_end", "true", "--do_train", "false"),
        "load_best_model_at_end",
        "do_train",
    ),  # fmt: skip
    _c("test-file-never-read", "cli", _test_file_never_read, "--test_file", "do_predict"),
    _c(
        "synthetic-size-beside-train-file",
        "cli",
        _summ_files("--synthetic_train_examples", "500"),
        "--synthetic_train_examples",
        "files",
        note="issue 21 leftover: the corpus size was ignored",
    ),  # fmt: skip
    _c(
        "synthetic-size-in-yaml-beside-files", "yaml", _synthetic_size_in_yaml, "--synthetic_eval_examples", "--config"
    ),  # fmt: skip
    _c(
        "tokenizer-vocab-beside-tokenizer-name",
        "cli",
        _lm("--tokenizer_name", "gpt2", "--tokenizer_vocab_size", "500"),
        "--tokenizer_vocab_size",
        "tokenizer_name",
    ),  # fmt: skip
    _c(
        "tokenizer-type-beside-tokenizer-name",
        "cli",
        _tr("--tokenizer_name", "gpt2", "--tokenizer_type", "sentencepiece"),
        "--tokenizer_type",
        "tokenizer_name",
    ),  # fmt: skip
    _c(
        "validation-percentage-beside-validation-file",
        "cli",
        _summ_files("--validation_split_percentage", "20", validation=True),
        "--validation_split_percentage",
        "validation_file",
    ),  # fmt: skip
    _c(
        "validation-percentage-on-synthetic-corpus",
        "cli",
        _lm("--validation_split_percentage", "20"),
        "--validation_split_percentage",
        "synthetic",
    ),  # fmt: skip
    _c(
        "validation-percentage-nothing-evaluated",
        "cli",
        _summ_files("--validation_split_percentage", "20", "--do_eval", "false", "--eval_strategy", "no"),
        "--validation_split_percentage",
        "do_eval",
    ),  # fmt: skip
    _c(
        "save-total-limit-without-saving", "cli", _lm("--save_total_limit", "3"), "--save_total_limit", "save_strategy"
    ),  # fmt: skip
    _c("report-to-wandb-not-installed", "cli", _lm("--report_to", "wandb"), "--report_to wandb", "pip install wandb"),
    _c("report-to-mlflow-not-installed", "cli", _sum("--report_to", "mlflow"), "mlflow"),
    # ---------------------------------------------------------------- decoder-only summarization / translation
    _c(
        "prompt-template-unknown-placeholder",
        "cli",
        _sum("--model_type", "llama", "--prompt_template", "{doc}\n"),
        "prompt_template",
        "doc",
        "{source}",
    ),  # fmt: skip
    _c(
        "prompt-template-without-source",
        "cli",
        _tr("--model_type", "llama", "--prompt_template", "Translate:\n"),
        "prompt_template",
        "{source}",
    ),  # fmt: skip
    _c(
        "prompt-template-unbalanced-brace",
        "cli",
        _sum("--model_type", "llama", "--prompt_template", "{source\n"),
        "prompt_template",
        "brace",
    ),  # fmt: skip
    _c(
        "prompt-template-on-encoder-decoder",
        "cli",
        _sum("--prompt_template", "Sum: {source}\n"),
        "--prompt_template",
        "encoder-decoder",
    ),  # fmt: skip
    _c(
        "prompt-format-on-encoder-decoder",
        "cli",
        _tr("--prompt_completion_format", "chat"),
        "--prompt_completion_format",
        "encoder-decoder",
    ),  # fmt: skip
    _c(
        "prompt-format-unknown",
        "cli",
        _sum("--model_type", "llama", "--prompt_completion_format", "jinja"),
        "prompt_completion_format",
    ),  # fmt: skip
    _c(
        "lm-generate-on-plain-text",
        "cli",
        _lm("--predict_with_generate", "true"),
        "--predict_with_generate",
        "plain text",
    ),  # fmt: skip
    _c(
        "lm-generation-length-without-generate",
        "cli",
        _lm("--generation_max_length", "9"),
        "--generation_max_length",
        "--predict_with_generate",
    ),  # fmt: skip
    _c(
        "metric-for-best-model-misspelt",
        "cli",
        _sum("--metric_for_best_model", "rogue1"),
        "metric_for_best_model",
        "rogue1",
        "rouge1",
        note="issue 21: a KeyError after the first evaluation",
    ),  # fmt: skip
    _c(
        "metric-for-best-model-of-another-task",
        "cli",
        _lm("--metric_for_best_model", "bleu"),
        "bleu",
        "language_modeling",
    ),  # fmt: skip
    _c(
        "epochs-beside-max-steps",
        "cli",
        _sum("--num_train_epochs", "2", "--max_steps", "5"),
        "the command line sets both num_train_epochs and max_steps=5",
        note="issue 21: max_steps silently replaced the epochs",
    ),  # fmt: skip
    _c(
        "epochs-on-the-command-line-under-a-config-max-steps",
        "yaml",
        _yaml("summarization", "max_steps: 5\n", "--num_train_epochs", "2"),
        "--num_train_epochs on the command line",
        "max_steps=5",
        "--config",
    ),  # fmt: skip
    _c(
        "epochs-and-max-steps-in-one-config",
        "yaml",
        _yaml("summarization", "max_steps: 5\nnum_train_epochs: 2\n"),
        "--config",
        "sets both num_train_epochs and max_steps=5",
    ),  # fmt: skip
    _c(
        "config-overrides-key-twice",
        "cli",
        _lm("--config_overrides", "n_layer=2,n_embd=32,n_layer=4"),
        "config_overrides",
        "n_layer given more than once",
        note="issue 21: duplicate key=value lists let the last value win silently",
    ),  # fmt: skip
    _c(
        "json-option-key-twice",
        "cli",
        _sum("--lr_scheduler_kwargs", '{"power": 1.0, "power": 2.0}', "--lr_scheduler_type", "polynomial"),
        "--lr_scheduler_kwargs",
        "'power' given more than once",
    ),  # fmt: skip
    _c(
        "optim-args-key-twice",
        "cli",
        _sum("--optim_args", "betas=0.9,eps=1e-8,eps=1e-6"),
        "--optim_args",
        "eps given more than once",
    ),  # fmt: skip
    _c(
        "optim-needs-a-missing-package",
        "cli",
        _sum("--optim", "adamw_bnb_8bit"),
        "--optim adamw_bnb_8bit",
        "bitsandbytes",
        note="issue 21: an ImportError once training started",
    ),  # fmt: skip
    # ---------------------------------------------------------------- command line: numbers
    _c("lr-nan", "cli", _sum("--learning_rate", "nan"), "learning_rate"),
    _c("lr-negative", "cli", _sum("--learning_rate", "-1"), "learning_rate"),
    _c("lr-zero", "cli", _lm("--learning_rate", "0"), "learning_rate"),
    _c("lr-inf", "cli", _tr("--learning_rate", "inf"), "learning_rate"),
    _c("train-batch-0", "cli", _sum("--per_device_train_batch_size", "0"), "per_device_train_batch_size"),
    _c("train-batch-negative", "cli", _lm("--per_device_train_batch_size", "-2"), "per_device_train_batch_size"),
    _c("eval-batch-0", "cli", _tr("--per_device_eval_batch_size", "0"), "per_device_eval_batch_size"),
    _c("grad-accum-0", "cli", _sum("--gradient_accumulation_steps", "0"), "gradient_accumulation_steps"),
    _c("grad-accum-negative", "cli", _lm("--gradient_accumulation_steps", "-1"), "gradient_accumulation_steps"),
    _c("max-steps-negative", "cli", _lm("--max_steps", "-5"), "max_steps"),
    _c("max-steps-zero", "cli", _lm("--max_steps", "0", "--num_train_epochs", "0"), "max_steps"),
    _c("epochs-zero", "cli", _sum("--num_train_epochs", "0"), "num_train_epochs"),
    _c("epochs-negative", "cli", _lm("--num_train_epochs", "-1"), "num_train_epochs"),
    _c("epochs-nan", "cli", _lm("--num_train_epochs", "nan"), "num_train_epochs"),
    _c("warmup-negative", "cli", _tr("--warmup_steps", "-1"), "warmup_steps"),
    _c("weight-decay-nan", "cli", _lm("--weight_decay", "nan"), "weight_decay"),
    _c("weight-decay-negative", "cli", _lm("--weight_decay", "-0.1"), "weight_decay"),
    _c("save-steps-0", "cli", _lm("--save_strategy", "steps", "--save_steps", "0"), "save_steps"),
    _c("eval-steps-0", "cli", _lm("--eval_strategy", "steps", "--eval_steps", "0"), "eval_steps"),
    _c("logging-steps-0", "cli", _lm("--logging_steps", "0"), "logging_steps"),
    _c("logging-steps-negative", "cli", _lm("--logging_steps", "-3"), "logging_steps"),
    _c("seed-negative", "cli", _lm("--seed", "-1"), "seed"),
    _c("seed-too-large", "cli", _lm("--seed", str(2**40)), "seed"),
    _c("data-seed-negative", "cli", _lm("--data_seed", "-1"), "data_seed"),
    _c("max-grad-norm-nan", "cli", _lm("--max_grad_norm", "nan"), "max_grad_norm"),
    _c("max-grad-norm-negative", "cli", _lm("--max_grad_norm", "-1"), "max_grad_norm"),
    _c("adam-beta2-above-1", "cli", _tr("--adam_beta2", "1.5"), "adam_beta2"),
    _c("adam-epsilon-negative", "cli", _lm("--adam_epsilon", "-1e-8"), "adam_epsilon"),
    _c("save-total-limit-0", "cli", _lm("--save_total_limit", "0"), "save_total_limit"),
    _c("generation-max-length-0", "cli", _sum("--generation_max_length", "0"), "generation_max_length"),
    _c("length-penalty-nan", "cli", _sum("--length_penalty", "nan"), "length_penalty"),
    _c("max-target-length-0", "cli", _sum("--max_target_length", "0"), "max_target_length"),
    _c("block-size-1", "cli", _lm("--block_size", "1"), "block_size"),
    _c("tokenizer-vocab-3", "cli", _lm("--tokenizer_vocab_size", "3"), "tokenizer_vocab_size"),
    _c("dataloader-workers-negative", "cli", _lm("--dataloader_num_workers", "-1"), "dataloader_num_workers"),
    _c("eval-accumulation-0", "cli", _lm("--eval_accumulation_steps", "0"), "eval_accumulation_steps"),
    _c("gamma-nan", "cli", _sum("--gamma", "nan"), "gamma"),
    _c("min-weight-2", "cli", _tr("--min_weight", "2"), "min_weight"),
    _c("label-smoothing-nan", "cli", _tr("--label_smoothing", "nan"), "label_smoothing"),
    _c("validation-percentage-0", "cli", _lm("--validation_split_percentage", "0"), "validation_split_percentage"),
    _c("max-eval-samples-negative", "cli", _lm("--max_eval_samples", "-1"), "max_eval_samples"),
    _c("no-repeat-ngram-negative", "cli", _sum("--no_repeat_ngram_size", "-1"), "no_repeat_ngram_size"),
    _c("beams-0", "cli", _tr("--generation_num_beams", "0"), "generation_num_beams"),
    _c("max-steps-float", "cli", _lm("--max_steps", "2.5"), "max_steps"),
    _c("batch-size-word", "cli", _lm("--per_device_train_batch_size", "abc"), "per_device_train_batch_size"),
    _c("bool-maybe", "cli", _lm("--do_train", "maybe"), "do_train"),
    _c("scheduler-unknown", "cli", _lm("--lr_scheduler_type", "bogus"), "lr_scheduler_type"),
    _c("label-smoothing-factor", "cli", _sum("--label_smoothing_factor", "0.1"), "label_smoothing_factor"),
    _c("nothing-to-do", "cli", _lm("--do_train", "false", "--do_eval", "false", "--do_predict", "false"), "do_train"),
    _c("same-languages", "cli", _tr("--source_lang", "en"), "source_lang"),
    _c("abbreviated-option", "cli", _lm("--learning_r", "0.1"), "--learning_r"),
    _c(
        "config-twice",
        "cli",
        lambda tmp: ("language_modeling", ["--output_dir", _out(tmp), "--config", "a.yaml", "--config", "b.yaml"]),
        "--config",
    ),  # fmt: skip
    _c("option-twice", "cli", _lm("--learning_rate", "1e-3", "--learning_rate=1e-4"), "learning_rate"),
    _c(
        "flag-and-negation",
        "cli",
        _lm("--remove_unused_columns", "true", "--no_remove_unused_columns"),
        "remove_unused_columns",
    ),  # fmt: skip
    _c("same-column-twice", "cli", _sum("--summary_column", "document"), "document", "summary_column"),
    _c("output-dir-empty", "cli", lambda tmp: ("language_modeling", ["--output_dir", "", *QUICK_LM]), "output_dir"),
    # ---------------------------------------------------------------- YAML
    _c("yaml-lr-list", "yaml", _yaml("summarization", "learning_rate: [1]\n"), "learning_rate", "config.yaml"),
    _c(
        "yaml-batch-2.7",
        "yaml",
        _yaml("summarization", "per_device_train_batch_size: 2.7\n"),
        "per_device_train_batch_size",
    ),  # fmt: skip
    _c("yaml-max-steps-negative", "yaml", _yaml("language_modeling", "max_steps: -5\n"), "max_steps"),
    _c("yaml-epochs-word", "yaml", _yaml("language_modeling", "num_train_epochs: three\n"), "num_train_epochs"),
    _c("yaml-norway", "yaml", _yaml("translation", "source_lang: no\ntarget_lang: en\n"), "source_lang"),
    _c(
        "yaml-duplicate-key",
        "yaml",
        _yaml("summarization", "gamma: 0.1\nmin_weight: 0.2\ngamma: 0.5\n"),
        "gamma",
        "duplicate",
    ),  # fmt: skip
    _c("yaml-lr-nan", "yaml", _yaml("language_modeling", "learning_rate: .nan\n"), "learning_rate"),
    _c("yaml-bool-as-int", "yaml", _yaml("language_modeling", "do_train: 1\n"), "do_train"),
    _c("yaml-int-as-bool", "yaml", _yaml("language_modeling", "seed: true\n"), "seed"),
    _c("yaml-str-as-int", "yaml", _yaml("language_modeling", "text_column: 5\n"), "text_column"),
    _c("yaml-null-lr", "yaml", _yaml("language_modeling", "learning_rate: null\n"), "learning_rate"),
    _c("yaml-mapping-value", "yaml", _yaml("language_modeling", "learning_rate: {value: 0.1}\n"), "learning_rate"),
    _c("yaml-top-level-list", "yaml", _yaml("language_modeling", "- learning_rate\n- 0.1\n"), "config.yaml"),
    _c("yaml-not-utf8", "yaml", _yaml("language_modeling", b"text_column: caf\xe9\n"), "config.yaml"),
    _c("yaml-unknown-key", "yaml", _yaml("summarization", "beam_size: 5\n"), "beam_size"),
    _c("yaml-int-in-e-notation", "yaml", _yaml("language_modeling", "max_steps: 1e3\n"), "max_steps"),
    _c(
        "yaml-scheduler-unknown", "yaml", _yaml("language_modeling", "lr_scheduler_type: bogus\n"), "lr_scheduler_type"
    ),  # fmt: skip
    _c("yaml-gamma-word", "yaml", _yaml("summarization", "gamma: high\n"), "gamma"),
    _c("yaml-column-list", "yaml", _yaml("summarization", "text_column: [document]\n"), "text_column"),
    _c("yaml-syntax-error", "yaml", _yaml("summarization", "gamma: [0.1\n"), "config.yaml"),
    _c(
        "yaml-empty-file",
        "yaml",
        _yaml("summarization", ""),
        "config.yaml",
        "sets no option",
        note="round 3: trained on the defaults without a word",
    ),
    _c(
        "yaml-comments-only",
        "yaml",
        _yaml("summarization", "# gamma: 0.8\n# min_weight: 0.2\n"),
        "config.yaml",
        "sets no option",
        note="round 3: trained on the defaults without a word",
    ),
    _c(
        "config-is-a-folder",
        "yaml",
        _config_is_a_folder,
        "configs",
        "is a folder",
        note="round 3: reported as 'file not found'",
    ),
    _c("yaml-report-to-number", "yaml", _yaml("language_modeling", "report_to: 5\n"), "report_to"),
    _c("yaml-null-output-dir", "yaml", _yaml("language_modeling", "output_dir: null\n"), "output_dir", "null"),
    _c(
        "yaml-missing-file",
        "yaml",
        lambda tmp: ("language_modeling", ["--output_dir", _out(tmp), "--config", str(tmp / "nope.yaml")]),
        "nope.yaml",
    ),  # fmt: skip
    # ---------------------------------------------------------------- data files
    _c(
        "jsonl-malformed-line",
        "data",
        _data("summarization", "train.jsonl", _malformed_jsonl),
        "train.jsonl",
        "line 22",
    ),  # fmt: skip
    _c("jsonl-not-utf8", "data", _data("summarization", "train.jsonl", _non_utf8_jsonl), "train.jsonl", "line 3"),
    _c("jsonl-array-line", "data", _data("summarization", "train.jsonl", _array_line), "train.jsonl", "line 6"),
    _c("jsonl-null-lines", "data", _data("summarization", "train.jsonl", _null_lines), "train.jsonl", "rows 10, 14"),
    _c(
        "jsonl-mixed-types",
        "data",
        _data("summarization", "train.jsonl", _mixed_summary_types),
        "train.jsonl",
        "summary",
        "line 13",
    ),  # fmt: skip
    _c("csv-ragged-row", "data", _data("summarization", "train.csv", _ragged_csv), "train.csv", "line 6"),
    _c(
        "csv-header-repeats-a-column",
        "data",
        _data("translation", "train.csv", _repeated_header_csv),
        "train.csv",
        "['en']",
        "more than once",
    ),  # fmt: skip
    _c("csv-not-utf8", "data", _data("summarization", "train.csv", _non_utf8_csv), "train.csv", "line 8"),
    _c("txt-not-utf8", "data", _data("language_modeling", "train.txt", _non_utf8_txt), "train.txt", "line 31"),
    _c("parquet-corrupt", "data", _corrupt_parquet, "train.parquet"),
    _c("json-object-not-rows", "data", _json_object_file, "train.json"),
    _c(
        "null-summaries-90pct",
        "data",
        _data("summarization", "train.jsonl", _null_summaries),
        "train.jsonl",
        "summary",
        "36",
    ),  # fmt: skip
    _c(
        "blank-documents-50pct",
        "data",
        _data("summarization", "train.jsonl", _empty_documents),
        "train.jsonl",
        "document",
        "20",
    ),  # fmt: skip
    _c(
        "translation-missing-en",
        "data",
        _data("translation", "train.jsonl", _missing_target_key),
        "train.jsonl",
        "'en'",
        "30",
    ),  # fmt: skip
    _c(
        "translation-null-rows",
        "data",
        _data("translation", "train.jsonl", _null_translation_rows),
        "train.jsonl",
        "translation",
        "14",
    ),  # fmt: skip
    _c(
        "translation-string-row",
        "data",
        _data("translation", "train.jsonl", _mixed_translation_types),
        "train.jsonl",
        "row 8",
    ),  # fmt: skip
    _c(
        "csv-empty-targets",
        "data",
        _data("translation", "train.csv", _flat_csv_null_targets),
        "train.csv",
        "'en'",
        "14",
    ),  # fmt: skip
    _c(
        "lm-empty-completions",
        "data",
        _data("language_modeling", "train.jsonl", _lm_empty_completions),
        "train.jsonl",
        "completion",
        "is empty",
        "10 of 20",
        note="round 3: half the rows dropped with no count, above max_dropped_fraction",
    ),
    _c(
        "lm-null-texts", "data", _data("language_modeling", "train.jsonl", _lm_null_texts), "train.jsonl", "text", "30"
    ),  # fmt: skip
    _c(
        "validation-null-summaries",
        "data",
        _data("summarization", "val.jsonl", _null_summaries, "--do_train", "false", option="--validation_file"),
        "val.jsonl",
        "summary",
    ),  # fmt: skip
    _c(
        "holdout-leaves-nothing",
        "data",
        _data("summarization", "train.jsonl", lambda: list(_rows(_summ_rows(1)))),
        "validation_split_percentage",
        "1 training row",
    ),  # fmt: skip
    _c(
        "data-file-is-directory",
        "data",
        lambda tmp: ("language_modeling", ["--output_dir", _out(tmp), *QUICK_LM_FILES, "--train_file", str(tmp)]),
        "train_file",
    ),  # fmt: skip
    _c(
        "model-folder-missing-offline",
        "data",
        _sum("--model_name_or_path", "models/no-such-checkpoint"),
        "model_name_or_path",
        "models/no-such-checkpoint",
        "HF_HUB_OFFLINE",
        note="new-user trial: transformers said it could not connect to huggingface.co",
    ),  # fmt: skip
    _c(
        "tokenizer-folder-missing-offline",
        "data",
        _tr("--model_type", "marian", "--tokenizer_name", "/no/such/tokenizer"),
        "tokenizer_name",
        "/no/such/tokenizer",
        "HF_HUB_OFFLINE",
    ),  # fmt: skip
    _c(
        "data-file-missing",
        "data",
        lambda tmp: (
            "translation",
            ["--output_dir", _out(tmp), *QUICK_FILES, "--train_file", str(tmp / "nope.jsonl")],
        ),
        "nope.jsonl",
    ),  # fmt: skip
    # ---------------------------------------------------------------- classification data
    _c(
        "cls-label-unseen-in-training",
        "data",
        _cls_files(_cls_rows(12), [*_cls_rows(3), {"sentence": "a new kind", "label": "politics"}]),
        "validation",
        "'politics'",
        "never has",
    ),
    _c("cls-one-class", "data", _cls_files(_cls_rows(12, ("sports",))), "train", "'sports'", "two classes"),
    _c(
        "cls-float-labels",
        "data",
        _cls_files([{"sentence": f"x {i}", "label": i / 10} for i in range(12)]),
        "row 2",  # the first label with a fraction (row 1 is 0.0)
        "label",
        "0.1",
        "regression",
    ),
    _c("cls-null-label", "data", _cls_files([*_cls_rows(12), {"sentence": "x", "label": None}]), "row 13", "null"),
    _c(
        "cls-missing-label-column",
        "data",
        _cls_files(_cls_rows(12), None, "--label_column_name", "topic"),
        "topic",
        "--label_column_name",
    ),
    _c(
        "cls-missing-text-column",
        "data",
        _cls_files(_cls_rows(12), None, "--text_column_names", "text"),
        "'text'",
        "--text_column_names",
    ),
    _c(
        "cls-empty-texts",
        "data",
        _cls_files([*({"sentence": "", "label": "sports"} for _ in range(4)), *_cls_rows(12)]),
        "--text_column_names",
        "empty",
        "max_dropped_fraction",
    ),
    _c(
        "cls-three-text-columns",
        "cli",
        _cls_files(_cls_rows(12), None, "--text_column_names", "a,b,c"),
        "--text_column_names",
        "two",
    ),
    _c(
        "cls-num-labels-override",
        "cli",
        _cls_files(_cls_rows(12), None, "--config_overrides", "num_labels=5"),
        "num_labels",
        "--config_overrides",
    ),
    _c(
        "cls-chunked-loss", "cli", _cls_files(_cls_rows(12), None, "--loss_impl", "chunked"), "loss_impl", "classifier"
    ),
    _c(
        "cls-mixed-label-kinds",
        "data",
        _cls_files([*_cls_rows(12), {"sentence": "x", "label": 7}]),
        "mix texts and integers",
    ),
    # ---------------------------------------------------------------- output folders and checkpoints
    _c("reuse-earlier-run", "output", _reuse_earlier_run, "output_dir", "overwrite_output_dir"),
    _c("reuse-with-checkpoints", "output", _reuse_with_checkpoints, "output_dir", "checkpoint-"),
    _c("reuse-unrelated-file", "output", _unrelated_file, "output_dir", "notes.txt"),
    _c("resume-truncated-weights", "output", _resume_truncated, "checkpoint-300", "checkpoint-200"),
    _c("resume-incomplete-path", "output", _resume_incomplete_path, "checkpoint-300", "checkpoint-200"),
    _c("resume-nothing-there", "output", _resume_nothing, "resume_from_checkpoint", "out"),
    _c("resume-missing-path", "output", _resume_missing_path, "checkpoint-5"),
    _c(
        "overwrite-users-model-folder",
        "output",
        _overwrite_users_files(
            "README.md", "config.json", "vocab.json", "notes.txt", "runs/sweep-2024/log.txt", "tokenizer/NOTES.txt"
        ),
        "README.md",
        "config.json",
        "vocab.json",
        "runs/sweep-2024/log.txt",
        "tokenizer/NOTES.txt",
        "overwrite_output_dir",
        note="issue 21: these were replaced or deleted",
    ),  # fmt: skip
    _c(
        "overwrite-users-checkpoint",
        "output",
        _overwrite_users_files("checkpoint-7/weights.pt"),
        "checkpoint-7/weights.pt",
        "did not write",
    ),  # fmt: skip
    _c(
        "overwrite-users-shard",
        "output",
        _overwrite_users_files("model-00001-of-00002.safetensors"),
        "model-00001-of-00002.safetensors",
    ),  # fmt: skip
    _c(
        "overwrite-users-predictions",
        "output",
        _overwrite_users_files("generated_predictions.jsonl"),
        "generated_predictions.jsonl",
    ),  # fmt: skip
    _c(
        "resume-without-optimizer",
        "output",
        _resume_without_optimizer,
        "checkpoint-200",
        "optimizer.pt",
        "save_only_model",
    ),  # fmt: skip
    _c("resume-without-scheduler", "output", _resume_without_scheduler, "checkpoint-200", "scheduler.pt"),
    _c(
        "resume-checkpoint-of-another-model",
        "output",
        _resume_another_model,
        "checkpoint-200",
        "was saved from another model",
        "(checkpoint) vs",
    ),  # fmt: skip
    _c(
        "resume-truncated-trainer-state",
        "output",
        _resume_truncated_trainer_state,
        "checkpoint-300",
        "trainer_state.json",
        "checkpoint-200",
    ),  # fmt: skip
    _c("resume-and-overwrite", "output", _resume_and_overwrite, "overwrite_output_dir", "resume_from_checkpoint"),
    _c(
        "resume-elsewhere-into-earlier-run",
        "output",
        _resume_elsewhere_into_earlier_run,
        "output_dir",
        "run_info.json",
    ),  # fmt: skip
    _c(
        "overwrite-the-model-it-loads",
        "output",
        _overwrite_the_model_it_loads,
        "model_name_or_path",
        "overwrite_output_dir",
    ),  # fmt: skip
    _c("resume-past-max-steps", "output", _resume_past_max_steps, "max_steps", "step 300"),
    _c("resume-other-loss", "output", _resume_other_loss, "gamma 0.1 -> 0.8", "allow_loss_change_on_resume"),
    _c("output-dir-is-file", "output", _output_dir_is_file, "output_dir"),
    _c("output-dir-under-file", "output", _output_dir_under_file, "blocker"),
    _c("output-dir-unwritable", "output", _output_dir_unwritable, "/proc"),
    # round three: the folder's state on disk, checkpoints missing a piece
    _c(
        "output-dir-dangling-link",
        "output",
        _out_link_to(lambda tmp: tmp / "moved" / "out"),
        "--output_dir",
        "dangling",
    ),  # fmt: skip
    _c("output-dir-link-loop", "output", _out_link_to(_link_loop), "--output_dir", "loops"),
    _c(
        "output-dir-link-to-file",
        "output",
        _out_link_to(lambda tmp: Path(_write_lines(tmp / "a.txt", ["x"]))),
        "--output_dir",
        "not a directory",
    ),  # fmt: skip
    _c(
        "resume-without-weights",
        "output",
        _resume_changed(lambda f: (f / "model.safetensors").unlink()),
        "checkpoint-200",
        "no model weights",
        "model.safetensors",
    ),  # fmt: skip
    _c(
        "resume-weights-not-a-file",
        "output",
        _resume_changed(_weights_folder),
        "checkpoint-200",
        "model.safetensors is not a file",
    ),  # fmt: skip
    _c(
        "resume-trainer-state-not-an-object",
        "output",
        _resume_changed(lambda f: (f / "trainer_state.json").write_text('"step 200"')),
        "checkpoint-200",
        "trainer_state.json holds a str",
    ),  # fmt: skip
    _c(
        "resume-path-is-a-file",
        "output",
        _resume_changed(lambda f: None, lambda tmp: str(tmp / "out" / "checkpoint-200" / "optimizer.pt")),
        "resume_from_checkpoint",
        "optimizer.pt is a file, not a checkpoint folder",
    ),  # fmt: skip
    # round three: what another library checks only when it uses it, built at check time
    _c(
        "sched-cosine-num-cycle",
        "cli",
        _sum("--lr_scheduler_type", "cosine", "--lr_scheduler_kwargs", '{"num_cycle": 0.5}'),
        "--lr_scheduler_kwargs",
        "num_cycle",
    ),  # fmt: skip
    _c(
        "sched-kwargs-beside-constant",
        "cli",
        _lm("--lr_scheduler_type", "constant", "--lr_scheduler_kwargs", '{"num_cycles": 2}'),
        "--lr_scheduler_kwargs",
        "constant",
        "would not take effect",
    ),  # fmt: skip
    _c(
        "sched-min-lr-rate-missing",
        "cli",
        _tr("--lr_scheduler_type", "cosine_with_min_lr"),
        "--lr_scheduler_type cosine_with_min_lr",
        "min_lr",
    ),  # fmt: skip
    _c("optim-args-malformed", "cli", _lm("--optim", "sgd", "--optim_args", "momentum"), "--optim_args"),
    _c(
        "config-overrides-heads-do-not-divide",
        "cli",
        _lm("--config_overrides", "n_embd=64,n_layer=2,n_head=3,n_positions=256"),
        "--config_overrides",
        "divisible",
    ),  # fmt: skip
    _c(
        "cls-config-overrides-heads-do-not-divide",
        "cli",
        _cls_files(
            _cls_rows(12),
            None,
            "--config_overrides",
            "hidden_size=50,num_hidden_layers=1,num_attention_heads=4,intermediate_size=64,max_position_embeddings=256",
        ),
        "--config_overrides",
        "attention heads",
    ),  # fmt: skip
    _c(
        "train-batch-beyond-any-bound",
        "cli",
        _sum("--per_device_train_batch_size", str(2**40)),
        "per_device_train_batch_size",
    ),  # fmt: skip
    _c(
        "grad-accum-beyond-any-bound",
        "cli",
        _lm("--gradient_accumulation_steps", str(10**9)),
        "gradient_accumulation_steps",
    ),  # fmt: skip
    # round three: data files' keys, links and bytes
    _c(
        "jsonl-duplicate-key",
        "data",
        _data("summarization", "train.jsonl", _duplicate_key_jsonl),
        "train_file",
        "line 12",
        "'document' is given twice",
    ),  # fmt: skip
    _c(
        "json-array-duplicate-key",
        "data",
        _duplicate_key_json_array,
        "train_file",
        "line 4",
        "'summary' is given twice",
    ),  # fmt: skip
    _c(
        "data-file-link-to-device",
        "data",
        _data_link_to("/dev/zero"),
        "train_file",
        "not a regular file",
        "character device",
    ),  # fmt: skip
    _c(
        "data-file-dangling-link",
        "data",
        _data_link_to("/moved/away/train.jsonl"),
        "train_file",
        "/moved/away/train.jsonl",
        "does not exist",
    ),  # fmt: skip
    _c(
        "txt-with-nul-bytes",
        "data",
        _data("language_modeling", "corpus.txt", lambda: [b"a line of text", b"\x00\x00\x00 binary \x00"] * 20),
        "train_file",
        "line 2",
        "NUL",
        "binary",
    ),  # fmt: skip
    _c("cls-jsonl-duplicate-label", "data", _cls_duplicate_label, "train_file", "line 4", "'label' is given twice"),
    # ---------------------------------------------------------------- Python API
    _c("gce-gamma-1.5", "api", _gce(gamma=1.5), "gamma"),
    _c("gce-gamma-nan", "api", _gce(gamma=float("nan")), "gamma"),
    _c("gce-gamma-str", "api", _gce(gamma="0.5"), "gamma"),
    _c("gce-min-weight-negative", "api", _gce(min_weight=-0.1), "min_weight"),
    _c("gce-label-smoothing-1", "api", _gce(label_smoothing=1.0), "label_smoothing"),
    _c("gce-reduction-unknown", "api", _gce(reduction="avg"), "reduction"),
    _c(
        "gce-int-logits",
        "api",
        lambda tmp: _gce(logits=__import__("torch").ones(2, 3, 5, dtype=__import__("torch").long))(tmp),
        "logits",
    ),  # fmt: skip  # noqa: E501
    _c("gce-float-labels", "api", lambda tmp: _gce(labels=__import__("torch").zeros(2, 3))(tmp), "labels"),
    _c("gce-label-out-of-range", "api", lambda tmp: _gce(labels=__import__("torch").full((2, 3), 7))(tmp), "7"),
    _c("gce-label-negative", "api", lambda tmp: _gce(labels=__import__("torch").full((2, 3), -3))(tmp), "-3"),
    _c(
        "gce-shape-mismatch",
        "api",
        lambda tmp: _gce(labels=__import__("torch").zeros(2, 4, dtype=__import__("torch").long))(tmp),
        "shape",
    ),  # fmt: skip  # noqa: E501
    _c("gce-neg-inf-target", "api", _gce_neg_inf_target, "+inf", note="correct result: +inf, not NaN"),
    _c("args-gamma-2", "api", _tvd_args(gamma=2.0), "TVDArguments.gamma"),
    _c("args-gamma-bool", "api", _tvd_args(gamma=True), "TVDArguments.gamma"),
    _c("args-gamma-str", "api", _tvd_args(gamma="0.1"), "TVDArguments.gamma"),
    _c("args-schedule-unknown", "api", _tvd_args(gamma_schedule="exp"), "gamma_schedule"),
    _c("args-loss-type-unknown", "api", _tvd_args(loss_type="mse"), "loss_type"),
    _c("args-nonfinite-unknown", "api", _tvd_args(nonfinite_policy="warn"), "nonfinite_policy"),
    _c(
        "args-schedule-ratio-0",
        "api",
        _tvd_args(gamma_schedule="linear", gamma_schedule_ratio=0.0),
        "gamma_schedule_ratio",
    ),  # fmt: skip
    _c("args-focal-gamma-negative", "api", _tvd_args(loss_type="focal", focal_gamma=-1.0), "focal_gamma"),
    _c(
        "args-focal-with-gamma",
        "api",
        _tvd_args(loss_type="focal", gamma=0.5),
        "gamma=0.5",
        "loss_type='focal'",
        note="round 3: accepted, γ unused",
    ),
    _c(
        "args-focal-gamma-under-gamma-ce",
        "api",
        _tvd_args(focal_gamma=3.0),
        "focal_gamma=3.0",
        "loss_type='gamma_ce'",
        note="round 3: accepted, unused",
    ),
    _c(
        "cli-focal-with-gamma",
        "cli",
        _sum("--loss_type", "focal", "--gamma", "0.5"),
        "gamma=0.5",
        "focal",
        note="round 3: trained, the same loss as with --gamma 0.9",
    ),
    _c(
        "cli-focal-gamma-under-gamma-ce",
        "cli",
        _sum("--focal_gamma", "3"),
        "focal_gamma=3.0",
        "gamma_ce",
        note="round 3: trained, the same loss as without it",
    ),
    _c(
        "args-schedule-steps-0",
        "api",
        _tvd_args(gamma_schedule="linear", gamma_schedule_steps=0),
        "gamma_schedule_steps",
    ),  # fmt: skip
    _c("trainer-resume-truncated", "api", _trainer_resume_truncated, "checkpoint-3", "checkpoint-2"),
    _c("weight-rule-not-a-rule", "api", _api(_rule_not_a_rule), "weight_rule must be a TokenWeightRule"),
    _c(
        "weight-rule-beside-gamma",
        "api",
        _api(_rule_beside_gamma),
        "gamma=0.5",
        "gamma_schedule='linear'",
        "would not be applied",
    ),  # fmt: skip
    _c("weight-rule-not-elementwise", "api", _api(_rule_not_elementwise), "'summed'", "one weight per token"),
    _c("weight-rule-alpha-negative", "api", _api(_rule_alpha_negative), "alpha"),
    _c(
        "weight-rule-entropy-one-argument",
        "api",
        _api(_rule_entropy_weight_of_one_argument),
        "'gate'",
        "weight(log_p, entropy)",
        note="found at the first loss call otherwise (a TypeError from the lambda)",
    ),
    _c(
        "weight-rule-entropy-not-asked",
        "api",
        _api(_rule_of_entropy_without_uses_entropy),
        "'gate'",
        "uses_entropy=True",
    ),
    _c(
        "tvd-loss-causal-shift-on-seq2seq-output",
        "api",
        _api(_tvd_loss_on_seq2seq_output),
        "Seq2SeqLMOutput",
        "shift_labels=False",
        note="issue 21: every logit scored against the next label",
    ),  # fmt: skip
    _c(
        "torch-linear-ce-with-softcap",
        "api",
        _api(_torch_linear_ce_with_softcap),
        "torch_linear_ce",
        "final_logit_softcapping",
    ),  # fmt: skip
    _c(
        "loss-weights-for-a-loss-that-ignores-them",
        "api",
        _api(_loss_weights_under_the_stock_trainer),
        "only the TVD trainers",
        "own_loss=True",
        note="issue 22: the stock Trainer dropped the weights silently",
    ),  # fmt: skip
    _c("trainer-headless-model", "api", _trainer("headless"), "GPT2Model", "head"),
    _c("trainer-label-smoothing-factor", "api", _trainer(label_smoothing_factor=0.1), "label_smoothing_factor"),
    _c("trainer-tvd-args-dict", "api", _trainer(tvd={"gamma": 0.1}), "tvd_args"),
    _c("trainer-neg-inf-logit", "api", _trainer_poisoned, "step 2", note="correct result: stops before the update"),
    # round three: the library's arguments at the point of use
    _c("args-gamma-changed-then-train", "api", _changed_args_trainer("gamma", 1.5), "TVDArguments.gamma", "1.5"),
    _c(
        "args-loss-type-changed-then-train", "api", _changed_args_trainer("loss_type", "mse"), "TVDArguments.loss_type"
    ),  # fmt: skip
    _c("args-changed-then-loss-called", "api", _changed_args_loss, "TVDArguments.gamma"),
    _c("trainer-no-trainable-parameter", "api", _frozen_model_trainer, "GPT2LMHeadModel", "no trainable parameter"),
    _c(
        "trainer-rotation-foreign",
        "api",
        _trainer_rotation,
        "kept",
        note="correct result: other run's checkpoints kept",
    ),  # fmt: skip  # noqa: E501
]


# ------------------------------------------------------------ options not applied; resumes that would differ
def _resume_with_recorded(tmp: Path, *extra: str, change: Callable[[Path], None] | None = None,
                          options: dict[str, Any] | None = None) -> Any:  # fmt: skip
    """A checkpoint whose marker records its files' sizes and checksums and its training options (as this
    version's markers do), ``change`` applied to its folder afterwards, resumed with ``extra``."""
    from hf_tvd_loss.checkpoints import checkpoint_file_records

    _checkpoint(tmp / "out", 200)
    folder = tmp / "out" / "checkpoint-200"
    marker = folder / "tvd_checkpoint_complete.json"
    recorded = {**json.loads(marker.read_text()), **checkpoint_file_records(str(folder))}
    if options is not None:
        recorded["training_options"] = options
    marker.write_text(json.dumps(recorded))
    if change is not None:
        change(folder)
    return "language_modeling", ["--output_dir", _out(tmp), *QUICK_LM, "--resume_from_checkpoint", "latest", *extra]


def _flip_a_byte(name: str) -> Callable[[Path], None]:
    def change(folder: Path) -> None:
        data = bytearray((folder / name).read_bytes())
        data[-1] ^= 0x01
        (folder / name).write_bytes(bytes(data))

    return change


_RECORDED_OPTIONS = {"weight_decay": 0.0, "per_device_train_batch_size": 16.0, "learning_rate": 0.002}

APPLIED_AND_RESUME_CASES: list[Case] = [
    Case("optim-sgd-adam-beta2", "cli", _lm("--optim", "sgd", "--adam_beta2", "0.98"),
         ("--adam_beta2 0.98", "--optim sgd"), "issue 36: SGD trained, adam_beta2 dropped without a word"),
    Case("optim-adagrad-adam-epsilon", "cli", _lm("--optim", "adagrad", "--adam_epsilon", "1e-6"),
         ("--adam_epsilon", "adagrad")),
    Case("optim-adafactor-adam-beta1", "cli", _lm("--optim", "adafactor", "--adam_beta1", "0.8"),
         ("--adam_beta1", "adafactor")),
    Case("optim-args-key-not-passed", "cli", _lm("--optim", "adamw_torch", "--optim_args", "amsgrad=True"),
         ("--optim_args amsgrad=True", "adamw_torch"), "transformers passes only betas, eps, lr to AdamW"),
    Case("warmup-with-constant-schedule", "cli", _lm("--lr_scheduler_type", "constant", "--warmup_steps", "10"),
         ("--warmup_steps 10", "constant")),
    Case("scheduler-kwargs-not-passed", "cli",
         _lm("--lr_scheduler_type", "constant_with_warmup", "--lr_scheduler_kwargs", '{"num_cycles": 2}'),
         ("num_cycles", "constant_with_warmup")),
    Case("scheduler-kwargs-not-taken", "cli",
         _lm("--lr_scheduler_type", "cosine", "--lr_scheduler_kwargs", '{"power": 2}'), ("power", "cosine")),
    Case("resume-other-weight-decay", "output",
         lambda tmp: _resume_with_recorded(tmp, "--weight_decay", "0.1", options=_RECORDED_OPTIONS),
         ("weight_decay 0.0 -> 0.1",), "issue 36: the optimizer state restored the old weight decay silently"),
    Case("resume-other-batch-size", "output",
         lambda tmp: _resume_with_recorded(tmp, "--per_device_train_batch_size", "4", options=_RECORDED_OPTIONS),
         ("per_device_train_batch_size 16.0 -> 4.0",)),
    Case("resume-other-learning-rate", "output",
         lambda tmp: _resume_with_recorded(tmp, "--learning_rate", "0.01", options=_RECORDED_OPTIONS),
         ("learning_rate 0.002 -> 0.01",), "the scheduler state restored the old base learning rate silently"),
    Case("resume-file-changed-same-size", "output",
         lambda tmp: _resume_with_recorded(tmp, change=_flip_a_byte("model.safetensors")),
         ("model.safetensors changed after the checkpoint was written", "checksum")),
    Case("resume-file-changed-size", "output",
         lambda tmp: _resume_with_recorded(tmp, change=lambda f: (f / "tokenizer.json").write_text("{}")),
         ("tokenizer.json changed after the checkpoint was written", "bytes")),
    Case("resume-file-removed", "output",
         lambda tmp: _resume_with_recorded(tmp, change=lambda f: (f / "tokenizer_config.json").unlink()),
         ("tokenizer_config.json is missing",)),
    # kernel switches and label fields: built or read by transformers only once training or evaluation runs
    Case("liger-kernel-switch", "cli", _lm("--use_liger_kernel", "true"),
         ("use_liger_kernel", "chunked_backend='liger'"),
         "on the default GPT-2 model liger-kernel patched nothing and the run trained without a word"),
    Case("label-names-not-read", "cli", _lm("--label_names", "target_ids"), ("label_names", "target_ids"),
         "evaluation looked for targets in a field the batches do not have; the loss reads labels"),
    Case("chunked-triton-backend-on-cpu", "cli", _lm("--loss_impl", "chunked", "--chunked_backend", "liger"),
         ("chunked_backend='liger'", "CUDA"), "refused at the first training step, with a traceback"),
]  # fmt: skip

CASES += APPLIED_AND_RESUME_CASES


# ---------------------------------------- round four: paths as written (the rest: tests/hostile_round4.py)
def _lock_folder(tmp: Path) -> Any:
    (tmp / "out" / ".hf_tvd_loss.lock").mkdir(parents=True)
    return "language_modeling", ["--output_dir", _out(tmp), *QUICK_LM]


PATH_CASES: list[Case] = [
    _c("output-dir-s3-url", "output", lambda tmp: ("language_modeling", ["--output_dir", "s3://bucket/run", *QUICK_LM]),
       "--output_dir s3://bucket/run", "URL"),
    _c("train-file-https-url", "data", _lm("--train_file", "https://example.org/train.jsonl"), "--train_file", "URL"),
    _c("yaml-train-file-env-var", "yaml", _yaml("summarization", "train_file: $HOME/train.jsonl\n"), "$HOME",
       "environment variable"),
    _c("yaml-train-file-trailing-space", "yaml",
       _yaml("summarization", 'train_file: "train.jsonl "\n'), "train_file", "whitespace"),
    _c("output-dir-tilde-unknown-user", "output", _lm("--output_dir", "~no_such_user_x/run"), "~no_such_user_x"),
    _c("output-dir-lock-is-a-folder", "output", _lock_folder, ".hf_tvd_loss.lock", "not a regular file"),
]  # fmt: skip
CASES += PATH_CASES


# ------------------------------------------------------------------------------------------ judging
def _snapshot(folder: Path) -> dict[str, tuple[int, int]] | None:
    if not folder.exists():
        return None
    if folder.is_file():
        return {"": (folder.stat().st_size, folder.stat().st_mtime_ns)}
    # every entry, hidden ones (the lock file, the ledger's temporary files) included, with its bytes
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns, p.read_bytes() if p.is_file() else b"")
            for p in folder.rglob("*")}  # fmt: skip


@dataclass
class Result:
    case: Case
    verdict: Verdict
    message: str
    stage: str = ""  # where it ended: prepare | train | call
    extra: dict[str, Any] = field(default_factory=dict)


def _names_all(message: str, names: tuple[str, ...]) -> bool:
    return all(name.lower() in message.lower() for name in names)


def judge(case: Case, tmp: Path, *, train: bool = True) -> Result:
    """Run ``case`` in ``tmp`` (an empty folder) and judge it. ``train=False`` stops after ``prepare``."""
    built = case.build(tmp)
    if callable(built):
        try:
            value = built()
        except ValueError as err:
            message = str(err).removeprefix("expected: ")
            verdict = REFUSED_WELL if _names_all(str(err), case.names) else REFUSED_LATE
            return Result(case, verdict, message.splitlines()[0] if message else "", "call")
        except Exception as err:  # noqa: BLE001  # any other exception is an unclear refusal
            return Result(case, REFUSED_LATE, f"{type(err).__name__}: {err}".splitlines()[0], "call")
        return Result(case, ACCEPTED, f"returned {value!r}"[:200], "call")

    from hf_tvd_loss.tasks import get_task
    from hf_tvd_loss.tasks.run import build, prepare, train_and_evaluate

    task_name, argv = built
    out_arg = argv[argv.index("--output_dir") + 1] if "--output_dir" in argv else ""
    out = Path(out_arg) if out_arg else None
    before = _snapshot(out) if out is not None else None
    task = get_task(task_name)
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            prepared = prepare(task, argv)
    except SystemExit as exit_info:  # argparse: usage + "error: ..." on stderr, status 2
        text = stderr.getvalue().strip().splitlines()
        message = text[-1] if text else ""
        untouched = out is None or _snapshot(out) == before
        good = exit_info.code == 2 and _names_all(message, case.names) and untouched
        return Result(case, REFUSED_WELL if good else REFUSED_LATE, message, "prepare")
    except ValueError as err:
        message = str(err)
        untouched = out is None or _snapshot(out) == before
        good = _names_all(message, case.names) and untouched and "\n" not in message.strip()
        return Result(case, REFUSED_WELL if good else REFUSED_LATE, message, "prepare")
    except Exception as err:  # noqa: BLE001
        return Result(case, REFUSED_LATE, f"{type(err).__name__}: {err}".splitlines()[0], "prepare")
    if not train:
        return Result(case, ACCEPTED, "prepare accepted it", "prepare")
    try:
        with contextlib.redirect_stderr(stderr):
            metrics = train_and_evaluate(prepared, build(prepared))
    except Exception as err:  # noqa: BLE001
        text = f"{type(err).__name__}: {err}".strip().splitlines()
        return Result(case, REFUSED_LATE, text[0] if text else type(err).__name__, "train")
    shown = {k: v for k, v in metrics.items() if k in ("train_loss", "train_samples", "eval_loss", "epoch")}
    return Result(case, ACCEPTED, f"finished: {shown}", "train")


def main(argv: list[str] | None = None) -> int:
    """Run every case (or those whose id contains one of ``argv``), print one line each and the totals."""
    import logging

    logging.disable(logging.WARNING)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    wanted = argv if argv is not None else sys.argv[1:]
    json_out = None
    if wanted and wanted[0].startswith("--json="):
        json_out, wanted = wanted[0].removeprefix("--json="), wanted[1:]
    cases = [c for c in CASES if not wanted or any(w in c.id for w in wanted)]
    totals = {REFUSED_WELL: 0, REFUSED_LATE: 0, ACCEPTED: 0}
    rows = []
    for case in cases:
        with tempfile.TemporaryDirectory(prefix="hostile-") as tmp:
            result = judge(case, Path(tmp))
        totals[result.verdict] += 1
        message = re.sub(r"/tmp/hostile-[^/\s]+", "<tmp>", result.message)
        rows.append({"id": case.id, "group": case.group, "verdict": result.verdict, "stage": result.stage,
                     "message": message})  # fmt: skip
        print(f"{case.group:7s} {case.id:32s} {result.verdict:26s} [{result.stage}] {message[:160]}", flush=True)
    print(f"\n{len(cases)} cases: " + ", ".join(f"{v}: {n}" for v, n in totals.items()))
    if json_out:
        with open(json_out, "w", encoding="utf-8") as f:
            json.dump({"totals": totals, "cases": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
