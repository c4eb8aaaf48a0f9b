"""The option dataclasses every task script shares: which model (:class:`ModelArguments`) and where the data comes
from (:class:`DataArguments`; each task subclasses it with its columns and lengths). ``--help`` prints their help."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

__all__ = ["DataArguments", "ModelArguments"]


@dataclass
class ModelArguments:
    """Which model to train: a pretrained one (Hub name or local folder) or one built from a config."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Pretrained model to fine-tune: a Hub name or a local folder (from save_pretrained). Leave unset "
            "to build a new model from --config_name or --model_type plus --config_overrides."
        },
    )
    config_name: str | None = field(
        default=None,
        metadata={
            "help": "Config (Hub name or local folder/file) of a model built from scratch; --model_type if unset."
        },
    )
    model_type: str | None = field(
        default=None,
        metadata={"help": "Architecture of a model built from scratch when no --config_name is given (e.g. bart, "
                  "marian, t5, gpt2, llama)."},
    )  # fmt: skip
    config_overrides: str | None = field(
        default=None,
        metadata={
            "help": "Comma-separated key=value settings applied to the config, e.g. 'd_model=512,encoder_layers=6'. "
            "For a pretrained model only settings that keep the weights' shapes make sense (dropout etc.). Unset "
            "with the task's default model_type: the tiny size of the offline default run (see docs/SCRIPTS.md)."
        },
    )
    tokenizer_name: str | None = field(
        default=None,
        metadata={
            "help": "Pretrained tokenizer (Hub name or local folder); defaults to --model_name_or_path. Without "
            "either, a tokenizer (--tokenizer_type) is trained on the training data and saved with the model."
        },
    )
    tokenizer_type: Literal["bpe", "sentencepiece"] = field(
        default="bpe",
        metadata={
            "help": "Kind of tokenizer trained on the training data when there is no pretrained one. bpe: a "
            "`tokenizers` BPE model in a PreTrainedTokenizerFast; sentencepiece: a SentencePiece unigram model "
            "(sentencepiece library) in a MarianTokenizer, as Marian/OPUS-MT models ship it."
        },
    )
    tokenizer_vocab_size: int = field(
        default=8000,
        metadata={"help": "Vocabulary size of a tokenizer trained on the training data (an upper bound: a small "
                  "corpus gives fewer tokens)."},
    )  # fmt: skip
    cache_dir: str | None = field(default=None, metadata={"help": "Where Hub models and datasets are cached."})
    allow_pickle_weights: bool = field(
        default=False,
        metadata={
            "help": "Also load pickled (.bin) weights when a model has no safetensors file. Off by default: "
            "unpickling can run code."
        },
    )
    trust_remote_code: bool = field(
        default=False,
        metadata={
            "help": "Allow a model/tokenizer repository to run its own Python code when loaded. Off by default: "
            "inputs never run code unless you turn this on for a repository you trust."
        },
    )
    model_revision: str = field(
        default="main", metadata={"help": "Hub revision (branch, tag or commit) of the model."}
    )
    freeze_layers: int | None = field(
        default=None,
        metadata={
            "help": "Freeze the input embeddings and the first N transformer blocks (N from 1 to the number of "
            "blocks; the blocks above, the final norm and the task head train). Refused on a model without a stack of "
            "num_hidden_layers blocks. Recorded in run_info.json and the model card."
        },
    )
    cache_frozen_outputs: bool = field(
        default=False,
        metadata={
            "help": "With --freeze_layers on a decoder-only model (causal attention, right padding, no dropout in "
            "the frozen blocks): compute the frozen blocks' output once per distinct input and reuse it (in memory, "
            "shared by later runs in the same process with the same frozen weights), so that a step costs only the "
            "blocks that train. Exact up to float rounding: the frozen blocks are deterministic and causal."
        },
    )


@dataclass
class DataArguments:
    """Where the data comes from; task subclasses add their column names and lengths."""

    dataset_name: str | None = field(
        default=None, metadata={"help": "Hub dataset name (needs network access); exclusive with --train_file etc."}
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "Hub dataset configuration name."})
    train_file: str | None = field(
        default=None, metadata={"help": "Local training data: .jsonl/.json, .csv, .parquet (or .txt for LM)."}
    )
    validation_file: str | None = field(
        default=None,
        metadata={"help": "Local validation data; when absent, --validation_split_percentage of train is held out."},
    )
    test_file: str | None = field(
        default=None, metadata={"help": "Local test data for --do_predict; when absent, the validation data is used."}
    )
    validation_split_percentage: int = field(
        default=5,
        metadata={"help": "Percent of the training data held out for validation when there is no validation split."},
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Keep only the first N training examples (for quick runs)."}
    )
    max_eval_samples: int | None = field(default=None, metadata={"help": "Keep only the first N validation examples."})
    max_predict_samples: int | None = field(default=None, metadata={"help": "Keep only the first N test examples."})
    synthetic_train_examples: int = field(
        default=2000,
        metadata={"help": "Without --dataset_name or --train_file the data is a synthetic corpus generated with a fixed "
                  "seed: this many training examples."},
    )  # fmt: skip
    synthetic_eval_examples: int = field(
        default=100, metadata={"help": "Size of each of the synthetic validation and test splits."}
    )
    preprocessing_num_workers: int | None = field(
        default=None, metadata={"help": "Processes used by datasets.map for tokenisation."}
    )
    max_dropped_fraction: float = field(
        default=0.1,
        metadata={"help": "Rows whose text is missing (null, absent key) or empty are dropped, and the run says how "
                  "many; above this fraction of a split the run is refused instead (1 allows any)."},
    )  # fmt: skip
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Let the run use an output_dir that is not empty: the outputs of an earlier run of these "
                  "scripts (model, tokenizer, metrics, run_info.json, model card, predictions, runs/, "
                  "checkpoint-N folders) are removed before this run writes; other files are left alone. Without "
                  "it, a non-empty output_dir is refused unless --resume_from_checkpoint continues the run there."},
    )  # fmt: skip

    def data_source(self) -> Literal["hub", "files", "synthetic"]:
        """Where the splits come from: a Hub dataset, local files, or the task's synthetic corpus."""
        if self.dataset_name:
            return "hub"
        if self.train_file or self.validation_file or self.test_file:
            return "files"
        return "synthetic"
