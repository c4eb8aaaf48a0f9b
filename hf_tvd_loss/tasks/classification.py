"""Text classification: one text (or a pair of texts) → one of C classes, with ``AutoModelForSequenceClassification``.

The options follow transformers' ``run_classification.py``: ``--text_column_names`` (one column, or two for sentence
pairs, given to the tokenizer as a pair), ``--label_column_name``, ``--max_seq_length``. Labels, strings or
integers, are mapped to class ids once, from the training split (sorted; integers that already are ``0..C-1`` keep
their ids), and saved as the model's ``id2label`` / ``label2id``. A label is the same class whatever the file format:
a split whose labels are all integers written as text (a CSV cell is text) holds integers, and numbers with a fraction
are refused in text as in JSON. Evaluation reports accuracy, NLL, ECE and mean
confidence (computed by the γ-CE evaluation loss itself, exact over the split and all processes) and macro-F1;
``--do_predict`` writes ``predictions.jsonl`` with label names.

Models: any ``AutoModelForSequenceClassification``: encoders (BERT-style, first-token pooling) and decoder-only LLMs
(last-token pooling: the pad token is set in the config from the tokenizer, which gets the eos token as its pad
token when it has none). Regression (``num_labels=1``) and multi-label heads are refused by the trainer, naming why.

Default (no options): a tiny BERT built from a config, a BPE tokenizer trained on a generated corpus of news-like
reports labelled with their topic (:func:`~.synthetic.classification_corpus`, 4 classes), γ = 0.5 and b = 0.2 (the
setting the classification study backs), about a minute on two CPU cores.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from datasets import Dataset
from transformers import TrainingArguments

from ..args import TVDArguments
from .arguments import DataArguments, ModelArguments
from .base import MetricsFunction, Task
from .seq2seq import DECODER_SCRATCH_OVERRIDES
from .synthetic import classification_corpus

if TYPE_CHECKING:
    from transformers import DataCollator, EvalPrediction, PreTrainedModel, PreTrainedTokenizerBase
    from transformers.trainer_utils import PredictionOutput

__all__ = ["ClassificationDataArguments", "ClassificationTask", "LabelMap", "label_map_of", "macro_f1"]

PREDICTIONS_FILE = "predictions.jsonl"
# Config fields that name the classes: decided by the training data, never by an option.
_CLASS_FIELDS = ("num_labels", "id2label", "label2id", "problem_type")


@dataclass
class ClassificationDataArguments(DataArguments):
    text_column_names: str = field(
        default="sentence",
        metadata={"help": "The text column, or two comma-separated columns for sentence pairs (e.g. "
                  "'premise,hypothesis'; given to the tokenizer as a pair), as in transformers' run_classification."},
    )  # fmt: skip
    label_column_name: str = field(
        default="label",
        metadata={"help": "The label column: strings or integers (one class per row). Mapped to class ids once, "
                  "from the training split, and saved as the model's id2label / label2id."},
    )  # fmt: skip
    max_seq_length: int = field(
        default=128, metadata={"help": "Tokens kept per example (longer texts are truncated)."}
    )

    def text_columns(self) -> list[str]:
        return [name.strip() for name in self.text_column_names.split(",")]


@dataclass(frozen=True)
class LabelMap:
    """Class names in id order, from the training split; ``ids`` maps a label as the data holds it to its id."""

    names: tuple[str, ...]
    ids: Mapping[Any, int]

    def id_of(self, value: Any) -> int:
        """The class id of a label as a split holds it: an integer written as text (a CSV cell) is that integer."""
        if isinstance(value, str) and _INTEGER_TEXT.fullmatch(value.strip()) and value not in self.ids:
            return self.ids[int(value)]
        return self.ids[value]

    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.names))

    def label2id(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.names)}


def _label_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number with a fraction" if not value.is_integer() else "a float"
    if isinstance(value, str):
        return "a text"
    return type(value).__name__


_INTEGER_TEXT = re.compile(r"-?(0|[1-9][0-9]*)")  # an integer as a CSV cell or a JSON string writes it
_NUMBER_TEXT = re.compile(r"[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?")


def label_values(dataset: Dataset, column: str, where: str) -> list[Any]:
    """The label column's values, checked: strings or integers, none null, one kind per split.

    A split whose labels are all integers written as text (every CSV cell is text) gives those integers, so that the
    same labels are the same classes in a CSV file and in a JSON one (and sort as numbers); a split whose labels are
    all numbers written as text, some of them not plain integers (``1.5``, ``2.0``), is refused as JSON's floats are.
    """
    values = dataset[column]
    kinds: dict[str, int] = {}
    floats = [(row, v) for row, v in enumerate(values, start=1) if isinstance(v, float) and not isinstance(v, bool)]
    if floats:  # JSON reads a whole column as floats when one value has a fraction: name that value's row
        row, value = next(((r, v) for r, v in floats if not v.is_integer()), floats[0])
        raise ValueError(
            f"{where}: row {row}: the label (column {column!r}, --label_column_name) is {_label_kind(value)}, "
            f"{value!r}: a class label must be a text or an integer (regression targets: γ-CE is a loss over "
            "classes; integer or text labels name classes)"
        )
    for row, value in enumerate(values, start=1):
        if value is None:
            raise ValueError(f"{where}: row {row}: the label (column {column!r}, --label_column_name) is null")
        if isinstance(value, str) and not value.strip():
            raise ValueError(f"{where}: row {row}: the label (column {column!r}, --label_column_name) is empty")
        kind = _label_kind(value)
        if kind not in ("a text", "an integer"):
            raise ValueError(
                f"{where}: row {row}: the label (column {column!r}, --label_column_name) is {kind}, {value!r}: a "
                "class label must be a text or an integer"
            )
        kinds.setdefault(kind, row)
    if len(kinds) > 1:
        rows = ", ".join(f"{kind} at row {row}" for kind, row in kinds.items())
        raise ValueError(f"{where}: the labels (column {column!r}) mix texts and integers ({rows}): use one kind")
    if "a text" in kinds and all(_NUMBER_TEXT.fullmatch(v.strip()) for v in values):
        other = next(((r, v) for r, v in enumerate(values, start=1) if not _INTEGER_TEXT.fullmatch(v.strip())), None)
        if other is None:
            return [int(v) for v in values]  # integers written as text
        row, value = other
        raise ValueError(
            f"{where}: row {row}: the label (column {column!r}, --label_column_name) is {value!r}, and every label of "
            "the split is a number: a class label must be an integer (0, 1, ...) or a name, not a number with a "
            "fraction or an exponent (regression targets: γ-CE is a loss over classes)"
        )
    return values


def label_map_of(values: list[Any], where: str) -> LabelMap:
    """The class ids of a training split's labels: sorted; integers already ``0..C-1`` keep their own ids."""
    classes = sorted(set(values))
    if len(classes) < 2:
        raise ValueError(
            f"{where}: every label is {classes[0]!r}: a classifier needs at least two classes in the training data"
            if classes
            else f"{where}: no labels"
        )
    return LabelMap(tuple(str(c) for c in classes), {c: i for i, c in enumerate(classes)})


def macro_f1(predictions: np.ndarray, labels: np.ndarray, num_classes: int) -> float:
    """Unweighted mean over the classes present in ``labels`` or ``predictions`` of the per-class F1."""
    scores = []
    for c in range(num_classes):
        tp = int(np.sum((predictions == c) & (labels == c)))
        fp = int(np.sum((predictions == c) & (labels != c)))
        fn = int(np.sum((predictions != c) & (labels == c)))
        if tp + fp + fn == 0:
            continue  # a class neither predicted nor present says nothing
        scores.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores)) if scores else 0.0


def _is_placeholder_labels(config: Any) -> bool:
    """Whether a config's id2label is transformers' default (LABEL_0, LABEL_1, ...): a model with no classes yet."""
    id2label = getattr(config, "id2label", None) or {}
    return all(str(name) == f"LABEL_{int(i)}" for i, name in id2label.items())


class ClassificationTask(Task[ClassificationDataArguments, TrainingArguments]):
    name = "classification"
    description = "Fine-tune or train a text classifier with the γ-CE (TaiLr) loss."
    data_args_class = ClassificationDataArguments
    training_args_class = TrainingArguments
    auto_model_class = "AutoModelForSequenceClassification"
    head_description = "sequence-classification head (AutoModelForSequenceClassification: BERT-style or an LLM)"
    scores_predictions = True
    scratch_config_overrides = (
        "hidden_size=64,num_hidden_layers=2,num_attention_heads=4,intermediate_size=256,max_position_embeddings=256,"
        "hidden_dropout_prob=0.1,attention_probs_dropout_prob=0.1"
    )
    defaults: dict[str, Any] = {
        # model: a tiny BERT from a config (offline default)
        "model_type": "bert",
        "max_seq_length": 128,
        # γ-CE with γ = 0.5, b = 0.2: in the classification study (docs/CLASSIFICATION.md, 3 seeds) never measurably
        # worse than cross-entropy on clean labels, and at 40 % label noise +6 points of clean-test accuracy and
        # NLL 0.54 against 0.76
        "gamma": 0.5,
        "min_weight": 0.2,
        # training: sized for about a minute on two CPU cores
        "output_dir": "outputs/classification",
        "do_train": True,
        "do_eval": True,
        "do_predict": True,
        "num_train_epochs": 3,
        "per_device_train_batch_size": 32,
        "per_device_eval_batch_size": 64,
        "learning_rate": 1e-3,
        "lr_scheduler_type": "constant",
        "logging_steps": 25,
        "save_strategy": "no",
        "seed": 42,
        "synthetic_train_examples": 1200,
        "synthetic_eval_examples": 200,
    }
    # Fine-tuning a pretrained model: the language-modelling task's (transformers' lr 5e-5 and linear decay, after a
    # 3 % warm-up that keeps Adam's first updates small).
    finetune_defaults: dict[str, Any] = {"learning_rate": 5e-5, "lr_scheduler_type": "linear", "warmup_steps": 0.03}
    headline_metrics = ("loss", "accuracy", "macro_f1", "nll", "ece")
    evaluation_metric_names = (
        "loss", "nll", "perplexity", "tvd_weight_mean", "tvd_weight_floor_fraction", "gamma", "accuracy", "macro_f1",
        "entropy", "ece", "confidence", "runtime", "samples_per_second", "steps_per_second",
    )  # fmt: skip
    labels: LabelMap | None = None  # set by configure_config, from the training split

    def synthetic_rows(self, split: str, num_examples: int, seed: int) -> list[dict[str, Any]]:
        return classification_corpus(num_examples, seed=seed)

    def scratch_overrides(self, model_type: str) -> str | None:
        # a decoder-only classifier built from scratch without --config_overrides: the pair tasks' tiny sizes
        return DECODER_SCRATCH_OVERRIDES.get(model_type) or super().scratch_overrides(model_type)

    def check_args(
        self, data_args: ClassificationDataArguments, model_args: ModelArguments, training_args: TrainingArguments
    ) -> None:
        columns = data_args.text_columns()
        if not 1 <= len(columns) <= 2 or not all(columns):
            raise ValueError(
                f"--text_column_names {data_args.text_column_names!r}: give one column, or two comma-separated "
                "columns for sentence pairs"
            )
        if len(set(columns)) != len(columns):
            raise ValueError(f"--text_column_names {data_args.text_column_names!r} names a column twice")
        if data_args.label_column_name in columns:
            raise ValueError(
                f"--label_column_name {data_args.label_column_name!r} is also a text column (--text_column_names): "
                "the input would hold its own label"
            )
        from .cli import key_value_keys

        given = sorted(set(key_value_keys(model_args.config_overrides or "")) & set(_CLASS_FIELDS))
        if given:
            raise ValueError(
                f"--config_overrides sets {', '.join(given)}, but a classifier's classes come from the training "
                "data's labels (--label_column_name): the value would be replaced (a head with a class no example "
                "trains, or names that are not the data's); remove it"
            )
        value = data_args.max_seq_length
        if isinstance(value, bool) or not isinstance(value, int) or value < 2:
            raise ValueError(f"max_seq_length must be an integer ≥ 2, got {value!r}")

    def check_loss(self, tvd_args: TVDArguments) -> None:
        if tvd_args.loss_impl == "chunked":
            from ..trainer import CHUNKED_CLASSIFIER_REASON

            raise ValueError(
                f"--loss_impl chunked cannot be used with a sequence classifier: {CHUNKED_CLASSIFIER_REASON}"
            )

    def check_columns(self, dataset: Dataset, split: str, origin: str, data_args: ClassificationDataArguments) -> None:
        from .data import check_columns_present

        check_columns_present(dataset, split, origin, {c: "text_column_names" for c in data_args.text_columns()})
        if data_args.label_column_name not in dataset.column_names:
            raise ValueError(
                f"the {split} data ({origin}) has no column {data_args.label_column_name!r} (set by "
                f"--label_column_name); its columns are {dataset.column_names}"
            )
        label_values(dataset, data_args.label_column_name, f"the {split} data ({origin})")

    def text_fields(
        self, data_args: ClassificationDataArguments, columns: list[str], features: Mapping[str, Any] | None = None
    ) -> list[tuple[str, str | None, str]]:
        return [(column, None, "text_column_names") for column in data_args.text_columns()]

    def texts(self, dataset: Dataset, data_args: ClassificationDataArguments) -> Iterator[str]:
        for column in data_args.text_columns():
            yield from (text for text in dataset[column] if isinstance(text, str) and text)

    def configure_config(
        self, config: Any, raw: Mapping[str, Dataset], data_args: ClassificationDataArguments
    ) -> None:
        """The classes, from the training split (or the model's own classes when it has some and no training split
        is given): ``num_labels`` / ``id2label`` / ``label2id`` on ``config``; evaluation or test labels never seen in
        training, and a pretrained classifier's classes that differ from the data's, are refused."""
        column = data_args.label_column_name
        # every split's labels as classes (integers written as text are integers), checked
        values = {split: label_values(dataset, column, f"the {split} data") for split, dataset in raw.items()}
        if "train" in raw:
            labels = label_map_of(values["train"], "the train data")
            names = getattr(raw["train"].features.get(column), "names", None)
            if names:  # a ClassLabel column (Hub datasets): its ids and names are the classes
                missing = [name for i, name in enumerate(names) if i not in labels.ids]
                if missing:
                    raise ValueError(
                        f"the train data's label column {column!r} names {len(names)} classes, and "
                        f"{', '.join(repr(m) for m in missing)} has no training example: the model would have a "
                        "class it never learns; add examples of it or drop it from the data"
                    )
                labels = LabelMap(tuple(str(n) for n in names), {i: i for i in range(len(names))})
            integers = isinstance(values["train"][0], int)
            for split, held in values.items():
                if isinstance(held[0], int) != integers:
                    raise ValueError(
                        f"the {split} data's labels (column {column!r}) are {'texts' if integers else 'integers'} "
                        f"({held[0]!r} at row 1) and the training data's are {'integers' if integers else 'texts'} "
                        f"({values['train'][0]!r} at row 1): write the classes the same way in every split"
                    )
        elif not _is_placeholder_labels(config):  # evaluation only: the model's own classes
            model_names = tuple(str(config.id2label[i]) for i in range(config.num_labels))
            labels = LabelMap(model_names, {name: i for i, name in enumerate(model_names)})
            labels = self._with_integer_ids(labels, values)
        else:
            raise ValueError(
                "without a training split the classes come from the model, but its config names none (id2label is "
                "LABEL_0, LABEL_1, ...): give --train_file, or a model fine-tuned for these labels"
            )
        for split, held in values.items():
            unseen = sorted({str(v) for v in held if v not in labels.ids})
            if unseen:
                shown = ", ".join(repr(v) for v in unseen[:5]) + (" ..." if len(unseen) > 5 else "")
                raise ValueError(
                    f"the {split} data has label(s) {shown} (column {column!r}) that the training data never has "
                    f"(its classes: {', '.join(labels.names)}): the model would have no class for them; add training "
                    "examples of those classes or remove those rows"
                )
        if "train" in raw and not _is_placeholder_labels(config):
            theirs = [str(config.id2label[i]) for i in range(config.num_labels)]
            if theirs != list(labels.names):
                raise ValueError(
                    f"the model's config already names its classes ({', '.join(theirs)}; id2label), and the training "
                    f"data's classes are {', '.join(labels.names)}: a head trained for other classes would be "
                    "re-used under the wrong names. Fine-tune from a model without a classification head (or with "
                    "these classes in this order), or relabel the data"
                )
        config.num_labels = len(labels.names)
        config.id2label, config.label2id = labels.id2label(), labels.label2id()
        self.labels = labels

    @staticmethod
    def _with_integer_ids(labels: LabelMap, values: Mapping[str, list[Any]]) -> LabelMap:
        """A model's classes named by integers ``0..C-1``: data holding integer labels uses them as ids."""
        first = next(iter(values.values()))[0] if values else None
        if isinstance(first, int) and not isinstance(first, bool):
            ids = {int(name): i for i, name in enumerate(labels.names) if name.lstrip("-").isdigit()}
            return LabelMap(labels.names, ids)
        return labels

    def max_length_needed(self, data_args: ClassificationDataArguments) -> int:
        return data_args.max_seq_length

    def preprocess(
        self,
        dataset: Dataset,
        tokenizer: PreTrainedTokenizerBase,
        data_args: ClassificationDataArguments,
        training_args: TrainingArguments,
        split: str,
        *,
        dropped: dict[str, Any] | None = None,
    ) -> Dataset:
        """Tokenise (pairs as pairs), map labels to ids; rows with a null or empty text are dropped (counted before,
        by ``data.check_rows``)."""
        assert self.labels is not None, "configure_config sets the classes first"
        labels, columns = self.labels, data_args.text_columns()

        def tokenize(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
            texts = [batch[column] for column in columns]
            kept = [i for i in range(len(texts[0]))
                    if all(isinstance(t[i], str) and not self.drops_text("", t[i]) for t in texts)]  # fmt: skip
            encoded = tokenizer(*[[t[i] for i in kept] for t in texts], max_length=data_args.max_seq_length,
                                truncation=True)  # fmt: skip
            encoded["labels"] = [labels.id_of(batch[data_args.label_column_name][i]) for i in kept]
            return dict(encoded)

        return dataset.map(
            tokenize, batched=True, remove_columns=dataset.column_names, num_proc=data_args.preprocessing_num_workers,
            desc=f"tokenising {split}",
        )  # fmt: skip

    def data_collator(self, tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel) -> DataCollator:
        from transformers import DataCollatorWithPadding

        return DataCollatorWithPadding(tokenizer)

    def configure_model(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        data_args: ClassificationDataArguments,
        training_args: TrainingArguments,
    ) -> None:
        # A decoder-only classifier pools the last token that is not padding: it needs the pad token's id.
        if model.config.pad_token_id is None:
            model.config.pad_token_id = tokenizer.pad_token_id

    def compute_metrics(
        self, tokenizer: PreTrainedTokenizerBase, data_args: ClassificationDataArguments
    ) -> MetricsFunction:
        """Macro-F1 from the logits (accuracy, NLL and calibration come from the evaluation loss's own sums)."""
        num_classes = len(self.labels.names) if self.labels is not None else 0

        def metrics(prediction: EvalPrediction) -> dict[str, float]:
            logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
            return {"macro_f1": macro_f1(np.asarray(logits).argmax(-1), np.asarray(prediction.label_ids), num_classes)}

        return metrics

    def describe_examples(
        self, data_args: ClassificationDataArguments, tokenizer: PreTrainedTokenizerBase
    ) -> dict[str, Any] | None:
        return {
            "kind": "text classification" + (" (sentence pairs)" if len(data_args.text_columns()) == 2 else ""),
            "classes": list(self.labels.names) if self.labels is not None else None,
            "text_columns": data_args.text_columns(),
            "label_column": data_args.label_column_name,
            "max_seq_length": data_args.max_seq_length,
        }

    def write_predictions(
        self, output: PredictionOutput, tokenizer: PreTrainedTokenizerBase, output_dir: str
    ) -> str | None:
        """``predictions.jsonl``: per test example, in order, the predicted class's name, its probability, and the
        reference label's name."""
        assert self.labels is not None
        logits = output.predictions[0] if isinstance(output.predictions, tuple) else output.predictions
        logits = np.asarray(logits, dtype=np.float64)
        probabilities = np.exp(logits - logits.max(-1, keepdims=True))
        probabilities /= probabilities.sum(-1, keepdims=True)
        path = os.path.join(output_dir, PREDICTIONS_FILE)
        names = self.labels.names
        with open(path, "w", encoding="utf-8") as f:
            for index, (row, label) in enumerate(zip(probabilities, output.label_ids, strict=True)):
                predicted = int(row.argmax())
                record = {"index": index, "prediction": names[predicted], "probability": round(float(row[predicted]), 6),
                          "label": names[int(label)] if 0 <= int(label) < len(names) else None}  # fmt: skip
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
        return path
