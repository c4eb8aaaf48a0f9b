"""Synthetic corpora generated in code with a fixed seed: the offline default data of the task scripts.

Every word list below was written for this project (invented names and places, a toy "German-like"
language); no third-party text is involved. The corpora are small and regular on purpose: a tiny model
trained from scratch for a minute on two CPU cores learns enough of them for the metrics to move.

* :func:`summarization_corpus` — news-like documents of 3-6 sentences; the summary is a headline built from
  the lead sentence (who, did what, where), so it is learnable yet not a copy of the input.
* :func:`translation_corpus` — sentence pairs of an invented source language ("de") and English ("en"): word
  for word through a fixed lexicon, with the verb moved to the end (as German subordinate clauses do) and
  a gendered article, so a model must learn a lexicon, agreement and reordering.
* :func:`language_modeling_corpus` — paragraphs of the same news-like sentences.
"""

from __future__ import annotations

import random

__all__ = ["language_modeling_corpus", "summarization_corpus", "translation_corpus"]

_PEOPLE = ["Alda Verin", "Bo Castell", "Cira Lund", "Dovan Pell", "Esko Marr", "Fia Tolde", "Garo Wend",
           "Hanne Ost", "Ivo Rask", "Jora Fenn", "Kell Amsel", "Lio Brandt"]  # fmt: skip
_PLACES = ["Marrowby", "Eastfold", "Tolvenhal", "Quarrick", "Sallow Bay", "Nordhem", "Pellin Cross",
           "Wyrmouth", "Ashgrove", "Bracken Vale"]  # fmt: skip
_BODIES = ["council", "port authority", "school board", "water guild", "rail office", "farmers union",
           "city court", "health board"]  # fmt: skip
# (past tense, headline present tense)
_ACTIONS = [("approved", "approves"), ("rejected", "rejects"), ("delayed", "delays"), ("funded", "funds"),
            ("announced", "announces"), ("cancelled", "cancels"), ("expanded", "expands"),
            ("reviewed", "reviews")]  # fmt: skip
# (long form in the document, short form in the headline)
_OBJECTS = [("a plan for a new bridge", "bridge plan"), ("the repair of the old mill", "mill repair"),
            ("a second ferry line", "ferry line"), ("the winter market", "winter market"),
            ("a larger public library", "library"), ("new rules for fishing boats", "fishing rules"),
            ("the school lunch program", "lunch program"), ("a road to the northern farms", "farm road"),
            ("higher fees for parking", "parking fees"), ("a night bus service", "night bus")]  # fmt: skip
_DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
_FILLERS = [
    "Officials said the decision followed {n} months of debate.",
    "Residents of {place} had asked for the change since last spring.",
    "{person} told reporters that the work would cost {n} thousand crowns.",
    "A vote on the budget is expected in {n} weeks.",
    "Some shop owners in {place} said they were worried about the cost.",
    "The {body} will publish a full report next month.",
    "{person} said the {body} would hold a public meeting on {day}.",
    "Local papers had reported on the plan for {n} weeks.",
    "Critics said the money could be spent on schools instead.",
    "The weather in {place} was cold and wet for most of the week.",
]


def _news(rng: random.Random) -> tuple[str, str]:
    person, place, body, day = rng.choice(_PEOPLE), rng.choice(_PLACES), rng.choice(_BODIES), rng.choice(_DAYS)
    (past, present), (long_obj, short_obj) = rng.choice(_ACTIONS), rng.choice(_OBJECTS)
    lead = f"The {body} of {place} {past} {long_obj} on {day}, {person} said."
    fillers = rng.sample(_FILLERS, rng.randint(2, 5))
    rest = [
        f.format(n=rng.randint(2, 12), place=place, person=rng.choice(_PEOPLE), body=body, day=rng.choice(_DAYS))
        for f in fillers
    ]
    headline = f"{place} {body} {present} {short_obj}"
    return " ".join([lead, *rest]), headline


def summarization_corpus(num_examples: int, seed: int = 0) -> list[dict[str, str]]:
    """``num_examples`` rows ``{"document": ..., "summary": ...}``, the same for the same seed."""
    rng = random.Random(seed)
    return [dict(zip(("document", "summary"), _news(rng), strict=True)) for _ in range(num_examples)]


def language_modeling_corpus(num_examples: int, seed: int = 0) -> list[dict[str, str]]:
    """``num_examples`` rows ``{"text": ...}``, each a paragraph of two news items."""
    rng = random.Random(seed)
    return [{"text": f"{_news(rng)[0]} {_news(rng)[0]}"} for _ in range(num_examples)]


# Toy translation: English words and their invented source-language words; nouns carry a gender that
# picks the article ("der"/"die"/"das"), adjectives take "-e" after an article, as in German.
_NOUNS = {"farmer": ("bauer", "der"), "teacher": ("lehrin", "die"), "child": ("kindo", "das"),
          "dog": ("hund", "der"), "boat": ("bota", "das"), "river": ("flusse", "der"),
          "house": ("hausa", "das"), "door": ("tura", "die"), "letter": ("briefo", "der"),
          "garden": ("gartel", "der"), "window": ("fenstra", "das"), "city": ("stada", "die"),
          "bread": ("brota", "das"), "song": ("liedo", "das"), "mountain": ("bergo", "der"),
          "market": ("markta", "der")}  # fmt: skip
_ADJECTIVES = {"old": "alt", "young": "jung", "small": "klein", "large": "grot", "red": "rot", "quiet": "stil",
               "new": "nau", "cold": "kald"}  # fmt: skip
_VERBS = {"sees": "sieht", "paints": "malt", "finds": "findet", "carries": "tragt", "opens": "offnet",
          "builds": "baut", "sells": "verkauft", "visits": "besucht", "hears": "hort", "likes": "magt"}  # fmt: skip
_ADVERBS = {"today": "heute", "again": "wieder", "slowly": "langsam", "often": "oft", "at night": "nachts"}
_CONNECTIVE = ("because", "weil")


def _noun_phrase(rng: random.Random) -> tuple[str, str]:
    noun = rng.choice(sorted(_NOUNS))
    word, article = _NOUNS[noun]
    if rng.random() < 0.5:
        adjective = rng.choice(sorted(_ADJECTIVES))
        return f"the {adjective} {noun}", f"{article} {_ADJECTIVES[adjective]}e {word}"
    return f"the {noun}", f"{article} {word}"


def _clause(rng: random.Random, verb_final: bool) -> tuple[str, str]:
    subject_en, subject_src = _noun_phrase(rng)
    object_en, object_src = _noun_phrase(rng)
    verb = rng.choice(sorted(_VERBS))
    adverb = rng.choice(sorted(_ADVERBS)) if rng.random() < 0.5 else None
    english = f"{subject_en} {verb} {object_en}" + (f" {adverb}" if adverb else "")
    adverb_src = f" {_ADVERBS[adverb]}" if adverb else ""
    if verb_final:
        source = f"{subject_src}{adverb_src} {object_src} {_VERBS[verb]}"
    else:
        source = f"{subject_src} {_VERBS[verb]}{adverb_src} {object_src}"
    return english, source


def translation_corpus(num_examples: int, seed: int = 0) -> list[dict[str, dict[str, str]]]:
    """``num_examples`` rows in the Hub translation format ``{"translation": {"de": ..., "en": ...}}``."""
    rng = random.Random(seed)
    rows = []
    for _ in range(num_examples):
        english, source = _clause(rng, verb_final=False)
        if rng.random() < 0.4:  # a subordinate clause: verb-final in the source language
            sub_en, sub_src = _clause(rng, verb_final=True)
            english, source = f"{english} {_CONNECTIVE[0]} {sub_en}", f"{source} , {_CONNECTIVE[1]} {sub_src}"
        rows.append({"translation": {"de": f"{source[0].upper()}{source[1:]} .", "en": f"{english.capitalize()}."}})
    return rows
