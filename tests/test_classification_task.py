"""scripts/finetune_classification.py and the classification task: the offline default, local files with string or
integer labels and sentence pairs, a pretrained decoder-only model, and bad data refused before any work."""

from __future__ import annotations

import json
import os
import re

import pytest
from test_scripts import _read, _script

from hf_tvd_loss.tasks import get_task
from hf_tvd_loss.tasks.classification import label_map_of, macro_f1
from hf_tvd_loss.tasks.run import prepare

QUICK = ["--report_to", "none", "--disable_tqdm", "true", "--logging_steps", "1", "--max_steps", "3"]
SYNTHETIC = ["--synthetic_train_examples", "48", "--synthetic_eval_examples", "12"]


def _jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    return str(path)


def test_default_run_reports_classification_metrics_and_label_names(tmp_path, capsys):
    out = str(tmp_path / "cls")
    metrics = _script("finetune_classification").main([*QUICK, *SYNTHETIC, "--output_dir", out])
    for split in ("eval", "test"):
        for name in ("loss", "nll", "accuracy", "macro_f1", "ece", "confidence", "entropy", "gamma"):
            assert f"{split}_{name}" in metrics, f"{split}_{name}"
        assert 0 <= metrics[f"{split}_accuracy"] <= 1 and 0 <= metrics[f"{split}_ece"] <= 1
        assert f"{split}_token_accuracy" not in metrics  # a classifier's accuracy has one name
    assert metrics["eval_gamma"] == 0.5
    config = _read(os.path.join(out, "config.json"))
    assert config["id2label"] == {"0": "farming", "1": "schools", "2": "trade", "3": "transport"}
    assert config["label2id"] == {"farming": 0, "schools": 1, "trade": 2, "transport": 3}
    assert config["architectures"] == ["BertForSequenceClassification"]
    with open(os.path.join(out, "predictions.jsonl"), encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    assert len(rows) == 12 and rows[0]["index"] == 0
    assert {row["prediction"] for row in rows} <= set(config["label2id"]) and 0 < rows[0]["probability"] <= 1
    accuracy = sum(row["prediction"] == row["label"] for row in rows) / len(rows)
    assert accuracy == pytest.approx(metrics["test_accuracy"], abs=1e-9)  # the file and the metric agree
    info = _read(os.path.join(out, "run_info.json"))
    assert info["task"] == "classification" and info["examples"]["classes"] == list(config["label2id"])
    printed = capsys.readouterr().out
    assert "[hf_tvd_loss] classification: done" in printed and "macro_f1" in printed
    with open(os.path.join(out, "README.md"), encoding="utf-8") as f:
        assert "classes: ['farming', 'schools', 'trade', 'transport']" in f.read()


def test_integer_labels_sentence_pairs_and_a_pretrained_decoder_only_model(tmp_path):
    """Integer labels 1..3 become ids 0..2 named '1'..'3'; two text columns are a sentence pair; the trained model
    is then fine-tuned again as a pretrained one."""
    rows = [{"premise": f"the {w} is here", "hypothesis": f"a {w} waits", "label": 1 + i % 3}
            for i, w in enumerate(["cat", "dog", "bird", "fish", "cow", "hen"] * 6)]  # fmt: skip
    train, val = _jsonl(tmp_path / "train.jsonl", rows), _jsonl(tmp_path / "val.jsonl", rows[:9])
    out = str(tmp_path / "pairs")
    files = ["--train_file", train, "--validation_file", val, "--text_column_names", "premise,hypothesis"]
    metrics = _script("finetune_classification").main(
        [*QUICK, *files, "--output_dir", out, "--do_predict", "false", "--model_type", "llama"]
    )  # a decoder-only model built from a config: last-token pooling on the pad token set from the tokenizer
    config = _read(os.path.join(out, "config.json"))
    assert config["id2label"] == {"0": "1", "1": "2", "2": "3"} and config["pad_token_id"] is not None
    assert config["architectures"] == ["LlamaForSequenceClassification"] and "eval_accuracy" in metrics
    tuned = str(tmp_path / "tuned")
    metrics = _script("finetune_classification").main(
        [*QUICK, *files, "--output_dir", tuned, "--do_predict", "false", "--model_name_or_path", out]
    )
    assert _read(os.path.join(tuned, "config.json"))["id2label"] == config["id2label"]
    assert "eval_macro_f1" in metrics


def _refusal(tmp_path, rows_by_split, extra=()):
    paths = []
    for split, rows in rows_by_split.items():
        paths += [f"--{split}_file", _jsonl(tmp_path / f"{split}.jsonl", rows)]
    argv = [*QUICK, *paths, "--output_dir", str(tmp_path / "out"), "--do_predict", "false", *extra]
    with pytest.raises(ValueError) as caught:
        prepare(get_task("classification"), argv)
    assert not (tmp_path / "out").exists()  # refused before anything is written
    return str(caught.value)


GOOD = [{"sentence": f"text number {i}", "label": ["a", "b"][i % 2]} for i in range(8)]


@pytest.mark.parametrize(
    ("case", "rows", "extra", "message"),
    [
        (
            "unseen label in validation",
            {"train": GOOD, "validation": [{"sentence": "x", "label": "c"}]},
            (),
            r"validation data has label\(s\) 'c'.*never has \(its classes: a, b\)",
        ),
        (
            "one class only",
            {"train": [{"sentence": "x", "label": "a"}] * 4, "validation": GOOD},
            (),
            "every label is 'a': a classifier needs at least two classes",
        ),
        (
            "float labels",
            {"train": [{"sentence": "x", "label": 0.5}] * 4, "validation": GOOD},
            (),
            r"row 1: the label .* is a number with a fraction, 0.5.*regression",
        ),
        (
            "one float among integers (JSON reads the column as floats): its row",
            {
                "train": [
                    *[{"sentence": f"t {i}", "label": i % 2} for i in range(7)],
                    {"sentence": "x", "label": 1.5},
                ],
                "validation": GOOD,
            },
            (),
            r"row 8: the label .* is a number with a fraction, 1.5",
        ),
        (
            "texts in training, integers in validation",
            {"train": GOOD, "validation": [{"sentence": "x", "label": 0}]},
            (),
            r"validation data's labels .* are integers \(0 at row 1\) and the training data's are texts",
        ),
        (
            "null label",
            {"train": [*GOOD, {"sentence": "x", "label": None}], "validation": GOOD},
            (),
            "row 9: the label .* is null",
        ),
        (
            "mixed label kinds",
            {"train": [*GOOD, {"sentence": "x", "label": 3}], "validation": GOOD},
            (),
            "mix texts and integers",
        ),
        (
            "missing label column",
            {"train": [{"sentence": "x", "y": "a"}] * 4, "validation": GOOD},
            (),
            "has no column 'label' \\(set by --label_column_name\\)",
        ),
        (
            "missing text column",
            {"train": GOOD, "validation": GOOD},
            ("--text_column_names", "text"),
            "has no column 'text' \\(set by --text_column_names\\)",
        ),
        (
            "three text columns",
            {"train": GOOD, "validation": GOOD},
            ("--text_column_names", "a,b,c"),
            "give one column, or two comma-separated columns",
        ),
        (
            "label column is a text column",
            {"train": GOOD, "validation": GOOD},
            ("--text_column_names", "sentence,label"),
            "also a text column",
        ),
        (
            "too many empty texts",
            {"train": [{"sentence": "", "label": "a"}] * 3 + GOOD, "validation": GOOD},
            ("--max_dropped_fraction", "0.2"),
            "text_column_names",
        ),
        (
            "a class of the model with no training example",
            {"train": GOOD, "validation": GOOD},
            ("--config_overrides", "num_labels=3"),
            "config_overrides sets num_labels, but a classifier's classes",
        ),
    ],
    ids=lambda v: v if isinstance(v, str) and " " in v else None,
)
def test_bad_data_is_refused_before_work(tmp_path, case, rows, extra, message):
    assert re.search(message, _refusal(tmp_path, rows, extra)), case


def _csv(path, rows):
    import csv

    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return str(path)


def test_a_label_is_the_same_class_in_csv_and_json(tmp_path):
    """A CSV cell is text: integer labels in a CSV file are the integers of a JSON file (numeric order, so 10 is class
    10, not the third of '0', '1', '10', ...); numbers with a fraction are refused as JSON's floats are, naming the
    row."""
    rows = [{"review": f"text number {i}", "category": i % 12} for i in range(36)]
    options = ["--text_column_names", "review", "--label_column_name", "category", "--do_predict", "false"]
    prepared = prepare(get_task("classification"), [*QUICK, *options, "--train_file", _csv(tmp_path / "t.csv", rows),
                       "--validation_file", _jsonl(tmp_path / "v.jsonl", rows[:12]), "--output_dir",
                       str(tmp_path / "o")])  # fmt: skip
    assert prepared.config.id2label == {i: str(i) for i in range(12)}
    task = prepared.task
    assert [task.labels.id_of(v) for v in ("10", 10, "0", 3, " 7")] == [10, 10, 0, 3, 7]
    for labels, message in (([0.0, 1.0, 2.0, 3.0] * 3, r"row 1: the label .* is '0.0', and every label"),
                            ([*range(4)] * 2 + [1.5], r"row 9: the label .* is '1.5', and every label")):  # fmt: skip
        bad = [{"review": f"t {i}", "category": label} for i, label in enumerate(labels)]
        with pytest.raises(ValueError, match=message):
            prepare(get_task("classification"), [*QUICK, *options, "--train_file", _csv(tmp_path / "b.csv", bad),
                    "--output_dir", str(tmp_path / "b")])  # fmt: skip
        assert not (tmp_path / "b").exists()


def test_empty_texts_are_dropped_and_counted(tmp_path):
    rows = [*GOOD, {"sentence": "  ", "label": "a"}]
    prepared = prepare(get_task("classification"), [*QUICK, "--train_file", _jsonl(tmp_path / "t.jsonl", rows),
                       "--validation_file", _jsonl(tmp_path / "v.jsonl", GOOD), "--output_dir", str(tmp_path / "o"),
                       "--do_predict", "false", "--max_dropped_fraction", "0.5"])  # fmt: skip
    assert prepared.dropped_rows["train"]["dropped"] == 1


def test_a_pretrained_classifier_with_other_classes_is_refused(tmp_path):
    out = str(tmp_path / "first")
    _script("finetune_classification").main([*QUICK, *SYNTHETIC, "--output_dir", out, "--do_predict", "false"])
    message = _refusal(tmp_path, {"train": GOOD, "validation": GOOD}, ("--model_name_or_path", out))
    assert "already names its classes (farming, schools, trade, transport" in message and "a, b" in message


def test_label_map_and_macro_f1():
    import numpy as np

    labels = label_map_of([3, 1, 2, 1], "train")
    assert labels.names == ("1", "2", "3") and labels.ids == {1: 0, 2: 1, 3: 2}
    assert label_map_of(["b", "a"], "train").id2label() == {0: "a", 1: "b"}
    # per class F1: class 0 (tp 1, fp 1, fn 0) 2/3, class 1 (tp 1, fp 0, fn 1) 2/3, class 2 (tp 1) 1
    predictions, truth = np.array([0, 0, 1, 2]), np.array([0, 1, 1, 2])
    assert macro_f1(predictions, truth, 3) == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)


def test_a_local_dataset_folder(tmp_path):
    """--dataset_name names a folder written by datasets' save_to_disk (the splits it holds are used as they are)."""
    from datasets import Dataset, DatasetDict

    DatasetDict(train=Dataset.from_list(GOOD), validation=Dataset.from_list(GOOD[:4])).save_to_disk(tmp_path / "ds")
    prepared = prepare(get_task("classification"), [*QUICK, "--dataset_name", str(tmp_path / "ds"), "--output_dir",
                       str(tmp_path / "out"), "--do_predict", "false"])  # fmt: skip
    assert prepared.config.id2label == {0: "a", 1: "b"} and len(prepared.raw["validation"]) == 4
    assert not (tmp_path / "out").exists()


def test_class_label_names_of_a_hub_style_dataset(tmp_path):
    """A ClassLabel column (as Hub datasets ship labels) gives the classes its names; a named class with no training
    example is refused before work."""
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

    features = Features({"sentence": Value("string"), "label": ClassLabel(names=["world", "sports", "business"])})
    rows = [{"sentence": f"news item {i}", "label": i % 3} for i in range(9)]
    DatasetDict(train=Dataset.from_list(rows, features=features),
                validation=Dataset.from_list(rows[:3], features=features)).save_to_disk(tmp_path / "ds")  # fmt: skip

    def argv(folder):
        return [*QUICK, "--dataset_name", str(tmp_path / folder), "--output_dir", str(tmp_path / "out"),
                "--do_predict", "false"]  # fmt: skip

    assert prepare(get_task("classification"), argv("ds")).config.id2label == {0: "world", 1: "sports", 2: "business"}
    two = [row for row in rows if row["label"] != 2]
    DatasetDict(train=Dataset.from_list(two, features=features),
                validation=Dataset.from_list(two[:2], features=features)).save_to_disk(tmp_path / "ds2")  # fmt: skip
    with pytest.raises(ValueError, match="'business' has no training example"):
        prepare(get_task("classification"), argv("ds2"))
