"""What a script run does with an earlier run's folder, with checkpoints to resume from, with rows it has to drop,
and with a non-finite step: the correct-result side of the hostile-input table (``tests/test_hostile.py``)."""

from __future__ import annotations

import json
import logging
import os

import pytest
from hostile_cases import _checkpoint

from hf_tvd_loss.tasks import get_task, run_task
from hf_tvd_loss.tasks.run import build, prepare

QUICK_LM = ["--report_to", "none", "--synthetic_train_examples", "24", "--synthetic_eval_examples", "4",
            "--disable_tqdm", "true", "--block_size", "32", "--do_eval", "false", "--do_predict", "false"]  # fmt: skip


def _lm_args(out, *extra):
    return ["--output_dir", str(out), *QUICK_LM, *extra]


def test_overwrite_output_dir_replaces_the_earlier_run_and_nothing_else(tmp_path):
    out = tmp_path / "out"
    _checkpoint(out, 300)
    (out / "model.safetensors").write_bytes(b"an earlier model")
    (out / "generated_predictions.jsonl").write_text('{"prediction": "old"}\n')
    (out / "run_info.json").write_text('{"task": "old"}')
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="already holds 5 entries"):
        prepare(get_task("language_modeling"), _lm_args(out, "--max_steps", "1"))
    run_task(get_task("language_modeling"), _lm_args(out, "--max_steps", "1", "--overwrite_output_dir", "true"))
    names = set(os.listdir(out))
    assert "notes.txt" in names and (out / "notes.txt").read_text() == "mine"  # not a file the scripts write
    assert "checkpoint-300" not in names and "generated_predictions.jsonl" not in names  # the earlier run's
    assert json.loads((out / "run_info.json").read_text())["task"] == "language_modeling"
    assert (out / "model.safetensors").stat().st_size > 1000


@pytest.mark.parametrize("value", ["latest", "true", "LAST"])
def test_resume_latest_finds_the_last_complete_checkpoint(tmp_path, value):
    out = tmp_path / "out"
    _checkpoint(out, 100)
    _checkpoint(out, 300)
    _checkpoint(out, 400, complete=False)  # killed while writing: skipped
    prepared = prepare(get_task("language_modeling"), _lm_args(out, "--resume_from_checkpoint", value))
    assert prepared.training_args.resume_from_checkpoint == str(out / "checkpoint-300")


def test_resume_true_in_yaml_means_latest(tmp_path):
    out = tmp_path / "out"
    _checkpoint(out, 200)
    config = tmp_path / "c.yaml"
    config.write_text("resume_from_checkpoint: true\n")
    prepared = prepare(get_task("language_modeling"), _lm_args(out, "--config", str(config)))
    assert prepared.training_args.resume_from_checkpoint == str(out / "checkpoint-200")


def test_script_run_resumes_from_its_own_checkpoint_and_rotates_only_its_own(tmp_path):
    out = tmp_path / "out"
    args = _lm_args(out, "--save_strategy", "steps", "--save_steps", "1", "--save_total_limit", "1")
    run_task(get_task("language_modeling"), [*args, "--max_steps", "2"])
    assert sorted(d for d in os.listdir(out) if d.startswith("checkpoint-")) == ["checkpoint-2"]
    _checkpoint(tmp_path / "other", 1)  # a checkpoint of another run, copied in by hand
    os.rename(tmp_path / "other" / "checkpoint-1", out / "checkpoint-1")
    run_task(get_task("language_modeling"), [*args, "--max_steps", "4", "--resume_from_checkpoint", "latest"])
    info = json.loads((out / "run_info.json").read_text())
    assert info["resumed_from"] == str(out / "checkpoint-2")
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    # rotation (limit 1) deleted this run's checkpoint-2 and -3, never the other run's checkpoint-1
    assert sorted(d for d in os.listdir(out) if d.startswith("checkpoint-")) == ["checkpoint-1", "checkpoint-4"]


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def test_a_few_dropped_rows_are_reported_and_training_works(tmp_path, caplog):
    rows = [{"translation": {"de": f"der hund {i} sieht das haus", "en": f"the dog {i} sees the house"}}
            for i in range(40)]  # fmt: skip
    rows[3] = {"translation": None}
    rows[17] = {"translation": {"de": "nur deutsch"}}
    rows[25]["translation"]["en"] = "   "
    train = _jsonl(tmp_path / "train.jsonl", rows)
    argv = ["--output_dir", str(tmp_path / "out"), "--report_to", "none", "--train_file", train, "--do_eval",
            "false", "--do_predict", "false", "--max_steps", "1", "--tokenizer_vocab_size", "200"]  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="hf_tvd_loss.tasks"):
        prepared = prepare(get_task("translation"), argv)
    report = prepared.dropped_rows["train"]
    assert report["dropped"] == 3 and report["rows"] == 40
    assert "dropping 3 of 40 rows (7.5%)" in caplog.text and "rows 4, 18" in caplog.text and "row 26" in caplog.text
    built = build(prepared)
    assert len(built.datasets["train"]) == 37
    # the same data is refused when the threshold is lower
    with pytest.raises(ValueError, match=r"3 of 40 rows \(7.5%\) would be dropped, more than max_dropped_fraction"):
        prepare(get_task("translation"), [*argv[2:], "--output_dir", str(tmp_path / "o2"), "--max_dropped_fraction",
                                          "0.05"])  # fmt: skip


def test_nonfinite_target_logit_stops_a_script_run_before_the_update(tmp_path, monkeypatch, capsys):
    """A -inf logit at a target token (γ-CE gives +inf) in step 2 of a script run: one error line, status 1, the
    weights of step 1 untouched and no final model written."""
    import torch

    from hf_tvd_loss.tasks import run as run_module

    original = run_module.build_model_from_config
    seen = {}

    def poisoned_model(*args, **kwargs):
        model = original(*args, **kwargs)
        calls = {"n": 0}

        def hook(module, args, kwargs, output):
            if module.training:
                calls["n"] += 1
                if calls["n"] == 2:
                    target = kwargs["input_ids"][0, 1]
                    output.logits = output.logits.clone()
                    output.logits[0, 0, target] = float("-inf")
                    seen["poisoned"] = True
                elif calls["n"] == 1:
                    seen["model"] = module
            return output

        model.register_forward_hook(hook, with_kwargs=True)
        return model

    monkeypatch.setattr(run_module, "build_model_from_config", poisoned_model)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        run_task(get_task("language_modeling"), _lm_args(out, "--max_steps", "3", "--per_device_train_batch_size",
                                                           "4", "--logging_steps", "1"))  # fmt: skip
    assert exit_info.value.code == 1 and seen.get("poisoned")
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: non-finite loss or gradients at optimisation step 2")
    assert "the weights are unchanged" in err[-1]
    assert not (out / "model.safetensors").exists() and not (out / "run_info.json").exists()
    assert all(torch.isfinite(v).all() for v in seen["model"].state_dict().values())
