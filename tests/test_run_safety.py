"""What a script run does with an earlier run's folder, with checkpoints to resume from, with rows it has to drop,
and with a non-finite step: the correct-result side of the hostile-input table (``tests/test_hostile.py``)."""

from __future__ import annotations

import json
import logging
import os

import pytest
from hostile_cases import _checkpoint

from hf_tvd_loss.tasks import get_task, run_task
from hf_tvd_loss.tasks.outputs import LEDGER, OutputFolder, read_ledger
from hf_tvd_loss.tasks.run import build, prepare

QUICK_LM = ["--report_to", "none", "--synthetic_train_examples", "24", "--synthetic_eval_examples", "4",
            "--disable_tqdm", "true", "--block_size", "32", "--do_eval", "false", "--do_predict", "false"]  # fmt: skip


def _lm_args(out, *extra):
    return ["--output_dir", str(out), *QUICK_LM, *extra]


def _snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_overwrite_output_dir_removes_what_the_earlier_run_recorded_and_nothing_else(tmp_path):
    out = tmp_path / "out"
    run_task(get_task("language_modeling"), _lm_args(out, "--max_steps", "2", "--save_strategy", "steps",
                                                     "--save_steps", "1", "--seed", "1"))  # fmt: skip
    assert {"checkpoint-1", "checkpoint-2", "model.safetensors", LEDGER} <= set(os.listdir(out))
    recorded = set(read_ledger(str(out))["files"])
    assert "checkpoint-2/model.safetensors" in recorded and "tokenizer/tokenizer.json" in recorded
    assert read_ledger(str(out))["open"] == []  # a finished run leaves nothing open
    (out / "notes.txt").write_text("mine")  # written after the run: not the run's
    with pytest.raises(ValueError, match="already holds"):
        prepare(get_task("language_modeling"), _lm_args(out, "--max_steps", "1"))
    run_task(get_task("language_modeling"), _lm_args(out, "--max_steps", "1", "--overwrite_output_dir", "true"))
    names = set(os.listdir(out))
    assert (out / "notes.txt").read_text() == "mine"
    assert "checkpoint-1" not in names and "checkpoint-2" not in names  # the earlier run's
    assert json.loads((out / "run_info.json").read_text())["argv"][-1] == "true"
    assert "notes.txt" not in read_ledger(str(out))["files"]


def test_overwrite_output_dir_refuses_a_folder_of_the_users_own_files(tmp_path):
    """Issue 21: --overwrite_output_dir on a folder no run of these scripts wrote deleted vocab.json, runs/ and
    tokenizer/NOTES.txt and replaced README.md and config.json. Now: refused before any work, every file kept."""
    out = tmp_path / "out"
    for name in ("README.md", "config.json", "vocab.json", "notes.txt", "runs/sweep-2024/log.txt",
                 "tokenizer/NOTES.txt"):  # fmt: skip
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(f"the user's {name}")
    before = _snapshot(out)
    with pytest.raises(SystemExit) as exit_info:
        run_task(get_task("language_modeling"), _lm_args(out, "--max_steps", "1", "--overwrite_output_dir", "true"))
    assert exit_info.value.code == 2
    assert _snapshot(out) == before and sorted(os.listdir(out)) == sorted(
        ["README.md", "config.json", "vocab.json", "notes.txt", "runs", "tokenizer"]
    )
    with pytest.raises(ValueError) as refused:
        prepare(get_task("language_modeling"), _lm_args(out, "--overwrite_output_dir", "true"))
    for name in ("README.md", "config.json", "vocab.json", "runs/sweep-2024/log.txt", "tokenizer/NOTES.txt"):
        assert name in str(refused.value), name
    assert "notes.txt," not in str(refused.value)  # not where a run writes: it would stay


def test_a_file_added_to_a_recorded_run_folder_is_not_the_runs(tmp_path):
    out = tmp_path / "out"
    run_task(get_task("language_modeling"), _lm_args(out, "--max_steps", "1"))
    (out / "tokenizer" / "NOTES.txt").write_text("what I changed in this tokenizer")
    with pytest.raises(ValueError, match="tokenizer/NOTES.txt"):
        prepare(get_task("language_modeling"), _lm_args(out, "--overwrite_output_dir", "true"))


def test_a_run_killed_while_saving_still_owns_what_it_half_wrote(tmp_path):
    out = tmp_path / "out"
    folder = OutputFolder.claim(str(out))
    folder.expect(["checkpoint-5"])
    (out / "checkpoint-5").mkdir()
    (out / "checkpoint-5" / "model.safetensors").write_bytes(b"half")  # then killed: no update, no finish
    folder.release()
    assert "checkpoint-5" in read_ledger(str(out))["open"]
    OutputFolder.claim(str(out), overwrite=True).release()
    assert not (out / "checkpoint-5").exists()


def test_one_run_at_a_time_per_output_folder(tmp_path):
    """Another process holding the folder is named; killed (SIGKILL), it leaves the folder free (the OS drops the
    lock). The same process claiming again (a notebook cell run twice) takes the folder over."""
    import signal
    import subprocess
    import sys

    out = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from hf_tvd_loss.tasks.outputs import OutputFolder; "
         "f = OutputFolder.claim(sys.argv[1]); print('held', flush=True); sys.stdin.read()", str(out)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ValueError, match=f"in use by another run \\(pid {holder.pid} on "):
            OutputFolder.claim(str(out), overwrite=True)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    first = OutputFolder.claim(str(out), overwrite=True)
    second = OutputFolder.claim(str(out), overwrite=True)  # the same process: handed over
    first.release()
    second.discard()
    # as the killed holder left it: a claim that is given up (discard) puts the folder back as it was, ledger and lock
    assert sorted(os.listdir(out)) == [".hf_tvd_loss.lock", "run_outputs.json"]


def test_two_runs_started_at_once_into_one_new_folder(tmp_path):
    """Issue 21: both exited 0 with their checkpoints mixed. Now exactly one trains; the other is refused (exit 2)
    naming the folder, whether it comes while the first holds it or after the first finished."""
    import subprocess
    import sys

    out = tmp_path / "out"
    code = ("import sys; from hf_tvd_loss.tasks import get_task, run_task; "
            "run_task(get_task('language_modeling'), sys.argv[1:])")  # fmt: skip
    runs = [
        subprocess.Popen([sys.executable, "-c", code, *_lm_args(out, "--max_steps", "3", "--save_strategy", "steps",
                                                                "--save_steps", "1", "--seed", str(seed))],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for seed in (1, 2)
    ]  # fmt: skip
    results = [(run.wait(timeout=600), run.stderr.read()) for run in runs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    loser = next(err for code, err in results if code == 2)
    assert "in use by another run" in loser or "already holds" in loser
    winner_seed = 1 + [code for code, _ in results].index(0)
    info = json.loads((out / "run_info.json").read_text())
    assert info["argv"][-1] == str(winner_seed)
    markers = [json.loads((out / f"checkpoint-{s}" / "trainer_state.json").read_text()) for s in (1, 2, 3)]
    assert all(m["global_step"] == s for m, s in zip(markers, (1, 2, 3), strict=True))


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


def test_csv_cells_are_text_none_na_and_null_are_translations(tmp_path):
    """Issue 21: 'None', 'NA', 'null' (translations of Keine, Natrium (Na), Null) were read as missing and 37 of 40
    rows dropped with a warning blaming null data. CSV cells are text; only an empty cell is empty."""
    import csv

    words = [("Keine", "None"), ("Natrium (Na)", "NA"), ("Null", "null"), ("nicht zutreffend", "n/a"),
             ("keine Zahl", "NaN"), ("eins", "1")]  # fmt: skip
    path = tmp_path / "train.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["de", "en"])
        writer.writerows(words * 7)
    argv = ["--output_dir", str(tmp_path / "out"), "--report_to", "none", "--disable_tqdm", "true",
            "--train_file", str(path), "--do_eval", "false", "--do_predict", "false", "--max_steps", "1"]  # fmt: skip
    prepared = prepare(get_task("translation"), argv)
    assert prepared.raw["train"]["en"][:6] == ["None", "NA", "null", "n/a", "NaN", "1"]
    assert prepared.dropped_rows == {} or not any(prepared.dropped_rows.values())
    assert len(build(prepared).datasets["train"]) == 42


def test_a_csv_header_naming_a_column_twice_is_refused(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("de,en,en\nder hund,the dog,a dog\n" * 1)
    argv = ["--output_dir", str(tmp_path / "out"), "--train_file", str(path), "--report_to", "none"]
    with pytest.raises(ValueError, match=r"CSV header names the column\(s\) \['en'\] more than once"):
        prepare(get_task("translation"), argv)
    assert not (tmp_path / "out").exists()


def test_drop_last_with_a_batch_larger_than_the_data_is_refused(tmp_path):
    """Issue 21: 0 steps, and an untrained model saved as if trained."""
    out = tmp_path / "out"
    prepared = prepare(get_task("language_modeling"), _lm_args(out, "--dataloader_drop_last", "true",
                                                               "--per_device_train_batch_size", "512"))  # fmt: skip
    with pytest.raises(ValueError, match="dataloader_drop_last with .* training examples and a batch of 512"):
        build(prepared)
    assert not out.exists()


def test_push_to_hub_offline_is_refused_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match="--push_to_hub needs the Hugging Face Hub, but HF_HUB_OFFLINE is set"):
        prepare(get_task("language_modeling"), _lm_args(tmp_path / "out", "--push_to_hub", "true"))
    assert not (tmp_path / "out").exists()


def test_a_resumed_run_keeps_its_checkpoints_tokenizer_even_with_other_data(tmp_path):
    """Issue 21: resuming with other training data retrained the tokenizer (60 of 64 token ids moved) under the
    checkpoint's weights. The resumed run uses the checkpoint's tokenizer; a checkpoint without one is refused."""
    out = tmp_path / "out"
    run_task(get_task("language_modeling"), _lm_args(out, "--max_steps", "2", "--save_strategy", "steps",
                                                     "--save_steps", "1"))  # fmt: skip
    saved = json.loads((out / "checkpoint-2" / "tokenizer.json").read_text())["model"]["vocab"]
    other_data = (
        get_task("language_modeling")
        .build_parser()
        .merge_args(
            _lm_args(out),
            ["--max_steps", "3", "--resume_from_checkpoint", "latest", "--synthetic_train_examples", "40"],
        )
    )
    prepared = prepare(get_task("language_modeling"), other_data)
    assert prepared.tokenizer is not None and prepared.tokenizer.get_vocab() == saved
    no_tokenizer = tmp_path / "bare"
    _checkpoint(no_tokenizer, 5, tokenizer=False)
    with pytest.raises(ValueError, match="holds no loadable tokenizer.*--tokenizer_name"):
        prepare(get_task("language_modeling"), _lm_args(no_tokenizer, "--resume_from_checkpoint", "latest"))


def test_report_to_tensorboard_writes_event_files(tmp_path):
    """Issue 22: TensorBoard (the HF default logger) installs with the scripts' extra and its event files are
    written under output_dir/runs/, recorded in the run's ledger."""
    out = tmp_path / "out"
    argv = (
        get_task("language_modeling")
        .build_parser()
        .merge_args(_lm_args(out, "--max_steps", "2", "--logging_steps", "1"), ["--report_to", "tensorboard"])
    )
    run_task(get_task("language_modeling"), argv)
    events = list((out / "runs").rglob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    assert any(f.startswith("runs/") for f in read_ledger(str(out))["files"])


def test_metric_for_best_model_names_a_reported_metric(tmp_path):
    """Known names pass, with or without eval_; generated metrics only where the evaluation generates."""
    for task, name in (("summarization", "eval_rouge1"), ("summarization", "rougeL"), ("translation", "chrf"),
                       ("language_modeling", "perplexity"), ("language_modeling", "eval_token_accuracy")):  # fmt: skip
        prepared = prepare(get_task(task), ["--output_dir", str(tmp_path / task), "--report_to", "none",
                                            "--metric_for_best_model", name, "--synthetic_train_examples", "24"])  # fmt: skip
        assert prepared.training_args.metric_for_best_model == name
    with pytest.raises(ValueError, match="'bleu' is not a metric this translation evaluation reports"):
        prepare(get_task("translation"), ["--output_dir", str(tmp_path / "x"), "--metric_for_best_model", "bleu",
                                          "--predict_with_generate", "false"])  # fmt: skip


def test_a_library_run_sigkilled_after_its_last_step_is_finished_by_resuming(tmp_path):
    """SIGKILL once ``train()`` returned (its last checkpoint complete), before the final files: ``train(
    resume_from_checkpoint=True)`` in a new process is not refused; it trains no step, restores the last checkpoint's
    weights and reports no train_loss (transformers would say 0 for no step)."""
    import subprocess
    import sys

    from safetensors.torch import load_file

    worker = os.path.join(os.path.dirname(os.path.abspath(__file__)), "resume_worker.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    out = str(tmp_path / "run")
    killed = subprocess.run([sys.executable, worker, out, "--max_steps", "4", "--kill_after_train"], env=env,
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert not os.path.exists(os.path.join(out, "final_state.pt"))
    finished = subprocess.run([sys.executable, worker, out, "--max_steps", "4", "--resume"], env=env,
                              capture_output=True, text=True, timeout=300)  # fmt: skip
    assert finished.returncode == 0, finished.stderr[-2000:]
    import torch

    final = torch.load(os.path.join(out, "final_state.pt"))
    saved = load_file(os.path.join(out, "checkpoint-4", "model.safetensors"))
    assert all(torch.equal(final[k], saved[k]) for k in saved)
    metrics = json.loads((tmp_path / "run" / "train_metrics.json").read_text())
    assert metrics["global_step"] == 4 and "train_loss" not in metrics
