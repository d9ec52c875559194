"""Sentiment classification: sentences labelled positive, negative or neutral.

Built from templates and word lists: a positive or negative sentence names a thing and says how it
was (an adjective with that polarity, or a phrase); a neutral one is a plain fact (a time, a price,
a count). Every combination is enumerated, then each label is cut to the same size, so the pool
(1500 sentences) is balanced and fixed; train and held-out split it by question hash.
"""

from __future__ import annotations

import hashlib
from itertools import product

from lmdistill.tasks.base import Example, Task

LABELS = ("positive", "negative", "neutral")

THINGS = (
    "movie", "meal", "hotel", "concert", "book", "service", "trip", "game", "phone", "show",
    "restaurant", "coffee", "class", "weekend", "party", "laptop", "album", "museum", "flight",
    "pizza",
)  # fmt: skip
GOOD = (
    "wonderful", "great", "excellent", "amazing", "delightful", "fantastic", "lovely", "brilliant",
    "superb", "enjoyable",
)  # fmt: skip
BAD = (
    "terrible", "awful", "boring", "disappointing", "horrible", "dreadful", "poor", "annoying",
    "miserable", "useless",
)  # fmt: skip

POLAR_TEMPLATES = {
    "positive": (
        "I loved the {thing}, it was {adj}.",
        "The {thing} was {adj}.",
        "What a {adj} {thing}!",
        "The {thing} was really {adj} and I would go back anytime.",
        "I am so happy with the {thing}, it was {adj}.",
    ),
    "negative": (
        "I hated the {thing}, it was {adj}.",
        "The {thing} was {adj}.",
        "What a {adj} {thing}!",
        "The {thing} was really {adj} and I want my money back.",
        "I am so unhappy with the {thing}, it was {adj}.",
    ),
}

PLACES = ("library", "bank", "museum", "post office", "bakery", "pharmacy", "gym", "school", "market", "zoo")
TIMES = ("seven", "eight", "nine", "ten", "eleven", "noon", "one", "two", "three", "four", "five", "six")
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
ITEMS = ("book", "phone", "laptop", "pizza", "album", "ticket", "chair", "lamp", "package", "bike")
COUNTS = ("two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "twelve", "twenty")
NEUTRAL = (
    ("The {place} opens at {time} o'clock.", {"place": PLACES, "time": TIMES}),
    ("The {place} is closed on {day}.", {"place": PLACES, "day": DAYS}),
    ("The {thing} costs {count} dollars.", {"thing": ITEMS, "count": COUNTS}),
    ("The meeting about the {thing} is on {day}.", {"thing": ITEMS, "day": DAYS}),
    ("The {place} is {count} kilometres from the station.", {"place": PLACES, "count": COUNTS}),
    ("The {thing} was delivered on {day}.", {"thing": ITEMS, "day": DAYS}),
)

PER_LABEL = 500  # sentences kept per label: fewer than each label yields, so labels balance


def _fill(template: str, slots: dict[str, tuple[str, ...]]) -> list[str]:
    keys = list(slots)
    return [template.format(**dict(zip(keys, values, strict=True))) for values in product(*slots.values())]


def _stable_order(sentences: list[str]) -> list[str]:
    return sorted(set(sentences), key=lambda s: hashlib.sha256(f"order|{s}".encode()).digest())


def sentences(label: str) -> list[str]:
    """Every sentence of one label, in a fixed pseudo-random order, at most PER_LABEL of them."""
    if label == "neutral":
        out = [s for template, slots in NEUTRAL for s in _fill(template, slots)]
    else:
        adjs = GOOD if label == "positive" else BAD
        out = [s for t in POLAR_TEMPLATES[label] for s in _fill(t, {"thing": THINGS, "adj": adjs})]
    return _stable_order(out)[:PER_LABEL]


def pool() -> tuple[Example, ...]:
    """The whole labelled pool, labels interleaved."""
    rows = [
        Example(question=s, answer=label, meta={"label": label}) for label in LABELS for s in sentences(label)
    ]
    return tuple(rows)


INSTRUCTION = (
    "Classify the sentiment of the sentence as positive, negative or neutral. "
    "Reply with one word: positive, negative or neutral."
)


def sentiment_task() -> Task:
    """Three-way sentiment; the checker reads the label word from the output."""
    return Task(
        name="sentiment",
        instruction=INSTRUCTION,
        check_kind="label",
        choices=LABELS,
        pool=pool(),
        # question first: SmolLM2-135M follows the label instruction more often when it comes last
        prompt_template="{question}\n\n{instruction}",
        description="sentences labelled positive / negative / neutral (templates + word lists)",
    )
