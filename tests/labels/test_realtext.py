"""The real-text corpus: its parsers on hand-made files, and the corpus built from the installed Debian packages.

`.ci/run` installs the packages (airrep.labels.realtext.apt_install_line); the parser tests need none.
"""

import gzip
import json
import statistics
from pathlib import Path

import pytest

from airrep.cli import UsageError
from airrep.labels import realtext
from airrep.labels.realtext import (
    FAMILIES,
    SOURCES,
    check_sources,
    clip_words,
    generate_split_records,
    man_page,
    read_dictd,
    roff_text,
    write_realtext_corpus,
)

INSTALLED = all((Path("/") / p).exists() for s in SOURCES.values() for p in s.paths)
needs_packages = pytest.mark.skipif(not INSTALLED, reason=f"Debian packages missing: {realtext.apt_install_line()}")
SIZES = {"pretrain": 150, "train": 300, "test": 100}


def b64(n: int) -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    digits = ""
    while True:
        digits = alphabet[n % 64] + digits
        n //= 64
        if n == 0:
            return digits


def write_dictd(root: Path, name: str, entries: list[tuple[list[str], str]]) -> None:
    """A dictd database: gzip data plus an index of base64 offsets, several headwords per entry allowed."""
    folder = root / realtext.DICTD
    folder.mkdir(parents=True, exist_ok=True)
    data, lines = b"", ["00databaseinfo\tA\tB"]
    for headwords, text in entries:
        raw = text.encode()
        lines += [f"{h}\t{b64(len(data))}\t{b64(len(raw))}" for h in headwords]
        data += raw
    (folder / f"{name}.dict.dz").write_bytes(gzip.compress(data))
    (folder / f"{name}.index").write_text("\n".join(lines) + "\n")


def test_read_dictd_finds_each_definition_once_by_its_offsets(tmp_path):
    entries = [(["alpha", "first"], "alpha\n\n   The first letter.\n"), (["beta"], "beta\n\n   The second.\n")]
    write_dictd(tmp_path, "foldoc", entries)
    assert list(read_dictd(tmp_path, "foldoc")) == [("alpha", entries[0][1]), ("beta", entries[1][1])]


def test_foldoc_definitions_lose_tags_links_dates_and_redirections(tmp_path):
    write_dictd(
        tmp_path,
        "foldoc",
        [
            (["bang"], "bang\n\n   <character> The {character} \"!\" as used in {Unix\n   shells}, see the {wiki\n"
                       "   (https://example.org/x)} for its other uses in programs.\n\n   (1995-03-28)\n"),
            (["banged"], "banged\n\n   See {bang}.\n"),
        ],
    )  # fmt: skip
    [entry] = realtext.foldoc_entries(tmp_path)
    assert entry.fields == {"term": "bang"}
    assert entry.response == 'The character "!" as used in Unix shells, see the wiki for its other uses in programs.'


def test_roff_text_and_a_man_page_become_prose(tmp_path):
    assert roff_text(r"\fBread\fP() \- a \[aq]file\[aq] \(em done\&") == "read() - a 'file' \u2014 done"
    page = tmp_path / "read.2.gz"
    page.write_bytes(
        gzip.compress(b"""'\\" comment
.TH read 2 2022-12-04 "Linux man-pages 6.03"
.SH NAME
read \\- read from a file descriptor
.SH SYNOPSIS
.nf
.B ssize_t read(int fd);
.fi
.SH DESCRIPTION
.BR read ()
attempts to read up to
.I count
bytes.
.PP
On files that support seeking, the offset moves.
.EX
code();
.EE
.SH ERRORS
EBADF
""")
    )
    title, summary, description = man_page(page)
    assert (title, summary) == ("read", "read from a file descriptor")
    assert description == "read() attempts to read up to count bytes. On files that support seeking, the offset moves."
    alias = tmp_path / "pread.2.gz"
    alias.write_bytes(gzip.compress(b".so man2/read.2\n"))
    assert man_page(alias) is None


def test_clip_words_ends_at_a_sentence_within_the_limit():
    text = "One two three. Four five six seven. Eight nine ten eleven twelve."
    assert clip_words(text, 8) == "One two three. Four five six seven."
    assert clip_words(text, 5) == "One two three."
    assert clip_words(text, 100) == text
    assert clip_words("a b c d e f", 3) == "a b c"  # no sentence end: cut at the word


def test_near_duplicate_responses_and_reused_entries_are_drawn_once():
    """FOLDOC repeats Jargon File entries, and two families read one source's entries: neither may give
    a second record (which could land in another split)."""
    Entry = realtext.Entry
    shared = "A hacker's term for a program that works by accident, and nobody knows why it does."
    entries = {f.name: [] for f in FAMILIES}
    entries["explain_computing_term"] = [Entry("kludge", {"term": "kludge"}, shared)]
    entries["explain_hacker_slang"] = [Entry("kludge", {"term": "kludge"}, shared.upper() + " Also a verb.")]
    entries["describe_element"] = [Entry("gold", {"element": "gold"}, "A soft yellow metal used in coins.")]
    entries["element_facts"] = [Entry("gold", {"element": "gold", "symbol": "Au", "atomic_number": "79",
                                               "atomic_weight": "196.97"}, "Gold has the symbol Au.")]  # fmt: skip
    records = generate_split_records({"train": 2}, seed=0, entries=entries)["train"]
    assert sorted(r["source"] for r in records) in (["elements", "foldoc"], ["elements", "jargon"])
    with pytest.raises(UsageError, match="too few distinct entries"):
        generate_split_records({"train": 3}, seed=0, entries=entries)


def test_missing_packages_name_the_apt_get_line(tmp_path):
    with pytest.raises(UsageError) as error:
        check_sources(tmp_path)
    message = str(error.value)
    assert "\n" not in message and "apt-get install -y" in message
    assert "dict-foldoc" in message and "manpages-dev" in message and "fortunes" in message


def test_families_and_sources_meet_the_corpus_contract():
    assert len(FAMILIES) >= 15 and len({f.name for f in FAMILIES}) == len(FAMILIES)
    assert len({f.source for f in FAMILIES}) >= 6
    assert all(len(set(f.templates)) >= 2 for f in FAMILIES)
    assert {f.source for f in FAMILIES} <= set(SOURCES)
    names = " ".join([*SOURCES, *(s.package or "" for s in SOURCES.values())])
    assert "wordnet" not in names and "gcide" not in names


@pytest.fixture(scope="module")
def entries():
    return realtext.load_entries(Path("/"))


@needs_packages
def test_the_installed_sources_give_every_family_entries_that_fill_its_templates(entries):
    for family in FAMILIES:
        assert len(entries[family.name]) >= 30, family.name
        for entry in entries[family.name][:50]:
            assert entry.response.strip() and len(entry.response.split()) <= realtext.MAX_RESPONSE_WORDS
            for template in family.templates:
                assert "{" not in template.format(**entry.fields), family.name


@needs_packages
def test_the_corpus_is_real_prose_deterministic_and_disjoint(entries):
    records = generate_split_records(SIZES, seed=7, entries=entries)
    assert {k: len(v) for k, v in records.items()} == SIZES
    rows = [r for split in records.values() for r in split]
    assert all({"id", "inputs", "targets", "task", "category", "source", "template"} <= set(r) for r in rows)
    assert len({r["source"] for r in rows}) >= 6 and len({r["task"] for r in rows}) >= 15
    assert statistics.median(len(r["targets"].split()) for r in rows) >= 25
    pool = [r["targets"] for r in records["train"]]
    assert max(pool.count(t) for t in pool) / len(pool) <= 0.01
    for a in records:
        for b in records:
            if a < b:
                assert not {r["inputs"] for r in records[a]} & {r["inputs"] for r in records[b]}
                assert not {r["targets"] for r in records[a]} & {r["targets"] for r in records[b]}
    assert generate_split_records(SIZES, seed=7, entries=entries) == records
    assert generate_split_records(SIZES, seed=8, entries=entries) != records


@needs_packages
def test_the_card_records_sources_versions_licenses_and_statistics(tmp_path):
    summary = write_realtext_corpus(tmp_path, {"train": 120, "test": 30}, seed=3)
    saved = json.loads((tmp_path / "corpus.json").read_text())
    assert saved == summary and summary["sizes"] == {"test": 30, "train": 120}
    assert summary["sources"]["foldoc"]["version"] not in ("", "unknown")
    assert summary["sources"]["python"]["license"] == "PSF-2.0"
    assert sum(summary["records_per_source"].values()) == 150
    card = (tmp_path / "README.md").read_text()
    assert "| foldoc | dict-foldoc |" in card and f"Median response: {summary['median_response_words']} words" in card
    from datasets import load_dataset

    assert load_dataset(str(tmp_path))["train"].num_rows == 120


def test_ci_installs_every_package_the_corpus_reads():
    ci = (Path(__file__).parents[2] / ".ci" / "run").read_text()
    [listed] = [line for line in ci.splitlines() if line.startswith("PACKAGES=")]
    packages = set(listed.split("=", 1)[1].strip('"').split())
    assert set(realtext.apt_install_line().split("install -y ")[1].split()) <= packages
