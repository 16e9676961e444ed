"""The built-in corpus: a seeded, FLAN-like mixture of instruction tasks whose answers are computed.

Each task family has a generator of (fields, answer) and at least three paraphrased templates.
Records use the FLAN schema (``inputs``/``targets``) plus ``id``, ``task``, ``category`` and
``template``. Splits: ``pretrain`` (warm-starts the target LM), ``train`` (the attribution pool) and
``test`` (held-out queries); no text appears in two splits.
"""

from __future__ import annotations

import calendar
import datetime as dt
import hashlib
import inspect
import json
import random
import string
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from airrep.outputs import configs_yaml, write_json, write_parquet, write_text

CORPUS_NAME = "airrep-synthetic-flan"
SPLITS = ("pretrain", "train", "test")

Fields = dict[str, Any]


@dataclass(frozen=True)
class TaskFamily:
    name: str
    category: str
    templates: tuple[str, ...]
    sample: Callable[[random.Random], tuple[Fields, str]]


# ----------------------------------------------------------------------------- word lists and tables

ANIMALS = ["cat", "dog", "horse", "tiger", "eagle", "shark", "rabbit", "wolf", "otter", "camel", "zebra", "owl"]
FRUITS = ["apple", "banana", "cherry", "mango", "pear", "plum", "lemon", "grape", "peach", "kiwi", "melon", "fig"]
TOOLS = ["hammer", "wrench", "saw", "drill", "chisel", "pliers", "shovel", "rake", "axe", "file", "level", "clamp"]
COLOURS = ["red", "blue", "green", "yellow", "purple", "orange", "black", "white", "brown", "pink", "grey", "teal"]
WORD_CLASSES = {"animal": ANIMALS, "fruit": FRUITS, "tool": TOOLS, "colour": COLOURS}
POSITIVE = ["wonderful", "great", "delightful", "excellent", "pleasant", "superb", "lovely", "brilliant"]
NEGATIVE = ["terrible", "awful", "dreadful", "poor", "boring", "horrible", "dull", "disappointing"]
SUBJECTS = ["the film", "the meal", "the hotel", "the concert", "the book", "the service", "the game", "the trip"]
COUNTRIES = {
    "France": ("Paris", "Europe", "euro"),
    "Japan": ("Tokyo", "Asia", "yen"),
    "Kenya": ("Nairobi", "Africa", "shilling"),
    "Peru": ("Lima", "South America", "sol"),
    "Canada": ("Ottawa", "North America", "dollar"),
    "Egypt": ("Cairo", "Africa", "pound"),
    "India": ("New Delhi", "Asia", "rupee"),
    "Norway": ("Oslo", "Europe", "krone"),
    "Chile": ("Santiago", "South America", "peso"),
    "Mexico": ("Mexico City", "North America", "peso"),
    "Vietnam": ("Hanoi", "Asia", "dong"),
    "Poland": ("Warsaw", "Europe", "zloty"),
    "Ghana": ("Accra", "Africa", "cedi"),
    "Australia": ("Canberra", "Oceania", "dollar"),
    "Brazil": ("Brasilia", "South America", "real"),
    "Spain": ("Madrid", "Europe", "euro"),
}
ELEMENTS = {
    "hydrogen": ("H", 1), "helium": ("He", 2), "carbon": ("C", 6), "nitrogen": ("N", 7), "oxygen": ("O", 8),
    "sodium": ("Na", 11), "magnesium": ("Mg", 12), "aluminium": ("Al", 13), "sulfur": ("S", 16),
    "chlorine": ("Cl", 17), "potassium": ("K", 19), "calcium": ("Ca", 20), "iron": ("Fe", 26),
    "copper": ("Cu", 29), "zinc": ("Zn", 30), "silver": ("Ag", 47), "gold": ("Au", 79), "lead": ("Pb", 82),
}  # fmt: skip
PLANETS = ["Mercury", "Venus", "Earth", "Mars", "Jupiter", "Saturn", "Uranus", "Neptune"]
ANTONYMS = {
    "hot": "cold", "tall": "short", "fast": "slow", "early": "late", "happy": "sad", "light": "dark",
    "open": "closed", "full": "empty", "strong": "weak", "rich": "poor", "young": "old", "hard": "soft",
    "wet": "dry", "loud": "quiet", "thick": "thin", "first": "last",
}  # fmt: skip
DOC_MODULES = ["string", "textwrap", "os.path", "json", "random", "statistics", "math", "itertools", "functools"]


def _docstring_table() -> list[tuple[str, str]]:
    """(qualified name, first sentence of its docstring) for public functions of a few stdlib modules."""
    import importlib

    table = []
    for module_name in DOC_MODULES:
        module = importlib.import_module(module_name)
        for name in sorted(dir(module)):
            member = getattr(module, name)
            if name.startswith("_") or not callable(member):
                continue
            doc = inspect.getdoc(member)
            if not doc:
                continue
            first = " ".join(doc.split("\n\n")[0].split())
            first = first.split(". ")[0].rstrip(".")
            if 15 <= len(first) <= 160 and "(" not in first[:1]:
                table.append((f"{module_name}.{name}", first + "."))
    return table


# ----------------------------------------------------------------------------- generators


def _word(rng: random.Random, length: tuple[int, int] = (3, 8)) -> str:
    pool = ANIMALS + FRUITS + TOOLS + COLOURS + list(ANTONYMS)
    word = rng.choice(pool)
    return word if length[0] <= len(word) <= length[1] else _word(rng, length)


def _numbers(rng: random.Random, count: int, low: int = 1, high: int = 99) -> list[int]:
    return [rng.randint(low, high) for _ in range(count)]


def _date(rng: random.Random) -> dt.date:
    return dt.date(2000, 1, 1) + dt.timedelta(days=rng.randint(0, 365 * 30))


def _fmt_list(values: list[Any]) -> str:
    return ", ".join(map(str, values))


def _make_families() -> list[TaskFamily]:
    docs = _docstring_table()
    f: list[TaskFamily] = []

    def add(name: str, category: str, templates: tuple[str, ...]):
        def register(sample: Callable[[random.Random], tuple[Fields, str]]):
            f.append(TaskFamily(name, category, templates, sample))
            return sample

        return register

    # arithmetic
    @add("add", "arithmetic", ("What is {a} plus {b}?", "Add {a} and {b}.", "Compute the sum of {a} and {b}."))
    def _(rng):
        a, b = _numbers(rng, 2, 1, 999)
        return {"a": a, "b": b}, str(a + b)

    @add("subtract", "arithmetic", ("What is {a} minus {b}?", "Subtract {b} from {a}.", "Compute {a} - {b}."))
    def _(rng):
        a, b = sorted(_numbers(rng, 2, 1, 999), reverse=True)
        return {"a": a, "b": b}, str(a - b)

    @add(
        "multiply",
        "arithmetic",
        ("What is {a} times {b}?", "Multiply {a} by {b}.", "Compute the product of {a} and {b}."),
    )
    def _(rng):
        a, b = rng.randint(2, 99), rng.randint(2, 12)
        return {"a": a, "b": b}, str(a * b)

    @add(
        "remainder",
        "arithmetic",
        ("What is the remainder of {a} divided by {b}?", "Compute {a} mod {b}.", "Find {a} modulo {b}."),
    )
    def _(rng):
        a, b = rng.randint(10, 500), rng.randint(2, 13)
        return {"a": a, "b": b}, str(a % b)

    @add(
        "max_of_list",
        "arithmetic",
        ("Which is the largest number: {xs}?", "Find the maximum of {xs}.", "Give the biggest value among {xs}."),
    )
    def _(rng):
        xs = _numbers(rng, rng.randint(3, 6))
        return {"xs": _fmt_list(xs)}, str(max(xs))

    @add(
        "sum_of_list", "arithmetic", ("Add up these numbers: {xs}.", "What is the total of {xs}?", "Sum the list {xs}.")
    )
    def _(rng):
        xs = _numbers(rng, rng.randint(3, 5), 1, 50)
        return {"xs": _fmt_list(xs)}, str(sum(xs))

    @add(
        "parity",
        "arithmetic",
        ("Is {a} even or odd?", "Tell whether {a} is odd or even.", "Parity of {a}: even or odd?"),
    )
    def _(rng):
        a = rng.randint(1, 9999)
        return {"a": a}, "even" if a % 2 == 0 else "odd"

    # string manipulation
    @add(
        "reverse_word",
        "string",
        ("Reverse the letters of '{w}'.", "Write '{w}' backwards.", "What is '{w}' spelled in reverse?"),
    )
    def _(rng):
        w = _word(rng)
        return {"w": w}, w[::-1]

    @add(
        "uppercase",
        "string",
        ("Write '{w}' in capital letters.", "Convert '{w}' to upper case.", "Uppercase the word '{w}'."),
    )
    def _(rng):
        w = _word(rng)
        return {"w": w}, w.upper()

    @add(
        "word_length",
        "string",
        ("How many letters are in '{w}'?", "Count the characters of '{w}'.", "What is the length of the word '{w}'?"),
    )
    def _(rng):
        w = _word(rng, (2, 12))
        return {"w": w}, str(len(w))

    @add(
        "first_letter",
        "string",
        (
            "What is the first letter of '{w}'?",
            "Give the initial letter of '{w}'.",
            "Which letter does '{w}' start with?",
        ),
    )
    def _(rng):
        w = _word(rng)
        return {"w": w}, w[0]

    @add(
        "sort_letters",
        "string",
        (
            "Sort the letters of '{w}' alphabetically.",
            "Arrange the letters in '{w}' in alphabetical order.",
            "Alphabetize the characters of '{w}'.",
        ),
    )
    def _(rng):
        w = _word(rng)
        return {"w": w}, "".join(sorted(w))

    @add(
        "count_vowels",
        "string",
        ("How many vowels does '{w}' have?", "Count the vowels in '{w}'.", "Number of vowels in the word '{w}'?"),
    )
    def _(rng):
        w = _word(rng)
        return {"w": w}, str(sum(c in "aeiou" for c in w))

    @add(
        "join_words",
        "string",
        (
            "Join the words {a} and {b} with a hyphen.",
            "Connect '{a}' and '{b}' using '-'.",
            "Hyphenate {a} and {b} into one token.",
        ),
    )
    def _(rng):
        a, b = _word(rng), _word(rng)
        return {"a": a, "b": b}, f"{a}-{b}"

    # classification from word lists
    @add(
        "word_class",
        "classification",
        (
            "Is '{w}' an animal, a fruit, a tool or a colour?",
            "Classify the word '{w}': animal, fruit, tool or colour.",
            "Which group does '{w}' belong to (animal, fruit, tool, colour)?",
        ),
    )
    def _(rng):
        label = rng.choice(sorted(WORD_CLASSES))
        return {"w": rng.choice(WORD_CLASSES[label])}, label

    @add(
        "sentiment",
        "classification",
        (
            "Review: {s} Is this review positive or negative?",
            "What is the sentiment of '{s}'?",
            "Classify the sentiment (positive/negative): {s}",
        ),
    )
    def _(rng):
        positive = rng.random() < 0.5
        adjective = rng.choice(POSITIVE if positive else NEGATIVE)
        return {"s": f"{rng.choice(SUBJECTS).capitalize()} was {adjective}."}, "positive" if positive else "negative"

    @add(
        "is_fruit",
        "classification",
        (
            "Is '{w}' a fruit? Answer yes or no.",
            "Yes or no: is {w} a kind of fruit?",
            "Answer yes/no. Can '{w}' be called a fruit?",
        ),
    )
    def _(rng):
        label = rng.choice(sorted(WORD_CLASSES))
        return {"w": rng.choice(WORD_CLASSES[label])}, "yes" if label == "fruit" else "no"

    @add(
        "odd_one_out",
        "classification",
        (
            "Which word does not belong: {xs}?",
            "Find the odd one out among {xs}.",
            "One of these is different: {xs}. Which?",
        ),
    )
    def _(rng):
        main, other = rng.sample(sorted(WORD_CLASSES), 2)
        words = rng.sample(WORD_CLASSES[main], 3)
        odd = rng.choice(WORD_CLASSES[other])
        words.insert(rng.randint(0, 3), odd)
        return {"xs": _fmt_list(words)}, odd

    @add(
        "compare_numbers",
        "classification",
        ("Which is larger, {a} or {b}?", "Pick the bigger number: {a} or {b}.", "Of {a} and {b}, which is greater?"),
    )
    def _(rng):
        a, b = rng.sample(range(1, 1000), 2)
        return {"a": a, "b": b}, str(max(a, b))

    # facts from tables
    @add(
        "capital",
        "facts",
        ("What is the capital of {c}?", "Name the capital city of {c}.", "{c}'s capital is which city?"),
    )
    def _(rng):
        c = rng.choice(sorted(COUNTRIES))
        return {"c": c}, COUNTRIES[c][0]

    @add(
        "continent",
        "facts",
        ("On which continent is {c}?", "Name the continent where {c} lies.", "{c} is part of which continent?"),
    )
    def _(rng):
        c = rng.choice(sorted(COUNTRIES))
        return {"c": c}, COUNTRIES[c][1]

    @add(
        "currency",
        "facts",
        ("What is the currency of {c}?", "Name the money used in {c}.", "Which currency does {c} use?"),
    )
    def _(rng):
        c = rng.choice(sorted(COUNTRIES))
        return {"c": c}, COUNTRIES[c][2]

    @add(
        "element_symbol",
        "facts",
        ("What is the chemical symbol of {e}?", "Give the element symbol for {e}.", "Which symbol stands for {e}?"),
    )
    def _(rng):
        e = rng.choice(sorted(ELEMENTS))
        return {"e": e}, ELEMENTS[e][0]

    @add(
        "atomic_number",
        "facts",
        ("What is the atomic number of {e}?", "How many protons does {e} have?", "Give the atomic number for {e}."),
    )
    def _(rng):
        e = rng.choice(sorted(ELEMENTS))
        return {"e": e}, str(ELEMENTS[e][1])

    @add(
        "planet_order",
        "facts",
        (
            "Which planet is number {n} from the Sun?",
            "Name planet {n} counting from the Sun.",
            "Counting outward from the Sun, planet {n} is?",
        ),
    )
    def _(rng):
        n = rng.randint(1, 8)
        return {"n": n}, PLANETS[n - 1]

    # unit and date conversion
    @add(
        "km_to_m",
        "conversion",
        ("How many metres are in {x} km?", "Convert {x} kilometres to metres.", "{x} km equals how many m?"),
    )
    def _(rng):
        x = rng.randint(1, 90)
        return {"x": x}, str(x * 1000)

    @add(
        "hours_to_minutes",
        "conversion",
        ("How many minutes are in {x} hours?", "Convert {x} hours to minutes.", "{x} h is how many minutes?"),
    )
    def _(rng):
        x = rng.randint(1, 48)
        return {"x": x}, str(x * 60)

    @add(
        "celsius_to_fahrenheit",
        "conversion",
        (
            "Convert {x} degrees Celsius to Fahrenheit.",
            "What is {x} C in F?",
            "{x} Celsius equals how many Fahrenheit?",
        ),
    )
    def _(rng):
        x = rng.randrange(-40, 105, 5)
        return {"x": x}, f"{x * 9 / 5 + 32:g}"

    @add(
        "weekday",
        "conversion",
        ("What day of the week was {d}?", "On which weekday did {d} fall?", "Name the weekday of the date {d}."),
    )
    def _(rng):
        d = _date(rng)
        return {"d": d.isoformat()}, calendar.day_name[d.weekday()]

    @add(
        "add_days",
        "conversion",
        ("What date is {n} days after {d}?", "Add {n} days to {d}.", "Which date comes {n} days after {d}?"),
    )
    def _(rng):
        d, n = _date(rng), rng.randint(1, 60)
        return {"d": d.isoformat(), "n": n}, (d + dt.timedelta(days=n)).isoformat()

    @add(
        "month_name",
        "conversion",
        ("Which month is number {n}?", "Name month {n} of the year.", "What is the name of the {n}th month?"),
    )
    def _(rng):
        n = rng.randint(1, 12)
        return {"n": n}, calendar.month_name[n]

    # code
    @add(
        "eval_expression",
        "code",
        (
            "What does the Python expression {e} evaluate to?",
            "Evaluate in Python: {e}",
            "Python prints what for print({e})?",
        ),
    )
    def _(rng):
        a, b, c = _numbers(rng, 3, 1, 20)
        op1, op2 = rng.choice("+-*"), rng.choice("+-*")
        expression = f"{a} {op1} {b} {op2} {c}"
        return {"e": expression}, str(eval(expression))  # digits and + - * only

    @add(
        "list_len",
        "code",
        (
            "What is len([{xs}]) in Python?",
            "How many items does the Python list [{xs}] hold?",
            "Python: len of [{xs}]?",
        ),
    )
    def _(rng):
        xs = _numbers(rng, rng.randint(1, 9))
        return {"xs": _fmt_list(xs)}, str(len(xs))

    @add(
        "sorted_list",
        "code",
        ("What is sorted([{xs}]) in Python?", "Sort the Python list [{xs}].", "Python: result of sorted([{xs}])?"),
    )
    def _(rng):
        xs = _numbers(rng, rng.randint(3, 5))
        return {"xs": _fmt_list(xs)}, "[" + _fmt_list(sorted(xs)) + "]"

    @add(
        "string_slice",
        "code",
        (
            "What is '{w}'[:{n}] in Python?",
            "Python slicing: '{w}'[:{n}] gives?",
            "Take the first {n} characters of '{w}' in Python.",
        ),
    )
    def _(rng):
        w = _word(rng, (4, 8))
        n = rng.randint(1, len(w) - 1)
        return {"w": w, "n": n}, w[:n]

    @add(
        "bool_expr",
        "code",
        (
            "What does {a} > {b} and {c} < {d} evaluate to in Python?",
            "Python: is ({a} > {b} and {c} < {d}) True or False?",
            "Evaluate the condition {a} > {b} and {c} < {d}.",
        ),
    )
    def _(rng):
        a, b, c, d = _numbers(rng, 4)
        return {"a": a, "b": b, "c": c, "d": d}, str(a > b and c < d)

    # definitions
    @add(
        "antonym",
        "definitions",
        (
            "What is the opposite of '{w}'?",
            "Give an antonym of '{w}'.",
            "Name the word that means the reverse of '{w}'.",
        ),
    )
    def _(rng):
        w = rng.choice(sorted(ANTONYMS))
        return {"w": w}, ANTONYMS[w]

    @add(
        "python_doc",
        "definitions",
        (
            "What does the Python function {name} do?",
            "Describe {name} from the standard library.",
            "Explain the purpose of {name}.",
        ),
    )
    def _(rng):
        name, doc = rng.choice(docs)
        return {"name": name}, doc

    @add(
        "letter_position",
        "definitions",
        (
            "What is letter number {n} of the alphabet?",
            "Which letter is in position {n} of the English alphabet?",
            "Name the {n}th letter of the alphabet.",
        ),
    )
    def _(rng):
        n = rng.randint(1, 26)
        return {"n": n}, string.ascii_uppercase[n - 1]

    return f


FAMILIES: list[TaskFamily] = _make_families()


def generate_split_records(sizes: dict[str, int], seed: int) -> dict[str, list[dict[str, Any]]]:
    """Draw unique records for each split, families mixed uniformly, deterministically from ``seed``.

    No ``inputs`` + ``targets`` text appears twice anywhere, so the test split is disjoint from the
    pool and from the warm-start data by construction.
    """
    for split in sizes:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; splits are {SPLITS}")
    rng = random.Random(seed)
    seen: set[tuple[str, str]] = set()
    out: dict[str, list[dict[str, Any]]] = {}
    for split in ("test", "train", "pretrain"):  # held-out first: it must never lose a draw
        records: list[dict[str, Any]] = []
        attempts = 0
        while len(records) < sizes.get(split, 0):
            attempts += 1
            if attempts > 50 * sizes[split] + 1000:
                raise RuntimeError(f"could not draw {sizes[split]} unique {split} records; the families are too small")
            family = FAMILIES[rng.randrange(len(FAMILIES))]
            template_index = rng.randrange(len(family.templates))
            fields, answer = family.sample(rng)
            inputs = family.templates[template_index].format(**fields)
            if (inputs, answer) in seen:
                continue
            seen.add((inputs, answer))
            records.append(
                {
                    "id": f"{split}-{len(records):06d}",
                    "inputs": inputs,
                    "targets": answer,
                    "task": family.name,
                    "category": family.category,
                    "template": template_index,
                }
            )
        out[split] = records
    return out


def fingerprint(records: dict[str, list[dict[str, Any]]]) -> str:
    """A content hash of the corpus, recorded in every dataset card built from it."""
    digest = hashlib.sha256()
    for split in sorted(records):
        for record in records[split]:
            digest.update(json.dumps(record, sort_keys=True, default=str).encode())  # str: dates in a user corpus
    return digest.hexdigest()[:16]


def write_corpus(folder: str | Path, sizes: dict[str, int], seed: int) -> dict[str, Any]:
    """Write the corpus as a Hub dataset folder: ``data/<split>.parquet`` and a card. Returns its summary."""
    records = generate_split_records(sizes, seed)
    summary = {
        **corpus_summary(CORPUS_NAME, seed, records, len(FAMILIES)),
        "categories": sorted({family.category for family in FAMILIES}),
    }
    families = "\n".join(f"| {f.name} | {f.category} | {len(f.templates)} |" for f in FAMILIES)
    card = f"""# {CORPUS_NAME}

A seeded, FLAN-like mixture of {len(FAMILIES)} instruction task families in
{len(summary["categories"])} categories ({", ".join(summary["categories"])}), built offline by AirRep-Hub
(`airrep/labels/corpus.py`). Answers are computed, not sampled. Records use the FLAN schema
(`inputs`, `targets`) with `id`, `task`, `category` and `template` (the paraphrase used).

- Seed: {seed}; fingerprint: `{summary["fingerprint"]}`
- Sizes: {json.dumps(summary["sizes"])}
- Splits: `pretrain` warm-starts the target LM, `train` is the attribution pool, `test` holds
  held-out queries. No text appears in two splits.

| task | category | templates |
|---|---|---|
{families}
"""
    return save_corpus(folder, records, summary, card, tags=["synthetic", "instruction-tuning", "data-attribution"])


def corpus_summary(name: str, seed: int, records: dict[str, list[dict[str, Any]]], families: int) -> dict[str, Any]:
    """The fields every built-in corpus's ``corpus.json`` opens with."""
    return {
        "name": name,
        "seed": seed,
        "sizes": {split: len(rows) for split, rows in records.items()},
        "fingerprint": fingerprint(records),
        "families": families,
    }


def save_corpus(
    folder: str | Path,
    records: dict[str, list[dict[str, Any]]],
    summary: dict[str, Any],
    card: str,
    tags: list[str],
) -> dict[str, Any]:
    """Write a built-in corpus as a Hub dataset folder: ``data/<split>.parquet``, the card (``card`` under
    YAML front matter with the configs and ``tags``) and ``corpus.json`` (``summary``, which is returned)."""
    from datasets import Dataset

    folder = Path(folder)
    paths = {split: write_parquet(Dataset.from_list(rows), folder, split) for split, rows in records.items()}
    front_matter = "\n".join([configs_yaml({"default": paths}), "tags:", *(f"- {tag}" for tag in tags)])
    write_text(folder / "README.md", f"---\n{front_matter}\n---\n\n{card}")
    write_json(folder / "corpus.json", summary)
    return summary
