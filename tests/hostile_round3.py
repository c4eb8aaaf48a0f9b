"""Hostile round 3 of issue "no surprises, round three": inputs invented for this round, in the style of
``tests/hostile_cases.py``, judged before and after the fixes (``python tests/hostile_round3.py``).

Each case is judged by :func:`hostile_cases.judge` with ``train=True``; the cases of :data:`VALID` are valid input
that must be read and trained (for them "accepted" is the good verdict and a refusal is a wrong one). A verdict of
*data loss* is given when a case's ``lost`` check finds files of the user's gone or changed. The table's own cases
(``CASES``) are not repeated here; the classes these found late or silent have their entries there.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from hostile_cases import (  # noqa: E402
    ACCEPTED,
    QUICK_FILES,
    QUICK_LM,
    REFUSED_LATE,
    REFUSED_WELL,
    Case,
    _c,
    _checkpoint,
    _cls_files,
    _cls_rows,
    _lm,
    _out,
    _rows,
    _sum,
    _summ_rows,
    _tr,
    _write_lines,
    judge,
)

__all__ = ["ROUND3", "VALID", "main"]

QUICK_CLS = ("--max_steps", "2", "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "4")


def _quick_cls(extra: tuple[str, ...]) -> list[str]:
    """The quick classification settings, less those ``extra`` sets itself (an option given twice is refused)."""
    pairs = [QUICK_CLS[i : i + 2] for i in range(0, len(QUICK_CLS), 2)]
    return [item for pair in pairs if pair[0] not in extra for item in pair]


def _cls(*extra: str, rows: int = 12) -> Callable[[Path], Any]:
    return _cls_files(_cls_rows(rows), None, *_quick_cls(extra), *extra)


# ---------------------------------------------------------------------------------------------- output folders
def _out_link(target: Callable[[Path], Path], task: str = "language_modeling") -> Callable[[Path], Any]:
    def build(tmp: Path) -> Any:
        os.symlink(target(tmp), tmp / "out")
        if task == "classification":
            return _cls()(tmp)
        return task, ["--output_dir", _out(tmp), *QUICK_LM]

    return build


def _a_file(tmp: Path) -> Path:
    (tmp / "notes.txt").write_text("the user's notes")
    return tmp / "notes.txt"


def _loop(tmp: Path) -> Path:
    os.symlink(tmp / "out", tmp / "out2")
    return tmp / "out2"


def _out_deep_under_file(tmp: Path) -> Any:
    (tmp / "f").write_text("a file")
    return "summarization", ["--output_dir", str(tmp / "f" / "a" / "b"), *QUICK_FILES, "--max_steps", "1",
                             "--synthetic_train_examples", "8", "--synthetic_eval_examples", "2"]  # fmt: skip


def _out_name_too_long(tmp: Path) -> Any:
    return "language_modeling", ["--output_dir", str(tmp / ("x" * 300)), *QUICK_LM]


def _out_sys(tmp: Path) -> Any:
    return "language_modeling", ["--output_dir", "/sys/kernel/hf_tvd_out", *QUICK_LM]


# ---------------------------------------------------------------------------------------------- checkpoints
def _resume_missing(name: str, explicit: bool = False, task: str = "language_modeling") -> Callable[[Path], Any]:
    def build(tmp: Path) -> Any:
        _checkpoint(tmp / "out", 200)
        path = tmp / "out" / "checkpoint-200" / name
        if path.is_dir():
            import shutil

            shutil.rmtree(path)
        else:
            path.unlink()
        value = str(tmp / "out" / "checkpoint-200") if explicit else "latest"
        return task, ["--output_dir", _out(tmp), *QUICK_LM, "--resume_from_checkpoint", value]

    return build


def _resume_weights_folder(tmp: Path) -> Any:
    _checkpoint(tmp / "out", 200)
    (tmp / "out" / "checkpoint-200" / "model.safetensors").unlink()
    (tmp / "out" / "checkpoint-200" / "model.safetensors").mkdir()
    return "language_modeling", ["--output_dir", _out(tmp), *QUICK_LM, "--resume_from_checkpoint", "latest"]


def _resume_path_is_file(tmp: Path) -> Any:
    _checkpoint(tmp / "first", 200)
    return "language_modeling", ["--output_dir", _out(tmp), *QUICK_LM, "--resume_from_checkpoint",
                                 str(tmp / "first" / "checkpoint-200" / "model.safetensors")]  # fmt: skip


def _resume_state_list(tmp: Path) -> Any:
    _checkpoint(tmp / "out", 200)
    (tmp / "out" / "checkpoint-200" / "trainer_state.json").write_text("[]")
    return "language_modeling", ["--output_dir", _out(tmp), *QUICK_LM, "--resume_from_checkpoint", "latest"]


def _cls_resume_no_optimizer(tmp: Path) -> Any:
    _checkpoint(tmp / "out", 2)
    (tmp / "out" / "checkpoint-2" / "optimizer.pt").unlink()
    return _cls("--resume_from_checkpoint", "latest", "--max_steps", "4")(tmp)


# ---------------------------------------------------------------------------------------------- data files
def _summ_lines(lines: list[str | bytes], *extra: str, name: str = "train.jsonl") -> Callable[[Path], Any]:
    def build(tmp: Path) -> Any:
        path = _write_lines(tmp / name, lines)
        return "summarization", ["--output_dir", _out(tmp), *QUICK_FILES, "--max_steps", "1", "--train_file", path,
                                 "--do_eval", "false", "--do_predict", "false", *extra]  # fmt: skip

    return build


def _dup_key_lines() -> list[str | bytes]:
    lines: list[str | bytes] = list(_rows(_summ_rows(20)))
    lines[6] = '{"document": "the mayor opened the market", "summary": "market opened", "summary": "mayor"}'
    return lines


def _late_field_lines(rows: int = 130_000) -> list[str | bytes]:
    """A valid file whose field ``source`` first appears at the last row (past the first 10 MB chunk datasets reads)."""
    lines: list[str | bytes] = list(_rows(_summ_rows(rows)))
    lines[-1] = json.dumps({"document": "the last report of the council", "summary": "last", "source": "archive"})
    return lines


def _nan_literal_lines() -> list[str | bytes]:
    lines: list[str | bytes] = list(_rows(_summ_rows(20)))
    lines[4] = '{"document": "a row written by pandas", "summary": NaN}'
    return lines


def _bom_lines() -> list[str | bytes]:
    lines: list[str | bytes] = list(_rows(_summ_rows(20)))
    lines[0] = b"\xef\xbb\xbf" + str(lines[0]).encode()
    return lines


def _nul_lines() -> list[str | bytes]:
    return [b"\x00" * 64 + b"the council met" for _ in range(40)]


def _json_array_dup(tmp: Path) -> Any:
    rows = [json.dumps(r) for r in _summ_rows(10)]
    rows[3] = '{"document": "a", "document": "b", "summary": "c"}'
    path = tmp / "train.json"
    path.write_text("[\n" + ",\n".join(rows) + "\n]\n")
    return "summarization", ["--output_dir", _out(tmp), *QUICK_FILES, "--max_steps", "1", "--train_file", str(path),
                             "--do_eval", "false", "--do_predict", "false"]  # fmt: skip


def _tr_nested_dup(tmp: Path) -> Any:
    lines: list[str | bytes] = [
        json.dumps(r) for r in [{"translation": {"de": f"der hund {i}", "en": f"the dog {i}"}} for i in range(20)]
    ]
    lines[9] = '{"translation": {"de": "der hund", "de": "die katze", "en": "the cat"}}'
    path = _write_lines(tmp / "train.jsonl", lines)
    return "translation", ["--output_dir", _out(tmp), *QUICK_FILES, "--max_steps", "1", "--train_file", path,
                           "--do_eval", "false", "--do_predict", "false"]  # fmt: skip


def _data_link(target: str, task: str = "summarization") -> Callable[[Path], Any]:
    def build(tmp: Path) -> Any:
        os.symlink(target, tmp / "train.jsonl")
        if task == "classification":
            base = ["--output_dir", _out(tmp), "--report_to", "none", "--disable_tqdm", "true", *QUICK_CLS]
            return task, [*base, "--train_file", str(tmp / "train.jsonl"), "--do_eval", "false", "--do_predict",
                          "false"]  # fmt: skip
        return task, ["--output_dir", _out(tmp), *QUICK_FILES, "--train_file", str(tmp / "train.jsonl"),
                      "--do_eval", "false", "--do_predict", "false"]  # fmt: skip

    return build


def _lm_text(data: bytes, name: str = "corpus.txt") -> Callable[[Path], Any]:
    def build(tmp: Path) -> Any:
        (tmp / name).write_bytes(data)
        return "language_modeling", ["--output_dir", _out(tmp), "--report_to", "none", "--disable_tqdm", "true",
                                     "--block_size", "32", "--max_steps", "1", "--train_file", str(tmp / name),
                                     "--do_eval", "false", "--do_predict", "false"]  # fmt: skip

    return build


def _cls_lines(lines: Callable[[], list[str]], *extra: str) -> Callable[[Path], Any]:
    def build(tmp: Path) -> Any:
        path = _write_lines(tmp / "train.jsonl", lines())
        base = ["--output_dir", _out(tmp), "--report_to", "none", "--disable_tqdm", "true", *QUICK_CLS]
        return "classification", [*base, "--train_file", path, "--do_eval", "false", "--do_predict", "false", *extra]

    return build


def _cls_dup_label() -> list[str]:
    lines = [json.dumps(r) for r in _cls_rows(12)]
    lines[5] = '{"sentence": "rain all day", "label": "weather", "label": "sports"}'
    return lines


def _cls_late_field() -> list[str]:
    lines = [json.dumps(r) for r in _cls_rows(250_000)]
    lines[-1] = json.dumps({"sentence": "a late row", "label": "sports", "note": "added later"})
    return lines


# ---------------------------------------------------------------------------------------------- Python API
def _api_trainer(mutate: Callable[[Any, Any], Any], *, frozen: bool = False, compiled: bool = False,
                 **training: Any) -> Callable[[Path], Any]:  # fmt: skip
    def build(tmp: Path) -> Any:
        import torch
        from transformers import GPT2Config, GPT2LMHeadModel, TrainingArguments

        from hf_tvd_loss import TVDArguments, TVDTrainer

        model = GPT2LMHeadModel(GPT2Config(vocab_size=32, n_embd=16, n_layer=1, n_head=2, n_positions=16))
        if frozen:
            model.requires_grad_(False)
        if compiled:
            model = torch.compile(model, backend="eager")
        ids = torch.randint(0, 32, (8, 8))
        data = [{"input_ids": row, "labels": row} for row in ids]

        def call() -> Any:
            args = TrainingArguments(output_dir=_out(tmp), report_to="none", use_cpu=True, disable_tqdm=True,
                                     max_steps=2, per_device_train_batch_size=4, save_strategy="no",
                                     **training)  # fmt: skip
            tvd = TVDArguments(gamma=0.5)
            trainer = TVDTrainer(model=model, args=args, train_dataset=data, tvd_args=tvd)
            mutate(tvd, trainer)
            return trainer.train()

        return call

    return build


def _set(field: str, value: Any) -> Callable[[Any, Any], None]:
    return lambda tvd, trainer: setattr(tvd, field, value)


def _loss_after_change(field: str, value: Any) -> Callable[[Path], Any]:
    def build(tmp: Path) -> Any:
        import torch

        from hf_tvd_loss import TVDArguments, TVDLoss

        def call() -> Any:
            args = TVDArguments(gamma=0.5)
            loss = TVDLoss(args, shift_labels=True)
            setattr(args, field, value)
            return loss({"logits": torch.randn(2, 4, 7)}, torch.randint(0, 7, (2, 4)))

        return call

    return build


def _replace_invalid(tmp: Path) -> Any:
    import dataclasses

    from hf_tvd_loss import TVDArguments

    return lambda: dataclasses.replace(TVDArguments(), min_weight=1.5)


ROUND3: list[Case] = [
    # ---------------------------------------------------------------- values another library checks when it uses them
    _c(
        "sched-linear-with-power",
        "cli",
        _sum("--max_steps", "1", "--lr_scheduler_kwargs", '{"power": 2}'),
        "--lr_scheduler_kwargs",
    ),  # fmt: skip
    _c(
        "sched-polynomial-misspelt",
        "cli",
        _lm("--max_steps", "1", "--lr_scheduler_type", "polynomial", "--lr_scheduler_kwargs", '{"pow": 2.0}'),
        "--lr_scheduler_kwargs",
        "pow",
    ),  # fmt: skip
    _c(
        "sched-min-lr-missing",
        "cli",
        _tr("--max_steps", "1", "--lr_scheduler_type", "cosine_with_min_lr"),
        "--lr_scheduler",
        "min_lr",
    ),  # fmt: skip
    _c(
        "sched-restarts-text-cycles",
        "cli",
        _lm(
            "--max_steps",
            "1",
            "--lr_scheduler_type",
            "cosine_with_restarts",
            "--lr_scheduler_kwargs",
            '{"num_cycles": "two"}',
        ),
        "--lr_scheduler_kwargs",
    ),  # fmt: skip
    _c(
        "sched-kwargs-a-list", "cli", _lm("--max_steps", "1", "--lr_scheduler_kwargs", "[1, 2]"), "lr_scheduler_kwargs"
    ),  # fmt: skip
    _c(
        "cls-sched-cosine-misspelt",
        "cli",
        _cls("--lr_scheduler_type", "cosine", "--lr_scheduler_kwargs", '{"num_cycle": 0.25}'),
        "--lr_scheduler_kwargs",
        "num_cycle",
    ),  # fmt: skip
    _c(
        "optim-args-not-key-value",
        "cli",
        _lm("--max_steps", "1", "--optim", "adafactor", "--optim_args", "scale_parameter"),
        "--optim_args",
    ),  # fmt: skip
    _c(
        "optim-args-unknown-keyword",
        "cli",
        _lm("--max_steps", "1", "--optim", "adafactor", "--optim_args", "beta_two=0.5"),
        "--optim_args",
        "beta_two",
    ),  # fmt: skip
    _c(
        "config-heads-do-not-divide",
        "cli",
        _lm("--max_steps", "1", "--config_overrides", "n_embd=64,n_layer=2,n_head=5,n_positions=256"),
        "--config_overrides",
    ),  # fmt: skip
    _c(
        "config-unknown-activation",
        "cli",
        _lm(
            "--max_steps",
            "1",
            "--config_overrides",
            "n_embd=64,n_layer=2,n_head=4,n_positions=256,activation_function=swishy",
        ),
        "--config_overrides",
    ),  # fmt: skip
    _c(
        "sum-config-heads-do-not-divide",
        "cli",
        _sum(
            "--max_steps",
            "1",
            "--config_overrides",
            "d_model=60,encoder_layers=1,decoder_layers=1,encoder_attention_heads=8,decoder_attention_heads=8,"
            "encoder_ffn_dim=64,decoder_ffn_dim=64,max_position_embeddings=256",
        ),
        "--config_overrides",
    ),  # fmt: skip
    _c(
        "cls-config-heads-do-not-divide",
        "cli",
        _cls(
            "--config_overrides",
            "hidden_size=30,num_hidden_layers=1,num_attention_heads=4,intermediate_size=64,max_position_embeddings=256",
        ),
        "--config_overrides",
    ),  # fmt: skip
    _c(
        "train-batch-astronomical",
        "cli",
        _lm("--max_steps", "1", "--per_device_train_batch_size", str(10**12)),
        "per_device_train_batch_size",
    ),  # fmt: skip
    _c(
        "cls-eval-batch-astronomical",
        "cli",
        _cls("--per_device_eval_batch_size", str(2**62)),
        "per_device_eval_batch_size",
    ),  # fmt: skip
    _c(
        "grad-accum-astronomical",
        "cli",
        _sum("--max_steps", "1", "--gradient_accumulation_steps", str(10**15)),
        "gradient_accumulation_steps",
    ),  # fmt: skip
    # ---------------------------------------------------------------- the output folder's state on disk
    _c("out-dangling-symlink", "output", _out_link(lambda tmp: tmp / "gone" / "target"), "output_dir", "link"),
    _c("out-symlink-to-file", "output", _out_link(_a_file), "output_dir", "not a directory"),
    _c("out-symlink-loop", "output", _out_link(_loop), "output_dir", "link"),
    _c(
        "cls-out-dangling-symlink",
        "output",
        _out_link(lambda tmp: tmp / "nowhere", "classification"),
        "output_dir",
        "link",
    ),  # fmt: skip
    _c("out-deep-under-file", "output", _out_deep_under_file, "output_dir", "not a directory"),
    _c("out-name-too-long", "output", _out_name_too_long, "output_dir", "too long"),
    _c("out-under-sys", "output", _out_sys, "output_dir", "not writable"),
    # ---------------------------------------------------------------- checkpoints missing a piece
    _c("ckpt-no-weights", "output", _resume_missing("model.safetensors"), "checkpoint-200", "weights"),
    _c(
        "ckpt-no-trainer-state-explicit",
        "output",
        _resume_missing("trainer_state.json", explicit=True),
        "checkpoint-200",
        "trainer_state.json",
    ),  # fmt: skip
    _c("ckpt-weights-a-folder", "output", _resume_weights_folder, "checkpoint-200", "model.safetensors"),
    _c("ckpt-path-is-a-file", "output", _resume_path_is_file, "resume_from_checkpoint", "model.safetensors"),
    _c("ckpt-trainer-state-a-list", "output", _resume_state_list, "checkpoint-200", "trainer_state.json"),
    _c("cls-ckpt-no-optimizer", "output", _cls_resume_no_optimizer, "checkpoint-2", "optimizer.pt"),
    # ---------------------------------------------------------------- the library at the point of use
    _c("api-gamma-changed-after-build", "api", _api_trainer(_set("gamma", 1.5)), "TVDArguments.gamma"),
    _c("api-loss-type-changed", "api", _api_trainer(_set("loss_type", "mse")), "TVDArguments.loss_type"),
    _c(
        "api-min-weight-nan-on-loss", "api", _loss_after_change("min_weight", float("nan")), "TVDArguments.min_weight"
    ),  # fmt: skip
    _c(
        "api-schedule-changed-on-loss",
        "api",
        _loss_after_change("gamma_schedule", "exp"),
        "TVDArguments.gamma_schedule",
    ),  # fmt: skip
    _c(
        "api-label-smoothing-one-on-loss",
        "api",
        _loss_after_change("label_smoothing", 1.0),
        "TVDArguments.label_smoothing",
    ),  # fmt: skip
    _c("api-replace-invalid", "api", _replace_invalid, "TVDArguments.min_weight"),
    _c("api-no-trainable-parameter", "api", _api_trainer(lambda tvd, trainer: None, frozen=True), "trainable"),
    _c("api-compiled-model", "api", _api_trainer(lambda tvd, trainer: None, compiled=True), "compile"),
    # ---------------------------------------------------------------- data files
    _c("data-duplicate-key", "data", _summ_lines(_dup_key_lines()), "train_file", "line 7", "'summary'"),
    _c("tr-duplicate-nested-key", "data", _tr_nested_dup, "train_file", "line 10", "'de'"),
    _c("data-json-array-duplicate-key", "data", _json_array_dup, "train_file", "'document'"),
    _c("cls-duplicate-label-key", "data", _cls_lines(_cls_dup_label), "train_file", "line 6", "'label'"),
    _c("data-nan-literal", "data", _summ_lines(_nan_literal_lines()), "train_file", "line 5"),
    _c("data-symlink-to-dev-null", "data", _data_link("/dev/null"), "train_file", "not a regular file"),
    _c(
        "cls-data-symlink-to-dev-null",
        "data",
        _data_link("/dev/null", "classification"),
        "train_file",
        "not a regular file",
    ),  # fmt: skip
    _c("data-dangling-symlink", "data", _data_link("/nonexistent/train.jsonl"), "train_file", "link"),
    _c(
        "lm-nul-bytes-as-text",
        "data",
        _lm_text(b"".join(b"\x00" * 40 + b" the council met\n" for _ in range(50))),
        "train_file",
        "binary",
    ),  # fmt: skip
    _c("lm-png-as-text", "data", _lm_text(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8), "train_file", "line 1"),
    _c("data-nul-bytes-jsonl", "data", _summ_lines(list(_nul_lines())), "train_file", "line 1"),
    # valid inputs: must be read and trained
    _c("data-field-first-seen-deep", "data", _summ_lines(_late_field_lines(), "--max_train_samples", "16")),
    _c("cls-field-first-seen-deep", "data", _cls_lines(_cls_late_field, "--max_train_samples", "16")),
    _c("data-utf8-bom", "data", _summ_lines(_bom_lines())),
]

# Valid input (or, for the compiled model, input the library must use correctly): trained is the good verdict.
VALID = {"data-field-first-seen-deep", "cls-field-first-seen-deep", "data-utf8-bom", "api-compiled-model"}
GOOD, LATE, SILENT, LOST = "good", "late", "silent", "data loss"


def verdict(case: Case, tmp: Path) -> tuple[str, str]:
    """``(good | late | silent | data loss, message)`` for ``case`` run in ``tmp``."""
    snapshot = {p: p.read_bytes() for p in tmp.rglob("*") if p.is_file() and not p.is_symlink()}
    try:
        result = judge(case, tmp, train=True)
        message, outcome = result.message, result.verdict
    except OSError:  # the judge's own look at output_dir (pathlib raises for a name too long): prepare() alone
        message, outcome = _prepare_only(case, tmp)
    except Exception as err:  # noqa: BLE001
        message, outcome = f"{type(err).__name__}: {err}", REFUSED_LATE
    lost = [p for p, data in snapshot.items() if not p.exists() or p.read_bytes() != data]
    if lost:
        return LOST, f"{len(lost)} file(s) of the user's changed: {lost[:3]}"
    if case.id in VALID:
        return (GOOD if outcome == ACCEPTED else LATE), message
    return {REFUSED_WELL: GOOD, REFUSED_LATE: LATE, ACCEPTED: SILENT}[outcome], message


def _prepare_only(case: Case, tmp: Path) -> tuple[str, str]:
    """Judge a script case by ``prepare`` alone (a refusal there names the problem, or it is late)."""
    from hf_tvd_loss.tasks import get_task
    from hf_tvd_loss.tasks.run import prepare

    task, argv = case.build(tmp)
    try:
        prepare(get_task(task), argv)
    except ValueError as err:
        good = all(n.lower() in str(err).lower() for n in case.names)
        return str(err), REFUSED_WELL if good else REFUSED_LATE
    except Exception as err:  # noqa: BLE001
        return f"{type(err).__name__}: {err}", REFUSED_LATE
    return "prepare accepted it (the run fails when it creates the folder)", REFUSED_LATE


def main(argv: list[str] | None = None) -> int:
    import logging

    logging.disable(logging.WARNING)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    wanted = argv if argv is not None else sys.argv[1:]
    totals = {GOOD: 0, LATE: 0, SILENT: 0, LOST: 0}
    for case in [c for c in ROUND3 if not wanted or any(w in c.id for w in wanted)]:
        with tempfile.TemporaryDirectory(prefix="hostile3-") as tmp:
            outcome, message = verdict(case, Path(tmp))
        totals[outcome] += 1
        print(f"{case.id:36s} {outcome:9s} {' '.join(message.split())[:150]}", flush=True)
    print(f"\n{sum(totals.values())} inputs: " + ", ".join(f"{k} {v}" for k, v in totals.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
