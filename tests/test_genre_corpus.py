"""The verse → book-genre classification corpus (scripts/corpora.py), on a tiny SQLite database made here."""

from __future__ import annotations

import json
import sqlite3

import corpora
import prepare_data
import pytest


def _bible(path, verses):
    connection = sqlite3.connect(path)
    connection.execute(
        "CREATE TABLE bible (bbName TEXT, bNumber INTEGER, cNumber INTEGER, vNumber INTEGER, vText TEXT)"
    )
    connection.executemany("INSERT INTO bible VALUES (?, ?, ?, ?, ?)", verses)
    connection.commit()
    connection.close()


def test_classification_rows_label_books_by_genre_and_drop_short_and_repeated_verses(tmp_path):
    db = str(tmp_path / "bible.db")
    _bible(db, [
        ("4", 1, 1, 1, "In the beginning God  created\nthe heavens."),  # whitespace normalised
        ("4", 19, 1, 1, "Blessed is the man who walks."),
        ("4", 44, 2, 3, "They were all filled with joy."),  # Acts: history
        ("4", 66, 1, 1, "The revelation of the one who sees."),  # Revelation: prophets
        ("4", 43, 11, 35, "Jesus wept."),  # two words: too short
        ("4", 45, 1, 1, "Grace to you and peace."),
        ("4", 46, 1, 1, "Grace to you and peace."),  # the same text twice: dropped both times
        ("e", 1, 1, 1, "Im Anfang schuf Gott die Himmel."),  # another edition
    ])  # fmt: skip
    rows = corpora.classification_rows(db, "4")
    assert rows == [
        {"sentence": "In the beginning God created the heavens.", "label": "law", "id": "1.1.1"},
        {"sentence": "Blessed is the man who walks.", "label": "wisdom", "id": "19.1.1"},
        {"sentence": "They were all filled with joy.", "label": "history", "id": "44.2.3"},
        {"sentence": "The revelation of the one who sees.", "label": "prophets", "id": "66.1.1"},
    ]
    assert len(corpora.classification_rows(db, "4", min_words=1)) == 5
    with pytest.raises(ValueError, match="'x' is not an edition"):
        corpora.classification_rows(db, "x")
    assert sorted(set(corpora.BOOK_GENRES.values())) == ["gospels", "history", "law", "letters", "prophets", "wisdom"]
    assert sorted(corpora.BOOK_GENRES) == list(range(1, 67))


def test_split_by_class_is_balanced_disjoint_and_seeded(tmp_path):
    rows = [{"sentence": f"{label} verse {i}", "label": label} for label in "abc" for i in range(10)]
    sizes = {"train": 5, "validation": 2, "test": 3}
    counts = corpora.split_by_class(rows, str(tmp_path / "one"), per_class=sizes, seed=1)
    assert counts == {name: {"a": n, "b": n, "c": n} for name, n in sizes.items()}
    seen = {}
    for name in sizes:
        with open(tmp_path / "one" / f"{name}.jsonl") as f:
            seen[name] = [json.loads(line) for line in f]
        assert len(seen[name]) == 3 * sizes[name]
    texts = [r["sentence"] for split in seen.values() for r in split]
    assert len(texts) == len(set(texts)) == 30
    corpora.split_by_class(rows, str(tmp_path / "two"), per_class=sizes, seed=1)
    assert (tmp_path / "one" / "train.jsonl").read_text() == (tmp_path / "two" / "train.jsonl").read_text()
    with pytest.raises(ValueError, match="fewer than 11 rows"):
        corpora.split_by_class(rows, str(tmp_path / "three"), per_class={"train": 9, "test": 2})


def test_prepare_data_classification_command(tmp_path):
    db = str(tmp_path / "bible.db")
    verses = [("4", book, 1, v, f"Verse number {v} of book {book} here.") for book in (1, 6, 18, 23, 40, 45)
              for v in range(1, 5)]  # fmt: skip
    _bible(db, verses)
    out = tmp_path / "genre"
    counts = prepare_data.main(["classification", "--bible_db", db, "--output_dir", str(out), "--train_per_class",
                                "2", "--validation_per_class", "1", "--test_per_class", "1"])  # fmt: skip
    assert counts == {"train": 12, "validation": 6, "test": 6}
    first = json.loads((out / "train.jsonl").read_text().splitlines()[0])
    assert set(first) == {"sentence", "label", "id"}
