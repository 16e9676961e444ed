"""A small built-in set of training records and queries for the demo, in every record schema.

The real built-in corpus (many task families, splits, sizes set by presets) is built by
``generate_labels.py``; this set only lets the demo show attribution without any download.
"""

from __future__ import annotations

from typing import Any

_CAPITALS = {"France": "Paris", "Japan": "Tokyo", "Kenya": "Nairobi", "Peru": "Lima"}
_PLURALS = {"mouse": "mice", "child": "children", "goose": "geese", "cactus": "cacti"}


def training_records() -> list[dict[str, Any]]:
    """24 records from 6 tasks; each record carries its ``task``."""
    records: list[dict[str, Any]] = []
    for a, b in [(12, 30), (7, 8), (101, 45), (66, 34)]:
        records.append(
            {"instruction": "Add the two numbers.", "input": f"{a} {b}", "output": str(a + b), "task": "add"}
        )
    for word in ["stone", "planet", "garden", "yellow"]:
        records.append({"inputs": f"Reverse the letters of '{word}'.", "targets": word[::-1], "task": "reverse"})
    for country, capital in _CAPITALS.items():
        records.append({"prompt": f"What is the capital of {country}?", "response": capital, "task": "capital"})
    for singular, plural in _PLURALS.items():
        records.append({"prompt": f"Give the plural of '{singular}'.", "completion": plural, "task": "plural"})
    for celsius in [0, 25, 100, -40]:
        records.append(
            {
                "messages": [
                    {"role": "system", "content": "Convert temperatures."},
                    {"role": "user", "content": f"{celsius} degrees Celsius in Fahrenheit?"},
                    {"role": "assistant", "content": f"{celsius * 9 / 5 + 32:g} F"},
                ],
                "task": "temperature",
            }
        )
    for sentence, label in [
        ("I loved every minute of this film.", "positive"),
        ("The service was slow and rude.", "negative"),
        ("What a delightful little cafe!", "positive"),
        ("The battery died after an hour.", "negative"),
    ]:
        records.append({"text": f"Review: {sentence} Sentiment: {label}", "task": "sentiment"})
    return records


def queries() -> list[dict[str, Any]]:
    """Test examples whose behaviour the demo explains."""
    return [
        {"prompt": "Add the two numbers. 250 17", "response": "267", "task": "add"},
        {"prompt": "What is the capital of Chile?", "response": "Santiago", "task": "capital"},
        {"prompt": "Reverse the letters of 'window'.", "response": "wodniw", "task": "reverse"},
    ]
