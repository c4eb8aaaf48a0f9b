"""The task layer without training: synthetic corpora, metrics, tokenizer training, real-corpus converters, and
bad input refused by ``prepare`` with one error naming the problem, before anything is written."""

from __future__ import annotations

import bz2
import json
import math
import os
import sqlite3

import corpora
import pytest

from hf_tvd_loss.tasks import get_task, run_task
from hf_tvd_loss.tasks.metrics import bleu_scores, rouge_scores
from hf_tvd_loss.tasks.modeling import train_tokenizer
from hf_tvd_loss.tasks.run import prepare
from hf_tvd_loss.tasks.synthetic import language_modeling_corpus, summarization_corpus, translation_corpus


# ----------------------------------------------------------------------------------------------- synthetic data
def test_synthetic_corpora_are_deterministic_and_shaped():
    assert summarization_corpus(5, seed=3) == summarization_corpus(5, seed=3)
    assert summarization_corpus(5, seed=3) != summarization_corpus(5, seed=4)
    row = summarization_corpus(1)[0]
    assert set(row) == {"document", "summary"} and len(row["summary"].split()) < len(row["document"].split())
    pair = translation_corpus(1)[0]["translation"]
    assert set(pair) == {"de", "en"} and pair["de"] != pair["en"]
    assert set(language_modeling_corpus(1)[0]) == {"text"}


# ----------------------------------------------------------------------------------------------- metrics
def test_text_metrics():
    assert rouge_scores(["the council approves bridge"], ["the council approves bridge"])["rouge2"] == pytest.approx(
        1.0
    )  # the Hub rouge module's scale; the scripts report ×100
    assert rouge_scores(["a b"], ["c d"])["rouge1"] == 0
    scores = bleu_scores(["The dog sees the old house today."] * 2, ["The dog sees the old house today."] * 2)
    assert scores["bleu"] == pytest.approx(100) and scores["chrf"] == pytest.approx(100)
    with pytest.raises(ValueError, match="2 predictions for 1 references"):
        bleu_scores(["a", "b"], ["a"])


def test_trained_tokenizer_round_trips_and_ends_with_eos():
    texts = [row["en"] for row in (r["translation"] for r in translation_corpus(200))]
    tokenizer = train_tokenizer(iter(texts), vocab_size=300, model_max_length=64)
    ids = tokenizer(texts[0])["input_ids"]
    assert ids[-1] == tokenizer.eos_token_id
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    assert tokenizer.decode(ids, skip_special_tokens=True) == texts[0]
    assert len(tokenizer) <= 300


# ----------------------------------------------------------------------------------------------- real corpora
def _fake_bible(path):
    connection = sqlite3.connect(path)
    connection.execute(
        "CREATE TABLE bible (bbName TEXT, bNumber INTEGER, cNumber INTEGER, vNumber INTEGER, vText TEXT)"
    )
    connection.execute("CREATE TABLE bibleRef (bbName TEXT, bNumber INTEGER, bName TEXT, bsName TEXT)")
    verses = [("e", 1, 1, 1, "Eins."), ("e", 1, 1, 2, "Zwei."), ("4", 1, 1, 1, "One."), ("4", 1, 1, 2, "Two."),
              ("4", 22, 1, 1, "Song verse."), ("e", 22, 1, 1, "Liedvers.")]  # fmt: skip
    connection.executemany("INSERT INTO bible VALUES (?, ?, ?, ?, ?)", verses)
    refs = [("4", 1, "Genesis", "Gen"), ("4", 22, "SongOfSolomon", "Song")]
    connection.executemany("INSERT INTO bibleRef VALUES (?, ?, ?, ?)", refs)
    connection.commit()
    connection.close()


def test_corpus_converters(tmp_path):
    db = str(tmp_path / "bible.db")
    _fake_bible(db)
    pairs = corpora.translation_rows(db, "e", "4")
    assert pairs[0] == {"translation": {"de": "Eins.", "en": "One."}} and len(pairs) == 3
    with pytest.raises(ValueError, match="'x' is not an edition"):
        corpora.translation_rows(db, "x", "4")

    summaries = tmp_path / "summaries"
    summaries.mkdir()
    (summaries / "genesis.json").write_text(json.dumps({"Genesis": {"1": "Counting."}}))
    (summaries / "songs.json").write_text(json.dumps({"Song of Songs": {"1": "A song."}}))
    rows = corpora.summarization_rows(db, str(summaries), "4")
    assert {r["id"]: (r["document"], r["summary"]) for r in rows} == {
        "Genesis 1": ("One. Two.", "Counting."),
        "Song of Songs 1": ("Song verse.", "A song."),
    }

    article = (
        "{{Infobox|x={{y}}}}'''Alpha''' is a [[Greek alphabet|letter]] used in many words of science.<ref>r</ref>"
    )
    xml = (f"<mediawiki><page><title>Alpha</title><text>{article}\n== History ==\nIt came from an older letter "
           "called aleph long ago.</text></page><page><title>R</title><redirect title='Alpha'/><text>#REDIRECT "
           "[[Alpha]]</text></page></mediawiki>")  # fmt: skip
    dump = tmp_path / "wiki.xml.bz2"
    dump.write_bytes(bz2.compress(xml.encode()))
    articles = corpora.language_modeling_rows(str(dump), min_words=5)
    assert [a["title"] for a in articles] == ["Alpha"]
    assert articles[0]["text"].startswith("Alpha is a letter used in many words of science.")
    assert "{{" not in articles[0]["text"] and "<ref" not in articles[0]["text"]

    counts = corpora.split_and_write([{"text": str(i)} for i in range(10)], str(tmp_path / "out"), eval_size=2)
    assert counts == {"validation": 2, "test": 2, "train": 6}
    lines = (tmp_path / "out" / "train.jsonl").read_text().splitlines()
    assert len(lines) == 6 and not list((tmp_path / "out").glob("*.tmp"))
    with pytest.raises(ValueError, match="too few"):
        corpora.split_and_write([{"text": "a"}], str(tmp_path / "out2"), eval_size=1)


# ----------------------------------------------------------------------------------------------- bad input
def _args(tmp_path, *extra):
    """Quick options; the synthetic corpus's sizes only when no data file is given (the scripts refuse them beside
    one)."""
    files = any(
        str(a).startswith(("--train_file", "--validation_file", "--test_file", "--dataset_name")) for a in extra
    )
    synthetic = [] if files else ["--synthetic_train_examples", "16", "--synthetic_eval_examples", "4"]
    return ["--output_dir", str(tmp_path / "out"), "--report_to", "none", *synthetic, *extra]


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def _refused(task_name, argv, match, tmp_path):
    with pytest.raises(ValueError, match=match):
        prepare(get_task(task_name), argv)
    assert not (tmp_path / "out").exists(), "nothing may be written before the run is known to be valid"


def test_missing_column_is_named(tmp_path):
    train = _jsonl(tmp_path / "train.jsonl", [{"article": "a b c", "summary": "a"}] * 4)
    _refused("summarization", _args(tmp_path, "--train_file", train), r"no column 'document' \(set by --text_column\)",
             tmp_path)  # fmt: skip


def test_missing_metric_package_is_refused_naming_the_extra(tmp_path, monkeypatch):
    """ROUGE / BLEU come from the `scripts` extra: without it, a run that evaluates is refused before it trains."""
    from hf_tvd_loss.tasks.summarization import SummarizationTask

    monkeypatch.setattr(SummarizationTask, "metric_package", ("no_such_rouge_package", "ROUGE"))
    _refused("summarization", _args(tmp_path), r'ROUGE needs .*pip install "hf_tvd_loss\[scripts\]"', tmp_path)
    prepare(get_task("summarization"), _args(tmp_path, "--do_eval", "false", "--do_predict", "false"))  # train only


def test_column_of_the_wrong_type_is_named(tmp_path):
    train = _jsonl(tmp_path / "train.jsonl", [{"document": "a b c", "summary": 7}] * 4)
    _refused("summarization", _args(tmp_path, "--train_file", train),
             r"column 'summary' \(set by --summary_column\) must hold text, but holds int64", tmp_path)  # fmt: skip


def test_loading_never_runs_code_by_default():
    from hf_tvd_loss.tasks.arguments import ModelArguments

    args = ModelArguments()
    assert args.trust_remote_code is False and args.allow_pickle_weights is False


def test_translation_language_missing_from_dicts(tmp_path):
    train = _jsonl(tmp_path / "train.jsonl", [{"translation": {"de": "a", "fr": "b"}}] * 4)
    _refused("translation", _args(tmp_path, "--train_file", train), r"no 'en' entry \(--target_lang\)", tmp_path)


def test_empty_split_is_refused(tmp_path):
    empty = tmp_path / "val.jsonl"
    empty.write_text("")
    train = _jsonl(tmp_path / "train.jsonl", [{"text": "some words here"}] * 4)
    _refused("language_modeling", _args(tmp_path, "--train_file", train, "--validation_file", str(empty)),
             "validation_file .* is empty", tmp_path)  # fmt: skip
    header_only = tmp_path / "val.csv"
    header_only.write_text("text\n")
    _refused("language_modeling", _args(tmp_path, "--train_file", train, "--validation_file", str(header_only)),
             "the validation split .* is empty", tmp_path)  # fmt: skip


def test_nonexistent_data_file(tmp_path):
    _refused("translation", _args(tmp_path, "--train_file", str(tmp_path / "nope.jsonl")),
             "train_file: file not found: .*nope.jsonl", tmp_path)  # fmt: skip
    _refused("translation", _args(tmp_path, "--train_file", str(tmp_path / "data.xlsx")),
             "unsupported extension '.xlsx'", tmp_path)  # fmt: skip


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--gamma", "1.5"], r"TVDArguments.gamma must be in \[0, 1\]"),
        (["--min_weight", "-0.1"], r"TVDArguments.min_weight must be in \[0, 1\]"),
        (["--label_smoothing", "1.0"], r"TVDArguments.label_smoothing must be in \[0, 1\)"),
        (["--label_smoothing_factor", "0.1"], "label_smoothing_factor must be 0"),
        (["--max_train_samples", "0"], "max_train_samples must be a positive integer"),
        (["--source_lang", "en"], "source_lang and target_lang are both 'en'"),
        (["--model_type", "not_a_model"], "model_type 'not_a_model' is not a known"),
        (["--config_overrides", "d_model=64,no_such_key=1"], "no_such_key"),
        (["--max_source_length", "4096"], "allows 256 positions but the data options need 4096"),
        (["--no_such_option", "1"], r"unknown option\(s\) --no_such_option; run with --help"),
        # a misspelt option: named with the closest one (new-user trial: HfArgumentParser listed it alone)
        (["--gama", "0.5"], r"unknown option\(s\) --gama \(did you mean --gamma\?\)"),
        (["--learnin_rate=1e-3"], r"--learnin_rate \(did you mean --learning_rate\?\)"),
    ],
)
def test_bad_options_are_refused(tmp_path, extra, match):
    _refused("translation", _args(tmp_path, *extra), match, tmp_path)


def test_unknown_config_key(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("gamma: 0.1\nbeam_size: 5\nmin_wieght: 0.2\n")
    _refused("summarization", _args(tmp_path, "--config", str(config)),
             r"unknown option.*'beam_size', 'min_wieght' \(did you mean --min_weight\?\)", tmp_path)  # fmt: skip


def test_model_without_the_needed_head(tmp_path):
    # pair tasks take an encoder-decoder or a decoder-only model (tests/test_decoder_only.py); an image model neither
    _refused("summarization", _args(tmp_path, "--model_type", "vit"),
             "'vit' model .* has neither a sequence-to-sequence language-modelling head .* nor a causal", tmp_path)  # fmt: skip
    _refused("language_modeling", _args(tmp_path, "--model_type", "t5"), "'t5' model .* has no causal", tmp_path)


def test_unwritable_output_dir(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(ValueError, match="cannot be created: .*a_file is a file"):
        prepare(get_task("language_modeling"), _args(tmp_path)[2:] + ["--output_dir", str(blocker / "out")])
    with pytest.raises(ValueError, match="exists and is not a directory"):
        prepare(get_task("language_modeling"), _args(tmp_path)[2:] + ["--output_dir", str(blocker)])


def test_several_processes_without_a_gpu_run_on_the_cpu(monkeypatch):
    """Issue 22.7: several processes and no GPU: the processes form one CPU group (ACCELERATE_USE_CPU), instead of
    each training alone; with a GPU nothing is changed; an explicit ACCELERATE_USE_CPU is left as given."""
    from hf_tvd_loss.tasks import run

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("ACCELERATE_USE_CPU", "placeholder")  # so that monkeypatch restores the variable's absence
    monkeypatch.delenv("ACCELERATE_USE_CPU")
    monkeypatch.setattr(run, "has_accelerator", lambda: True)
    run._cpu_processes_on_cpu()
    assert "ACCELERATE_USE_CPU" not in os.environ
    monkeypatch.setattr(run, "has_accelerator", lambda: False)
    run._cpu_processes_on_cpu()
    assert os.environ["ACCELERATE_USE_CPU"] == "true"
    monkeypatch.setenv("ACCELERATE_USE_CPU", "0")
    run._cpu_processes_on_cpu()
    assert os.environ["ACCELERATE_USE_CPU"] == "0"


def test_several_cpu_processes_without_use_cpu_are_refused_by_the_check(tmp_path, monkeypatch):
    """The check itself (ACCELERATE_USE_CPU=0 given on purpose, no GPU): refused, not each process alone."""
    from hf_tvd_loss.tasks import checks, run

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("ACCELERATE_USE_CPU", "0")
    monkeypatch.setattr(checks, "has_accelerator", lambda: False)
    # WORLD_SIZE alone (no MASTER_ADDR, ...) is refused as no launcher's; this test is about the check after it
    monkeypatch.setattr(run, "check_launcher_environment", lambda: None)
    _refused("language_modeling", _args(tmp_path), "pass --use_cpu true", tmp_path)


def test_too_little_text_for_one_block_removes_what_it_created(tmp_path, capsys):
    train = _jsonl(tmp_path / "train.jsonl", [{"text": "only a few words here"}] * 3)
    argv = _args(tmp_path, "--train_file", train, "--block_size", "200", "--do_eval", "false", "--do_predict", "false")
    with pytest.raises(SystemExit) as exit_info:
        run_task(get_task("language_modeling"), argv)
    assert exit_info.value.code == 2
    assert "fewer tokens than block_size=200" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_script_entry_prints_one_error_line_and_exits_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_task(get_task("summarization"), _args(tmp_path, "--gamma", "nan"))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "gamma" in err[-1] and math.isnan(float("nan"))
    assert not (tmp_path / "out").exists()


def test_over_long_sequences_are_truncated_as_configured(tmp_path):
    from hf_tvd_loss.tasks.run import build

    words = " ".join(f"w{i % 50}" for i in range(400))
    rows = [{"document": words, "summary": words[:300]} for _ in range(8)]
    train = _jsonl(tmp_path / "train.jsonl", rows)
    argv = _args(tmp_path, "--train_file", train, "--validation_file", train, "--max_source_length", "16",
                 "--max_target_length", "8", "--tokenizer_vocab_size", "300")  # fmt: skip
    built = build(prepare(get_task("summarization"), argv))
    for split in ("train", "validation"):
        data = built.datasets[split]
        assert max(len(ids) for ids in data["input_ids"]) == 16
        assert max(len(ids) for ids in data["labels"]) == 8


def test_pretrained_tokenizer_without_pad_token(tmp_path):
    """A tokenizer saved without a pad token pads with its eos token; one with neither is refused by name."""
    texts = [row["en"] for row in (r["translation"] for r in translation_corpus(100))]
    tokenizer = train_tokenizer(iter(texts), vocab_size=200, model_max_length=64)
    tokenizer.pad_token = None
    tokenizer.save_pretrained(tmp_path / "tok")
    train = _jsonl(tmp_path / "train.jsonl", [{"text": " ".join(texts[:20])}] * 4)
    argv = _args(tmp_path, "--train_file", train, "--tokenizer_name", str(tmp_path / "tok"))
    prepared = prepare(get_task("language_modeling"), argv)
    assert prepared.tokenizer.pad_token == prepared.tokenizer.eos_token is not None
    tokenizer.eos_token = None
    tokenizer.save_pretrained(tmp_path / "tok2")
    argv = _args(tmp_path, "--train_file", train, "--tokenizer_name", str(tmp_path / "tok2"))
    _refused("language_modeling", argv, "has neither a pad nor an eos token", tmp_path)


def test_a_command_line_max_steps_over_a_config_epochs_is_an_override(tmp_path):
    """Layer-aware (issue 21): --max_steps on the command line over a config file's num_train_epochs is a shorter
    run, not a conflict (the README's 'any option can be overridden')."""
    config = tmp_path / "c.yaml"
    config.write_text("num_train_epochs: 5\n")
    (_, _, _, training_args), _ = get_task("summarization").parse_args(
        ["--output_dir", str(tmp_path / "out"), "--config", str(config), "--max_steps", "3"]
    )
    assert training_args.max_steps == 3


def test_seq2seq_without_generation_evaluates_teacher_forced(tmp_path):
    """--predict_with_generate false on the encoder-decoder path (issue 20): the evaluation is teacher-forced (loss,
    NLL, calibration), no text metrics, no predictions file; it used to fail after training, decoding logits as ids."""
    metrics = run_task(get_task("summarization"), _args(tmp_path, "--max_steps", "2", "--predict_with_generate",
                                                       "false", "--do_predict", "true", "--disable_tqdm", "true"))  # fmt: skip
    assert {"eval_loss", "eval_nll", "eval_ece", "test_loss"} <= set(metrics)
    assert not any(key.endswith(("rouge1", "rougeL", "gen_len")) for key in metrics)
    assert not (tmp_path / "out" / "generated_predictions.jsonl").exists()


def test_model_sources_offline_accept_local_folders_and_cached_hub_ids_only(tmp_path, monkeypatch):
    """check_model_sources: with the Hub offline, a local folder and a Hub id in the local cache are accepted
    (transformers reads both); a missing folder or an uncached id is refused naming the option and the value; with
    the Hub online nothing is refused (the Hub may have the id)."""
    from huggingface_hub import constants

    from hf_tvd_loss.tasks.arguments import ModelArguments
    from hf_tvd_loss.tasks.checks import check_model_sources

    cache = tmp_path / "hub"
    (cache / "models--someone--tiny-model").mkdir(parents=True)
    (tmp_path / "local").mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    check_model_sources(
        ModelArguments(model_name_or_path=str(tmp_path / "local"), tokenizer_name="someone/tiny-model")
    )
    for name in ("model_name_or_path", "config_name", "tokenizer_name"):
        with pytest.raises(ValueError, match=rf"{name} 'someone/other-model'.*HF_HUB_OFFLINE=1"):
            check_model_sources(ModelArguments(**{name: "someone/other-model"}))
    # --cache_dir: the cache transformers reads instead of the default one
    (tmp_path / "own_cache" / "models--someone--other-model").mkdir(parents=True)
    check_model_sources(
        ModelArguments(model_name_or_path="someone/other-model", cache_dir=str(tmp_path / "own_cache"))
    )
    with pytest.raises(ValueError, match="someone/tiny-model.*own_cache"):
        check_model_sources(
            ModelArguments(model_name_or_path="someone/tiny-model", cache_dir=str(tmp_path / "own_cache"))
        )
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    check_model_sources(ModelArguments(model_name_or_path="someone/other-model"))
