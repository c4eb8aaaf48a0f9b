"""The option names of transformers' example scripts (``run_summarization.py``, ``run_translation.py``,
``run_clm.py``, ``run_classification.py``), read by every task parser (:class:`.cli.YamlArgumentParser`).

A command line written for those scripts works here as far as the meaning carries over. Each of their options whose
name is not already an option here with the same meaning has one entry in :data:`EXAMPLE_OPTIONS`:

* an **alias** (``target``): the same meaning under this project's name (``--num_beams`` is
  ``--generation_num_beams``). It is an extra option string of the target's argparse action, so that it parses with
  the target's type, shows in ``--help`` beside it, counts as the target in ``given_options``, and is refused when
  given together with its target (the same option twice). ``check`` may refuse a value whose meaning would differ.
* an option **accepted where it changes nothing** (``check`` without ``target``): transformers' default value, or a
  setting that has no effect in the situation (``--text_column_delimiter`` with one text column); any other value
  is refused with ``check``'s reason.
* a **refusal** (``refusal``): no option here means the same thing; the message names this project's equivalent or
  says why there is none.

Aliases work as YAML keys too (``--config``). The table is in docs/SCRIPTS.md ("Coming from transformers'
examples"); ``tests/test_hf_example_options.py`` runs the examples' documented command lines.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["EXAMPLE_OPTIONS", "HIDDEN_PREFIX", "ExampleOption", "check_values", "example_option", "install"]

SUMMARIZATION, TRANSLATION, CLM, CLASSIFICATION = (
    "run_summarization", "run_translation", "run_clm", "run_classification"
)  # fmt: skip
SEQ2SEQ = (SUMMARIZATION, TRANSLATION)
ALL = (SUMMARIZATION, TRANSLATION, CLM, CLASSIFICATION)

# dest of the hidden argparse action that reads an option accepted without effect or refused
HIDDEN_PREFIX = "hf_example__"

Check = Callable[[Any, argparse.Namespace], "str | None"]


@dataclass(frozen=True)
class ExampleOption:
    """One option of transformers' example scripts that is not an option here under the same name and meaning."""

    name: str
    scripts: tuple[str, ...]
    target: str | None = None  # alias: this project's option of the same meaning
    check: Check | None = None  # None: accepted; else the reason the value is refused
    refusal: str = ""  # why it is refused whatever its value (no target, no check)
    flag: bool = False  # a boolean there: `--name` alone means true
    requires: str | None = None  # an alias applies only where this option exists too
    doc: str = ""  # what docs/SCRIPTS.md says of an alias or an accepted option

    def kind(self) -> str:
        return "alias" if self.target else ("accepted" if self.check else "refused")


def _is_true(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.strip().lower() in ("true", "1", "yes"))


def _only(default: bool, reason: str) -> Check:
    """A boolean accepted at transformers' default (what happens here too); the other value is refused."""

    def check(value: Any, namespace: argparse.Namespace) -> str | None:
        return None if _is_true(value) == default else reason

    return check


def _val_max_target_length(value: Any, namespace: argparse.Namespace) -> str | None:
    target = getattr(namespace, "max_target_length", None)
    if value == target:
        return None
    return (
        f"transformers' --val_max_target_length {value} also cuts the validation/test references at {value} "
        f"tokens; here every split's targets are cut at --max_target_length ({target}). Give --max_target_length "
        f"{value} (all splits' targets and the generation length) or --generation_max_length {value} (the "
        "generation length only)"
    )


def _delimiter(value: Any, namespace: argparse.Namespace) -> str | None:
    columns = [c for c in str(getattr(namespace, "text_column_names", "") or "").split(",") if c.strip()]
    if len(columns) <= 1:
        return None  # one text column: nothing is joined, there or here
    return (
        "here two --text_column_names are a sentence pair given to the tokenizer as a pair, not texts joined with "
        "a delimiter; join the columns in the data if one text is meant"
    )


def _shuffle(value: Any, namespace: argparse.Namespace) -> str | None:
    if getattr(namespace, "max_train_samples", None) is None:
        return None  # the Trainer shuffles the training data every epoch (--seed / --data_seed) in any case
    return (
        "with --max_train_samples, transformers' script keeps N examples after a shuffle; here the first N rows are "
        "kept (the Trainer shuffles them every epoch): shuffle the file to keep a random N"
    )


def _metric_name(value: Any, namespace: argparse.Namespace) -> str | None:
    if str(value) == "accuracy":
        return None  # reported here in every evaluation
    return (
        f"{value!r}: the classification task reports accuracy, macro_f1, nll and ece (no evaluate metric is "
        "loaded); choose the metric of the best checkpoint with --metric_for_best_model"
    )


def _dtype(value: Any, namespace: argparse.Namespace) -> str | None:
    if str(value) == "auto":
        return None  # transformers 5 loads in the checkpoint's dtype by default, as here
    return (
        "the model loads in its checkpoint's dtype (transformers 5's default, 'auto'); train in mixed precision "
        "with --bf16 or --fp16"
    )


_NO_TOKEN = (
    "no option here: the Hub token is read where huggingface_hub keeps it (the HF_TOKEN environment variable or "
    "`hf auth login`), not from the command line"
)

EXAMPLE_OPTIONS: tuple[ExampleOption, ...] = (
    # --- aliases: the same meaning under this project's name
    ExampleOption(
        "num_beams", SEQ2SEQ, target="generation_num_beams", doc="beams of the generation in evaluation and prediction"
    ),
    ExampleOption(
        "val_max_target_length",
        SEQ2SEQ,
        target="generation_max_length",
        requires="max_target_length",
        check=_val_max_target_length,
        doc="the generation length; accepted when it equals --max_target_length, which cuts every "
        "split's targets here (transformers' option also cuts the validation references)",
    ),
    ExampleOption(
        "dataset_config",
        ALL,
        target="dataset_config_name",
        doc="the READMEs' abbreviation (argparse abbreviations are off here)",
    ),
    ExampleOption("text_column_name", (CLASSIFICATION,), target="text_column_names", doc="the README's abbreviation"),
    # --- accepted where they change nothing
    ExampleOption(
        "use_fast_tokenizer",
        ALL,
        flag=True,
        check=_only(
            True,
            "tokenizers load as AutoTokenizer gives them (the fast one where it exists); "
            "there is no option for a slow one",
        ),
        doc="true (their default) only: the fast tokenizer is loaded",
    ),
    ExampleOption(
        "ignore_pad_token_for_loss",
        SEQ2SEQ,
        flag=True,
        check=_only(True, "padded label positions are always -100 (ignored) here; the loss never scores padding"),
        doc="true (their default) only: padded labels are always ignored",
    ),
    ExampleOption(
        "pad_to_max_length",
        (*SEQ2SEQ, CLASSIFICATION),
        flag=True,
        check=_only(
            False,
            "batches are padded to their longest example (dynamic padding); padding to "
            "the maximum length changes no result here, only the speed",
        ),
        doc="false only: batches are padded dynamically",
    ),
    ExampleOption(
        "text_column_delimiter",
        (CLASSIFICATION,),
        check=_delimiter,
        doc="with one text column only (nothing is joined)",
    ),
    ExampleOption(
        "shuffle_train_dataset",
        (CLASSIFICATION,),
        flag=True,
        check=_shuffle,
        doc="without --max_train_samples only (the Trainer shuffles every epoch)",
    ),
    ExampleOption("shuffle_seed", (CLASSIFICATION,), check=_shuffle, doc="without --max_train_samples only"),
    ExampleOption(
        "metric_name",
        (CLASSIFICATION,),
        check=_metric_name,
        doc="accuracy only (reported in every evaluation, with macro_f1, nll, ece)",
    ),
    ExampleOption("dtype", (CLM,), check=_dtype, doc="auto only (the checkpoint's dtype, transformers 5's default)"),
    ExampleOption("torch_dtype", (CLM,), check=_dtype, doc="auto only"),
    # --- refused, naming the equivalent or why there is none
    ExampleOption(
        "overwrite_cache",
        ALL,
        flag=True,
        refusal="no option here: datasets' cache of the preprocessing is keyed by the data and every "
        "preprocessing option, so a changed setting is never read from a stale cache; to rebuild it, "
        "delete the datasets cache folder (HF_DATASETS_CACHE)",
    ),
    ExampleOption(
        "streaming",
        (CLM,),
        flag=True,
        refusal="no streaming: the splits are loaded whole (they are counted, checked and split before "
        "training); use --max_train_samples for a part of a large dataset",
    ),
    ExampleOption(
        "do_regression",
        (CLASSIFICATION,),
        flag=True,
        refusal="γ-CE (TaiLr) is a classification loss (it reweights the probability of the true class); "
        "regression has no class distribution. Labels are classes here",
    ),
    ExampleOption("token", ALL, refusal=_NO_TOKEN),
    ExampleOption("use_auth_token", ALL, flag=True, refusal=_NO_TOKEN),
    ExampleOption(
        "low_cpu_mem_usage",
        (CLM,),
        flag=True,
        refusal="no option here: transformers 5's from_pretrained ignores it (loading is always memory-efficient)",
    ),
    ExampleOption(
        "keep_linebreaks",
        (CLM,),
        flag=True,
        refusal="no option here: a .txt file is read one example per line without its line break "
        "(datasets' text loader); each text ends with the eos token when texts are joined into "
        "--block_size blocks. Use a .jsonl file with a text column to keep line breaks inside a text",
    ),
    ExampleOption(
        "resize_position_embeddings",
        (SUMMARIZATION,),
        flag=True,
        refusal="no option here: position embeddings are never resized; keep --max_source_length within "
        "the model's positions (max_position_embeddings)",
    ),
    ExampleOption(
        "lang",
        (SUMMARIZATION,),
        refusal="no option here: a multilingual (mBART) tokenizer's language codes are not set by these "
        "scripts; use a model whose tokenizer needs none",
    ),
    ExampleOption(
        "forced_bos_token",
        SEQ2SEQ,
        refusal="no option here: set forced_bos_token_id in the model's generation_config.json (the "
        "saved model's generation settings) before fine-tuning",
    ),
    ExampleOption(
        "train_split_name",
        (CLASSIFICATION,),
        refusal="no option here: a Hub dataset's splits are read as train/validation/test; for other "
        "splits, save them as files and give --train_file/--validation_file/--test_file",
    ),
    ExampleOption(
        "validation_split_name",
        (CLASSIFICATION,),
        refusal="no option here: the validation split is 'validation' (or --validation_file, or "
        "--validation_split_percentage of the training data)",
    ),
    ExampleOption(
        "test_split_name", (CLASSIFICATION,), refusal="no option here: the test split is 'test' (or --test_file)"
    ),
    ExampleOption(
        "remove_splits",
        (CLASSIFICATION,),
        refusal="no option here: only the splits the run needs are read (--do_train/--do_eval/"
        "--do_predict); give local files to choose them",
    ),
    ExampleOption(
        "remove_columns",
        (CLASSIFICATION,),
        refusal="not needed: only --text_column_names and --label_column_name are read, other columns are ignored",
    ),
    ExampleOption(
        "ignore_mismatched_sizes",
        (CLASSIFICATION,),
        flag=True,
        refusal="no option here: a pretrained classifier whose classes differ from the data's is refused "
        "(its head would be re-used under wrong names); fine-tune from a model without a "
        "classification head",
    ),
)

_BY_NAME = {entry.name: entry for entry in EXAMPLE_OPTIONS}


def example_option(name: str) -> ExampleOption | None:
    return _BY_NAME.get(name.lstrip("-"))


def _flag_value(text: str) -> bool | str:
    lowered = text.strip().lower()
    if lowered in ("true", "1", "yes", "y", "t"):
        return True
    if lowered in ("false", "0", "no", "n", "f"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def install(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Add the entries of :data:`EXAMPLE_OPTIONS` to ``parser``; returns ``{alias: target}`` of the installed aliases.

    An entry whose name is already an option of ``parser`` is skipped (the same name means the same here); an alias
    whose target (or ``requires``) is no option of this task is skipped too (the option is then unknown, with the
    usual "did you mean"). Accepted and refused options get a hidden action whose dest is ``HIDDEN_PREFIX + name``
    and whose default is "absent", so that only an option actually given is checked (:func:`check_values`).
    """
    actions = parser._option_string_actions  # noqa: SLF001  # argparse keeps option strings here only
    aliases: dict[str, str] = {}
    for entry in EXAMPLE_OPTIONS:
        option = "--" + entry.name
        if option in actions:
            continue
        # HfArgumentParser reads --a-b as --a_b too: so do the examples' scripts, and so does this table
        options = [option] + ([option.replace("_", "-")] if "_" in entry.name else [])
        if entry.target:
            action = actions.get("--" + entry.target)
            if action is None or (entry.requires and "--" + entry.requires not in actions):
                continue
            for spelling in options:
                action.option_strings.append(spelling)
                actions[spelling] = action
            aliases[entry.name] = entry.target
            continue
        kwargs: dict[str, Any] = {"nargs": "?", "const": True, "type": _flag_value} if entry.flag else {"type": str}
        parser.add_argument(*options, dest=HIDDEN_PREFIX + entry.name, default=argparse.SUPPRESS,
                            help=argparse.SUPPRESS, **kwargs)  # fmt: skip
    return aliases


def refusal_message(entry: ExampleOption, reason: str, source: str = "") -> str:
    where = f"{source}: " if source else ""
    scripts = ", ".join(f"{s}.py" for s in entry.scripts)
    return f"{where}--{entry.name} (an option of transformers' {scripts}) is refused: {reason}"


def check_values(namespace: argparse.Namespace, aliases_used: set[str]) -> None:
    """Raise ``ValueError`` for the first given example option whose value is refused (see :data:`EXAMPLE_OPTIONS`).

    ``aliases_used``: the aliases given (on the command line or as YAML keys), whose ``check`` sees the target's
    parsed value."""
    for entry in EXAMPLE_OPTIONS:
        if entry.target:
            if entry.name in aliases_used and entry.check is not None:
                reason = entry.check(getattr(namespace, entry.target, None), namespace)
                if reason:
                    raise ValueError(refusal_message(entry, reason))
            continue
        dest = HIDDEN_PREFIX + entry.name
        if not hasattr(namespace, dest):
            continue
        reason = entry.check(getattr(namespace, dest), namespace) if entry.check else entry.refusal
        if reason:
            raise ValueError(refusal_message(entry, reason))


def help_epilog(aliases: dict[str, str]) -> str:
    """One paragraph for ``--help``: transformers' example option names read here."""
    parts = [f"--{alias} (= --{target})" for alias, target in aliases.items()]
    accepted = [f"--{e.name}" for e in EXAMPLE_OPTIONS if e.kind() == "accepted"]
    return (
        "Option names of transformers' example scripts are read too: "
        + ", ".join(parts)
        + (f"; {', '.join(accepted)} where they change nothing" if accepted else "")
        + ". Their other options are refused, naming this project's equivalent (docs/SCRIPTS.md, \"Coming from "
        "transformers' examples\")."
    )
