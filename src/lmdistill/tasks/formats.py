"""Format-following tasks: answer in one word, or answer as a JSON object with given keys.

The score of a format task is whether the output has the format (`Task.check`); whether its content
is right is recorded apart (`Task.grade(...)["correct"]`). Questions come from the word lists in
`lmdistill.tasks.wordlists`.
"""

from __future__ import annotations

import json

from lmdistill.tasks import wordlists as w
from lmdistill.tasks.base import Example, Task


def _one_word_pool() -> tuple[Example, ...]:
    rows: list[tuple[str, str, tuple[str, ...]]] = []
    rows += [(f"What colour is {thing}?", colour, ()) for thing, colour in w.COLOURS]
    rows += [
        (f"What is the capital of {country}?", capital, ()) for country, capital, _ in w.ONE_WORD_CAPITALS
    ]
    rows += [(f"Which animal says '{sound}'?", animal, alias) for sound, animal, alias in w.ANIMAL_SOUNDS]
    rows += [(f"How many legs does {animal} have?", words, (str(n),)) for animal, n, words in w.LEGS]
    rows += [(f"What is the opposite of '{word}'?", opp, alias) for word, opp, alias in w.OPPOSITES]
    rows += [(f"What is the plural of '{word}'?", plural, alias) for word, plural, alias in w.PLURALS]
    for seq, kind in ((w.DAYS, "day"), (w.MONTHS, "month")):
        rows += [
            (f"Which {kind} comes after {a}?", b, ()) for a, b in zip(seq, seq[1:] + seq[:1], strict=True)
        ]
    return tuple(
        Example(question=q, answer=a, meta={"aliases": list(alias)}) for q, a, alias in dict.fromkeys(rows)
    )


def _keys_phrase(keys: tuple[str, ...]) -> str:
    quoted = [f'"{k}"' for k in keys]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " and " + quoted[-1]


def _json_example(subject: str, keys: tuple[str, ...], values: dict, reference: dict) -> Example:
    question = f"Describe {subject} as a JSON object with the keys {_keys_phrase(keys)}."
    return Example(
        question=question,
        answer=json.dumps(reference, ensure_ascii=False),
        meta={"keys": list(keys), "values": values},
    )


def _json_pool() -> tuple[Example, ...]:
    rows: list[Example] = []
    for name, legs, sound in w.ANIMALS:
        facts = {"name": name, "legs": legs, "sound": sound}
        for keys in (("name", "legs"), ("name", "legs", "sound")):
            if all(facts[k] is not None for k in keys):
                ref = {k: facts[k] for k in keys}
                rows.append(_json_example(f"the animal '{name}'", keys, ref, ref))
    for country, capital, continent in w.CAPITALS:
        facts = {"country": country, "capital": capital, "continent": continent}
        for keys in (("country", "capital"), ("country", "capital", "continent")):
            ref = {k: facts[k] for k in keys}
            rows.append(_json_example(f"the country '{country}'", keys, ref, ref))
    for fruit, colour in w.FRUITS:
        ref = {"name": fruit, "colour": colour}
        rows.append(_json_example(f"the fruit '{fruit}'", ("name", "colour"), ref, ref))
    for i, (name, city) in enumerate(w.PEOPLE):
        # Only the name is given; age and city are free, so they are not compared (None).
        age = 20 + (7 * i) % 50
        for keys in (("name", "age"), ("name", "age", "city")):
            ref = {"name": name, "age": age, "city": city}
            ref = {k: ref[k] for k in keys}
            values = {k: (name if k == "name" else None) for k in keys}
            rows.append(_json_example(f"a fictional person named {name}", keys, values, ref))
    return tuple(rows)


def one_word_task() -> Task:
    """Short factual questions answered in one word; the check is the one-word format."""
    return Task(
        name="format_one_word",
        instruction="Answer in one word.",
        check_kind="one_word",
        pool=_one_word_pool(),
        prompt_template="{question} {instruction}",
        description="factual questions to answer in exactly one word (format check; gold word recorded)",
    )


def json_task() -> Task:
    """Describe a thing as a JSON object with given keys; the check is the parsed key set."""
    return Task(
        name="format_json",
        instruction="Reply with the JSON object only.",
        check_kind="json",
        pool=_json_pool(),
        prompt_template="{question} {instruction}",
        description="describe a thing as a JSON object with exactly the given keys (gold values where known)",
    )
