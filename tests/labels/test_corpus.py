"""The built-in corpus: coverage, determinism, disjoint splits and computed answers."""

import random
from collections import Counter

from airrep.labels.corpus import FAMILIES, fingerprint, generate_split_records, write_corpus
from configuration_airrep import format_text


def test_families_cover_enough_tasks_and_categories():
    assert len(FAMILIES) >= 30
    assert len({f.name for f in FAMILIES}) == len(FAMILIES)
    categories = Counter(f.category for f in FAMILIES)
    assert len(categories) >= 6 and min(categories.values()) >= 3
    assert all(len(f.templates) >= 3 and len(set(f.templates)) == len(f.templates) for f in FAMILIES)


def test_every_template_renders_with_its_fields():
    rng = random.Random(0)
    for family in FAMILIES:
        for _ in range(5):
            fields, answer = family.sample(rng)
            assert answer.strip()
            for template in family.templates:
                assert "{" not in template.format(**fields), family.name


def test_answers_are_computed():
    by_name = {f.name: f for f in FAMILIES}
    rng = random.Random(1)
    for _ in range(20):
        fields, answer = by_name["add"].sample(rng)
        assert int(answer) == fields["a"] + fields["b"]
        fields, answer = by_name["reverse_word"].sample(rng)
        assert answer == fields["w"][::-1]
        fields, answer = by_name["eval_expression"].sample(rng)
        assert answer == str(eval(fields["e"]))


def test_splits_are_deterministic_unique_and_disjoint():
    sizes = {"pretrain": 300, "train": 200, "test": 50}
    a, b = generate_split_records(sizes, seed=3), generate_split_records(sizes, seed=3)
    assert fingerprint(a) == fingerprint(b) != fingerprint(generate_split_records(sizes, seed=4))
    assert {split: len(rows) for split, rows in a.items()} == sizes
    texts = [format_text(r) for rows in a.values() for r in rows]
    assert len(texts) == len(set(texts))
    assert all({"id", "inputs", "targets", "task", "category"} <= r.keys() for rows in a.values() for r in rows)
    assert len({r["task"] for r in a["train"]}) >= 25


def test_written_folder_loads_with_datasets(tmp_path):
    from datasets import load_dataset

    summary = write_corpus(tmp_path, {"pretrain": 20, "train": 30, "test": 10}, seed=0)
    data = load_dataset(str(tmp_path))
    assert {split: data[split].num_rows for split in data} == {"pretrain": 20, "train": 30, "test": 10}
    assert summary["fingerprint"] in (tmp_path / "README.md").read_text()
