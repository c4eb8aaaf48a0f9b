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
* :func:`classification_corpus` — news-like reports labelled with their topic (transport, schools, trade,
  farming): the topic follows from what the report is about, never from a fixed word position, and a report may
  mention a second topic in passing, so a model must read it. One report in five is about something that belongs
  to two topics (a fish hall: trade or farming); a later sentence names the topic in most of those, not in all,
  so even a perfect reader errs on about one report in twenty-five (the corpus has an irreducible error, and
  a model's confidence can be judged against it).
"""

from __future__ import annotations

import random

__all__ = ["CLASSIFICATION_TOPICS", "classification_corpus", "language_modeling_corpus", "summarization_corpus",
           "translation_corpus"]  # fmt: skip

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


# Topic → things a report on that topic is about (long form, as the lead sentence says it).
CLASSIFICATION_TOPICS: dict[str, list[str]] = {
    "transport": ["a plan for a new bridge", "a second ferry line", "a night bus service", "repairs to the rail line",
                  "a wider harbour road"],
    "schools": ["the school lunch program", "a larger public library", "evening classes for adults",
                "a new roof for the village school", "more teachers for the first grades"],
    "trade": ["the winter market", "higher fees for parking", "longer opening hours for shops",
              "a tax on imported cloth", "a new hall for the fish traders"],
    "farming": ["a road to the northern farms", "new rules for fishing boats", "a grain store by the river",
                "help for farms after the flood", "a fence against the wild boar"],
}  # fmt: skip
# Things that belong to two topics: the label is one of them, and a cue sentence names it (or does not).
_SHARED_THINGS = [("a new hall for the fish market", ("farming", "trade")),
                  ("a bus line to the school", ("schools", "transport")),
                  ("a cart road to the grain market", ("farming", "trade")),
                  ("a ferry for pupils of the islands", ("schools", "transport")),
                  ("a toll on the market bridge", ("trade", "transport")),
                  ("a farm school for the young", ("farming", "schools"))]  # fmt: skip
_TOPIC_CUES = {
    "transport": "The {body} said the main worry was getting people from place to place.",
    "schools": "The {body} said the main worry was the children and their lessons.",
    "trade": "The {body} said the main worry was what sellers and buyers pay.",
    "farming": "The {body} said the main worry was the crops and the boats.",
}
_SHARED_FRACTION, _CUE_RATE = 0.2, 0.6
_TOPIC_AFTERTHOUGHTS = {
    "transport": "Traffic on the coast road was slow all week.",
    "schools": "Pupils in {place} will sit their exams next month.",
    "trade": "Prices at the harbour stalls rose again in spring.",
    "farming": "The harvest in the valley was late this year.",
}


def _report(rng: random.Random) -> tuple[str, str]:
    cue = None
    if rng.random() < _SHARED_FRACTION:
        thing, topics = rng.choice(_SHARED_THINGS)
        topic = rng.choice(topics)
        cue = _TOPIC_CUES[topic] if rng.random() < _CUE_RATE else None
    else:
        topic = rng.choice(sorted(CLASSIFICATION_TOPICS))
        thing = rng.choice(CLASSIFICATION_TOPICS[topic])
    person, place, body, day = rng.choice(_PEOPLE), rng.choice(_PLACES), rng.choice(_BODIES), rng.choice(_DAYS)
    past, _ = rng.choice(_ACTIONS)
    sentences = [f"The {body} of {place} {past} {thing} on {day}, {person} said."]
    fillers = rng.sample(_FILLERS, rng.randint(1, 3))
    sentences += [f.format(n=rng.randint(2, 12), place=place, person=rng.choice(_PEOPLE), body=body,
                           day=rng.choice(_DAYS)) for f in fillers]  # fmt: skip
    if cue is not None:
        sentences.insert(rng.randint(1, len(sentences)), cue.format(body=body))
    if rng.random() < 0.3:  # another topic in passing, before or after the main one
        other = rng.choice([t for t in sorted(_TOPIC_AFTERTHOUGHTS) if t != topic])
        sentences.insert(rng.choice([0, len(sentences)]), _TOPIC_AFTERTHOUGHTS[other].format(place=place))
    return " ".join(sentences), topic


def classification_corpus(num_examples: int, seed: int = 0) -> list[dict[str, str]]:
    """``num_examples`` rows ``{"sentence": report, "label": topic}`` (4 topics, string labels), the same for the
    same seed."""
    rng = random.Random(seed)
    return [dict(zip(("sentence", "label"), _report(rng), strict=True)) for _ in range(num_examples)]
