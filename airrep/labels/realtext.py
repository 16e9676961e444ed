"""The real-text corpus: instruction tasks over human-written text that Debian packages install.

Every response is text a person wrote: FOLDOC and Jargon File entries, Bierce's *Devil's
Dictionary*, the element and acronym dictionaries of ``dictd``, a FreeDict glossary, the Linux
man-pages, the ``fortunes`` collection, the Python standard library's docstrings and help topics,
and the ``bsdgames`` quiz tables. Nothing is downloaded: the sources are files of installed Debian
packages (and of the running Python), so the corpus is built offline and deterministically from a
seed. WordNet and GCIDE are deliberately absent; they are kept as an independent check of the
project.

Records use the same schema as the synthetic corpus (:mod:`airrep.labels.corpus`): ``inputs``,
``targets``, ``id``, ``task``, ``category``, ``template``, plus ``source`` (the Debian package or
``python``). Each source *entry* (a dictionary headword, a man page, a fortune, a docstring) yields
at most one record, so no text is shared between splits; near-duplicate responses (FOLDOC repeats
many Jargon File entries, man pages share paragraphs) are dropped by a normalised-prefix key.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import importlib
import inspect
import json
import random
import re
import subprocess
import sys
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from airrep.cli import UsageError
from airrep.labels.corpus import SPLITS, corpus_summary, save_corpus

CORPUS_NAME = "airrep-realtext"
# Responses are cut at the last sentence end within this many words (at a word if a sentence is longer):
# long enough for real explanations, short enough that a subset model sees a few hundred tokens per example.
MAX_RESPONSE_WORDS = 80
# Words compared when dropping near-duplicate responses.
DEDUP_PREFIX_WORDS = 12


@dataclass(frozen=True)
class Source:
    """A Debian package (or the running Python) whose files hold human-written text."""

    name: str
    package: str | None  # Debian package; None for the Python standard library
    license: str  # as its /usr/share/doc/<package>/copyright states it (read by hand)
    paths: tuple[str, ...]  # files or folders that must exist


@dataclass(frozen=True)
class Entry:
    """One unit of source text. ``key`` is unique within its source; ``fields`` fill a template."""

    key: str
    fields: dict[str, str]
    response: str


@dataclass(frozen=True)
class Family:
    """An instruction task over one source: paraphrased templates and the entries it draws from."""

    name: str
    category: str
    source: str
    templates: tuple[str, ...]
    entries: Callable[[Path], Sequence[Entry]]
    # Relative chance of being drawn. Families whose answers are a few words (an acronym's expansion,
    # a translation) are drawn half as often, so that most of the corpus is explanatory prose.
    weight: float = 1.0


DICTD = "usr/share/dictd"
MAN = "usr/share/man"
FORTUNES = "usr/share/games/fortunes"
QUIZ = "usr/share/games/bsdgames/quiz"

SOURCES: dict[str, Source] = {
    s.name: s
    for s in (
        Source("foldoc", "dict-foldoc", "GFDL-1.1+", (f"{DICTD}/foldoc.index", f"{DICTD}/foldoc.dict.dz")),
        Source("jargon", "dict-jargon", "public-domain", (f"{DICTD}/jargon.index", f"{DICTD}/jargon.dict.dz")),
        Source("devil", "dict-devil", "public-domain", (f"{DICTD}/devil.index", f"{DICTD}/devil.dict.dz")),
        Source("vera", "dict-vera", "GFDL-NIV-1.1+", (f"{DICTD}/vera.index", f"{DICTD}/vera.dict.dz")),
        Source("elements", "dict-elements", "public-domain",
               (f"{DICTD}/elements.index", f"{DICTD}/elements.dict.dz")),
        Source("freedict-eng-fra", "dict-freedict-eng-fra", "GPL-3+",
               (f"{DICTD}/freedict-eng-fra.index", f"{DICTD}/freedict-eng-fra.dict.dz")),
        Source("manpages", "manpages", "GPL-2+ (Linux-man-pages-copyleft pages)", (f"{MAN}/man7/signal.7.gz",)),
        Source("manpages-dev", "manpages-dev", "GPL-2+ (Linux-man-pages-copyleft pages)",
               (f"{MAN}/man2/read.2.gz",)),
        Source("fortunes", "fortunes", "BSD-3-Clause", (f"{FORTUNES}/wisdom",)),
        Source("bsdgames", "bsdgames", "BSD-3-Clause", (f"{QUIZ}/europe",)),
        Source("python", None, "PSF-2.0", ()),
    )
}  # fmt: skip


def apt_install_line(sources: list[str] | None = None) -> str:
    """The ``apt-get install`` line for the Debian packages of ``sources`` (default: all)."""
    names = sources or list(SOURCES)
    packages = sorted({SOURCES[n].package for n in names if SOURCES[n].package})
    return "apt-get update && apt-get install -y " + " ".join(packages)


def check_sources(root: Path) -> None:
    """Raise a one-line :class:`UsageError` naming the missing packages and the line that installs them."""
    missing = [s for s in SOURCES.values() if any(not (root / p).exists() for p in s.paths)]
    if missing:
        raise UsageError(
            f"the real-text corpus reads Debian packages that are not installed under {root}: "
            f"{', '.join(s.package for s in missing)}; install them with: {apt_install_line([s.name for s in missing])}"
        )


# ----------------------------------------------------------------------------- text helpers


def squash(text: str) -> str:
    """Collapse every run of whitespace to one space."""
    return " ".join(text.split())


def clip_words(text: str, limit: int = MAX_RESPONSE_WORDS) -> str:
    """``text`` cut to at most ``limit`` words, at the last sentence end that fits (a word boundary if none)."""
    words = squash(text).split(" ")
    if len(words) <= limit:
        return " ".join(words)
    head = " ".join(words[:limit])
    ends = [m.end() for m in re.finditer(r"[.!?][\"')\]]?(?=\s|$)", head)]
    cut = ends[-1] if ends and ends[-1] > len(head) // 3 else len(head)
    return head[:cut].rstrip(" ,;:")


def n_words(text: str) -> int:
    return len(text.split())


def normal_words(text: str) -> list[str]:
    """Lower-case alphanumeric words: the form in which near-duplicates are compared."""
    return re.findall(r"[a-z0-9]+", text.lower())


# ----------------------------------------------------------------------------- dictd dictionaries

_B64 = {c: i for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")}


def _b64_number(text: str) -> int:
    value = 0
    for char in text:
        value = value * 64 + _B64[char]
    return value


def read_dictd(root: Path, name: str) -> Iterator[tuple[str, str]]:
    """``(headword, definition)`` of a ``dictd`` database, in index order, without its ``00database*`` entries.

    A ``.dict.dz`` file is dictzip, which gzip reads whole; the index gives each entry's offset and
    length in base64 digits. Several headwords may point at one definition; it is yielded once.
    """
    data = gzip.decompress((root / DICTD / f"{name}.dict.dz").read_bytes())
    seen: set[tuple[int, int]] = set()
    for number, line in enumerate((root / DICTD / f"{name}.index").read_text(encoding="utf-8").splitlines(), 1):
        parts = line.split("\t")
        if len(parts) < 3:
            raise UsageError(f"{root / DICTD / name}.index line {number}: expected headword, offset, length")
        headword, offset, length = parts[0], _b64_number(parts[1]), _b64_number(parts[2])
        if headword.startswith("00database") or (offset, length) in seen:
            continue
        seen.add((offset, length))
        yield headword, data[offset : offset + length].decode("utf-8", errors="replace")


def _first_indented(block: str) -> tuple[list[str], str]:
    """Split a dictd definition into its unindented head lines and its indented body."""
    lines = block.splitlines()
    head = []
    for i, line in enumerate(lines):
        if line.startswith((" ", "\t")) or not line.strip():
            return head, "\n".join(lines[i:])
        head.append(line.strip())
    return head, ""


def _strip_braces(text: str) -> str:
    # FOLDOC and the Jargon File mark cross-references {like this} and links {text (url)}.
    text = re.sub(r"\{([^{}]*?)\s*\((?:https?|ftp|mailto|news):[^{}]*\)\}", r"\1", text)
    return re.sub(r"\{([^{}]*)\}", r"\1", text)


def _paragraphs(body: str) -> list[str]:
    return [squash(p) for p in re.split(r"\n\s*\n", body) if p.strip()]


def foldoc_entries(root: Path) -> list[Entry]:
    entries = []
    for headword, block in read_dictd(root, "foldoc"):
        head, body = _first_indented(block)
        term = head[0] if head else headword
        paragraphs = [p for p in _paragraphs(_strip_braces(body)) if not re.fullmatch(r"\(\d{4}-\d{2}-\d{2}\)", p)]
        if not paragraphs:
            continue
        first = re.sub(r"^<[^>]*>\s*", "", paragraphs[0])  # the subject tags, e.g. <language, humour>
        text = " ".join([first, *paragraphs[1:]])
        if text.lower().startswith("see ") or n_words(text) < 8:
            continue  # redirections ("See {foo}") carry no definition of their own
        entries.append(Entry(headword, {"term": term}, clip_words(text)))
    return entries


def jargon_entries(root: Path) -> list[Entry]:
    entries = []
    for headword, block in read_dictd(root, "jargon"):
        head, body = _first_indented(block)
        paragraphs = _paragraphs(_strip_braces(body))
        # The first paragraph is often only the etymology in brackets; the sense follows.
        paragraphs = [p for p in paragraphs if not re.fullmatch(r"\[[^\]]*\]", p)]
        text = " ".join(paragraphs)
        if not head or n_words(text) < 8 or text.lower().startswith("see "):
            continue
        entries.append(Entry(headword, {"term": head[0]}, clip_words(text)))
    return entries


def devil_entries(root: Path) -> list[Entry]:
    entries = []
    for headword, block in read_dictd(root, "devil"):
        match = re.match(r"\s*([A-Z][A-Z' -]*[A-Z]),\s*([a-z.]+\s+)?", block)
        if not match:
            continue
        # The definition, without the verse that often follows (indented, with its author's name).
        definition = block[match.end() :].split("\n\n")[0]
        text = squash(definition)
        if n_words(text) < 5:
            continue
        entries.append(Entry(headword, {"word": match.group(1).lower()}, clip_words(text)))
    return entries


def vera_entries(root: Path) -> list[Entry]:
    entries = []
    for headword, block in read_dictd(root, "vera"):
        head, body = _first_indented(block)
        text = squash(body)
        if not head or not text or text.lower().startswith("see "):
            continue
        entries.append(Entry(headword, {"acronym": head[0]}, clip_words(text)))
    return entries


# Two families read each parse (element descriptions and facts; man3 descriptions and summaries): cached,
# so a corpus build parses each installed file once.
@functools.cache
def element_entries(root: Path) -> tuple[Entry, ...]:
    entries = []
    for headword, block in read_dictd(root, "elements"):
        facts = dict(re.findall(r"^(Symbol|Atomic number|Atomic weight):\s*(.+)$", block, flags=re.MULTILINE))
        lines = [line for line in block.splitlines()[1:] if not re.match(r"(Symbol|Atomic (number|weight)):", line)]
        description = squash(" ".join(lines))
        if len(facts) < 3 or n_words(description) < 8:
            continue
        name = block.splitlines()[0].strip()
        entries.append(Entry(headword, {"element": name, **{k.replace(" ", "_").lower(): v for k, v in facts.items()}},
                             clip_words(description)))  # fmt: skip
    return tuple(entries)


def element_fact_entries(root: Path) -> list[Entry]:
    return [
        Entry(
            e.key,
            e.fields,
            f"{e.fields['element'].capitalize()} has the symbol {e.fields['symbol']}, atomic number "
            f"{e.fields['atomic_number']} and atomic weight {e.fields['atomic_weight']}.",
        )
        for e in element_entries(root)
    ]


def freedict_entries(root: Path) -> list[Entry]:
    entries = []
    for headword, block in read_dictd(root, "freedict-eng-fra"):
        lines = [line.strip() for line in block.splitlines() if line.strip()]
        if len(lines) < 2 or headword.startswith(" "):
            continue
        word = re.sub(r"\s*/[^/]*/\s*$", "", lines[0]).strip()  # the IPA pronunciation
        translation = "; ".join(lines[1:])
        entries.append(Entry(headword, {"word": word}, clip_words(translation)))
    return entries


# ----------------------------------------------------------------------------- man pages

_ROFF_ESCAPES = {
    r"\-": "-", r"\(em": "\u2014", r"\(en": "\u2013", r"\(aq": "'", r"\(dq": '"', r"\(bu": "\u2022",
    r"\(lq": "\u201c", r"\(rq": "\u201d", r"\(oq": "\u2018", r"\(cq": "\u2019", r"\(mu": "\u00d7",
    r"\(ti": "~", r"\(ha": "^", r"\(rs": "\\", r"\e": "\\", r"\~": " ", r"\ ": " ", r"\&": "", r"\|": "", r"\^": "",
    r"\:": "", r"\c": "",
}  # fmt: skip
_FONT_MACROS = {".B", ".I", ".SM", ".SB"}
_ALTERNATING = {".BR", ".RB", ".IR", ".RI", ".BI", ".IB"}


def roff_text(line: str) -> str:
    """Plain text of one roff line: font escapes dropped, character escapes replaced."""
    line = re.sub(r"\\\[(\w\w)\]", r"\\(\1", line)  # groff's \[em] is the classic \(em
    line = re.sub(r"\\f(\[[^\]]*\]|\(..|.)", "", line)
    line = re.sub(r"\\\*(\[[^\]]*\]|\(..|.)", "", line)  # string registers
    for escape, char in _ROFF_ESCAPES.items():
        line = line.replace(escape, char)
    return line


def _macro_arguments(text: str) -> list[str]:
    return [a[1:-1] if a.startswith('"') else a for a in re.findall(r'"[^"]*"|\S+', text)]


def man_page(path: Path) -> tuple[str, str, str] | None:
    """``(title, one-line summary, description)`` of a Linux man-pages roff file, or None for an alias page.

    Macro lines are read as text where they carry it (``.B``, ``.BR`` and the like) and dropped
    otherwise; preformatted blocks (``.nf``/``.EX``) and tables are skipped, because they render as
    code or columns, not prose.
    """
    source = gzip.decompress(path.read_bytes()).decode("utf-8", errors="replace")
    if source.startswith(".so ") or '"Linux man-pages' not in source:
        return None
    sections: dict[str, list[str]] = {}
    current = None
    skipping = False
    for raw in source.splitlines():
        if raw.startswith(('.\\"', "'\\\"")):
            continue
        macro, _, rest = raw.partition(" ") if raw.startswith(".") else ("", "", raw)
        if macro in {".nf", ".EX", ".TS"}:
            skipping = True
        elif macro in {".fi", ".EE", ".TE"}:
            skipping = False
        elif macro == ".SH":
            current = squash(roff_text(rest).strip('"')).upper()
            sections[current] = []
        elif skipping or current is None:
            continue
        elif macro in {".PP", ".P", ".LP", ".TP", ".IP", ".SS"}:
            sections[current].append("\n")
            if macro == ".IP" and rest:
                continue  # the bullet or tag of an indented paragraph
        elif macro in _FONT_MACROS:
            sections[current].append(roff_text(" ".join(_macro_arguments(rest))))
        elif macro in _ALTERNATING:
            sections[current].append(roff_text("".join(_macro_arguments(rest))))
        elif not macro:
            sections[current].append(roff_text(raw))
    name = squash(" ".join(sections.get("NAME", [])))
    title, _, summary = name.partition(" - ")
    paragraphs = [squash(p) for p in " ".join(sections.get("DESCRIPTION", [])).split("\n") if p.strip()]
    if not summary or not paragraphs:
        return None
    return squash(title), squash(summary), " ".join(paragraphs)


@functools.cache  # see element_entries
def man_entries(root: Path, section: str) -> tuple[tuple[str, str, str, str], ...]:
    """``(file name, title, summary, description)`` for the Linux man-pages of ``section`` under ``root``."""
    out = []
    for path in sorted((root / MAN / f"man{section}").glob(f"*.{section}.gz")):
        page = man_page(path)
        if page is not None:
            out.append((path.name, *page))
    return tuple(out)


def _man_family_entries(section: str, describe: bool) -> Callable[[Path], list[Entry]]:
    def entries(root: Path) -> list[Entry]:
        out = []
        for file_name, title, summary, description in man_entries(root, section):
            name = title.split(",")[0].strip()
            response = clip_words(description) if describe else summary[:1].upper() + summary[1:] + "."
            if describe and n_words(response) < 12:
                continue
            out.append(Entry(file_name, {"name": name, "section": section}, response))
        return out

    return entries


# ----------------------------------------------------------------------------- fortunes and quizzes

# The topical files of the `fortunes` package (its offensive ones are in another package).
FORTUNE_FILES = (
    "computers", "education", "humorists", "law", "linux", "literature", "medicine", "people", "platitudes",
    "politics", "science", "wisdom", "work", "miscellaneous", "paradoxum", "goedel", "tao",
)  # fmt: skip


def fortune_entries(root: Path) -> list[Entry]:
    """Quotations of at least 30 words, split into an opening (the prompt) and the rest (the response)."""
    entries = []
    for topic in FORTUNE_FILES:
        text = (root / FORTUNES / topic).read_text(encoding="utf-8", errors="replace")
        for number, fortune in enumerate(text.split("\n%\n")):
            body = re.split(r"\n\s*--\s", fortune)[0]  # the attribution line, if any
            words = squash(body).split(" ")
            if len(words) < 30 or len(words) > 2 * MAX_RESPONSE_WORDS:
                continue
            cut = max(6, len(words) // 4)
            entries.append(
                Entry(f"{topic}:{number}", {"opening": " ".join(words[:cut]), "topic": topic},
                      clip_words(" ".join(words[cut:])))
            )  # fmt: skip
    return entries


QUIZ_CAPITALS = ("africa", "america", "asia", "europe")


def quiz_text(field: str) -> str:
    """The full form of a ``quiz`` answer: its first alternative (``a|b``), optional parts (``{...}``) kept."""
    return re.sub(r"[{}]", "", field.split("|")[0]).strip()


def capital_entries(root: Path) -> list[Entry]:
    entries = []
    for region in QUIZ_CAPITALS:
        for line in (root / QUIZ / region).read_text(encoding="utf-8").splitlines():
            country, _, capital = (quiz_text(part) for part in line.partition(":"))
            if country and capital:
                entries.append(Entry(f"{region}:{country}", {"country": country},
                                     f"The capital of {country} is {capital}."))  # fmt: skip
    return entries


# ----------------------------------------------------------------------------- Python's own text

# Standard-library modules whose public API is documented in docstrings and imports without side effects.
PYTHON_MODULES = (
    "abc", "argparse", "array", "base64", "bisect", "calendar", "collections", "contextlib", "copy", "csv",
    "dataclasses", "datetime", "decimal", "difflib", "enum", "fnmatch", "fractions", "functools", "glob", "gzip",
    "hashlib", "heapq", "hmac", "html", "http.client", "inspect", "io", "ipaddress", "itertools", "json",
    "logging", "math", "mimetypes", "operator", "os", "os.path", "pathlib", "pickle", "platform", "pprint",
    "queue", "random", "re", "secrets", "shlex", "shutil", "socket", "sqlite3", "statistics", "string", "struct",
    "subprocess", "tarfile", "tempfile", "textwrap", "threading", "time", "timeit", "typing", "unicodedata",
    "urllib.parse", "uuid", "warnings", "weakref", "zipfile", "zlib",
)  # fmt: skip


def python_function_entries(_: Path) -> list[Entry]:
    """Public functions and classes of :data:`PYTHON_MODULES` with a docstring of at least 12 words."""
    entries = []
    for module_name in PYTHON_MODULES:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = importlib.import_module(module_name)
        public = getattr(module, "__all__", None) or [n for n in dir(module) if not n.startswith("_")]
        for name in sorted(set(public)):
            member = getattr(module, name, None)
            home = getattr(member, "__module__", None) or module_name
            if not callable(member) or home.split(".")[0] != module_name.split(".")[0]:
                continue  # re-exports are documented where they are defined
            doc = inspect.getdoc(member) or ""
            paragraphs = [squash(p) for p in doc.split("\n\n") if p.strip()]
            # A signature line (C functions) is not prose.
            paragraphs = [p for p in paragraphs if not re.match(rf"^{re.escape(name)}\(.*\)( ->.*)?$", p)]
            text = " ".join(paragraphs[:2])
            if n_words(text) < 12:
                continue
            entries.append(Entry(f"{module_name}.{name}", {"name": f"{module_name}.{name}"}, clip_words(text)))
    return entries


def python_topic_entries(_: Path) -> list[Entry]:
    """The help topics of ``pydoc_data`` (the language reference's sections, as ``help()`` shows them)."""
    from pydoc import Helper
    from pydoc_data.topics import topics

    names = {value: key for key, value in Helper.topics.items() if isinstance(value, str)}
    entries = []
    for label, text in sorted(topics.items()):
        paragraphs = [squash(p) for p in text.split("\n\n") if p.strip()]
        # The first paragraph is the section's title with its underline.
        prose = [p for p in paragraphs[1:] if not p.startswith(("*", "   ")) and n_words(p) >= 8]
        if not prose:
            continue
        topic = names.get(label, label).split()[0].replace("-", " ")
        title = re.sub(r"\s*\**$", "", paragraphs[0]).strip("* ")
        entries.append(Entry(label, {"topic": title or topic}, clip_words(" ".join(prose[:2]))))
    return entries


# ----------------------------------------------------------------------------- the task families

FAMILIES: list[Family] = [
    Family("explain_computing_term", "computing", "foldoc",
           ("Explain the computing term \"{term}\".", "What does \"{term}\" mean in computing?",
            "Define {term} as a computing dictionary would."), foldoc_entries),
    Family("explain_hacker_slang", "slang", "jargon",
           ("What does the hacker slang \"{term}\" mean?", "In the Jargon File, what is \"{term}\"?",
            "Explain the jargon term \"{term}\"."), jargon_entries),
    Family("devils_definition", "humour", "devil",
           ("How does Ambrose Bierce's Devil's Dictionary define \"{word}\"?",
            "Give the Devil's Dictionary definition of \"{word}\".",
            "Define \"{word}\" the way Ambrose Bierce would."), devil_entries),
    Family("expand_acronym", "acronyms", "vera",
           ("What does the acronym {acronym} stand for?", "Expand the abbreviation {acronym}.",
            "{acronym} is short for what?"), vera_entries, weight=0.5),
    Family("describe_element", "science", "elements",
           ("Describe the chemical element {element}.", "Tell me about the element {element}.",
            "What is {element} and what is it used for?"), element_entries),
    Family("element_facts", "science", "elements",
           ("What are the symbol, atomic number and atomic weight of {element}?",
            "Give the chemical symbol, atomic number and weight of {element}."), element_fact_entries, weight=0.5),
    Family("translate_to_french", "translation", "freedict-eng-fra",
           ("Translate \"{word}\" into French.", "What is the French for \"{word}\"?",
            "How do you say \"{word}\" in French?"), freedict_entries, weight=0.5),
    Family("explain_system_call", "linux", "manpages-dev",
           ("What does the Linux system call {name}() do?", "Describe the {name} system call.",
            "Explain what {name}(2) does on Linux."), _man_family_entries("2", describe=True)),
    Family("explain_c_function", "c-library", "manpages-dev",
           ("What does the C library function {name}() do?", "Describe {name}(3) from the C library.",
            "Explain the C function {name}."), _man_family_entries("3", describe=True)),
    Family("summarise_c_function", "c-library", "manpages-dev",
           ("In a few words, what is {name}({section}) for?", "Give the one-line summary of {name}({section})."),
           _man_family_entries("3", describe=False), weight=0.5),
    Family("explain_linux_file", "linux", "manpages",
           ("What is the Linux file or format {name}?", "Describe {name}({section}) on Linux.",
            "Explain the file format {name}."), _man_family_entries("5", describe=True)),
    Family("explain_linux_concept", "linux", "manpages",
           ("Give an overview of {name} on Linux.", "Explain the Linux concept described in {name}(7).",
            "What is {name} in Linux?"), _man_family_entries("7", describe=True)),
    Family("complete_quotation", "quotations", "fortunes",
           ("Complete this quotation: \"{opening} ...\"", "Continue the saying that begins \"{opening}\".",
            "How does this go on? \"{opening}\""), fortune_entries),
    Family("capital_city", "geography", "bsdgames",
           ("What is the capital of {country}?", "Name the capital city of {country}."), capital_entries, weight=0.5),
    Family("explain_python_function", "python", "python",
           ("What does the Python function {name} do?", "Describe {name} from the Python standard library.",
            "Explain the purpose of {name} in Python."), python_function_entries),
    Family("explain_python_topic", "python", "python",
           ("Explain the Python language topic: {topic}.", "What does the Python reference say about this: {topic}?"),
           python_topic_entries),
]  # fmt: skip


# ----------------------------------------------------------------------------- building the corpus


def load_entries(root: Path) -> dict[str, Sequence[Entry]]:
    """Every family's entries, read from the installed files under ``root``."""
    check_sources(root)
    return {family.name: family.entries(root) for family in FAMILIES}


def generate_split_records(
    sizes: dict[str, int], seed: int, root: str | Path = "/", entries: dict[str, Sequence[Entry]] | None = None
) -> dict[str, list[dict[str, Any]]]:
    """Draw unique records for each split, families mixed by their weights, deterministically from ``seed``.

    Each entry of a source serves at most one record (two families over one source share its
    entries), every prompt and every response appears once, and a response whose first
    :data:`DEDUP_PREFIX_WORDS` normalised words match an earlier one is skipped; so no text is
    shared between splits. A family that runs out of entries leaves the draw to the others.
    """
    for split in sizes:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; splits are {SPLITS}")
    entries = entries if entries is not None else load_entries(Path(root))
    rng = random.Random(seed)
    queues = {}
    for family in FAMILIES:
        order = list(entries[family.name])
        rng.shuffle(order)
        queues[family.name] = order
    used_entries: set[tuple[str, str]] = set()
    seen_text: set[str] = set()
    out: dict[str, list[dict[str, Any]]] = {}
    for split in ("test", "train", "pretrain"):  # held-out first, as in the synthetic corpus
        if split not in sizes:
            continue
        records: list[dict[str, Any]] = []
        while len(records) < sizes.get(split, 0):
            live = [f for f in FAMILIES if queues[f.name]]
            if not live:
                available = sum(len(v) for v in entries.values())
                raise UsageError(f"the real-text sources hold too few distinct entries ({available}) for sizes {sizes}")
            family = rng.choices(live, weights=[f.weight for f in live])[0]
            entry = queues[family.name].pop()
            template = rng.randrange(len(family.templates))
            inputs = family.templates[template].format(**entry.fields)
            prefix = " ".join(normal_words(entry.response)[:DEDUP_PREFIX_WORDS])
            keys = (f"in:{squash(inputs).lower()}", f"out:{prefix}")
            if (family.source, entry.key) in used_entries or any(k in seen_text for k in keys):
                continue
            used_entries.add((family.source, entry.key))
            seen_text.update(keys)
            records.append(
                {
                    "id": f"{split}-{len(records):06d}",
                    "inputs": inputs,
                    "targets": entry.response,
                    "task": family.name,
                    "category": family.category,
                    "source": family.source,
                    "template": template,
                }
            )
        out[split] = records
    return out


def package_version(package: str) -> str:
    """The installed Debian version of ``package`` (``dpkg-query``), or ``"unknown"`` off Debian."""
    try:
        result = subprocess.run(
            ["dpkg-query", "-W", "-f", "${Version}", package], capture_output=True, text=True, check=False
        )
    except OSError:
        return "unknown"
    return result.stdout.strip() or "unknown"


def source_versions() -> dict[str, dict[str, str]]:
    """Each source's package, installed version and license, for the card."""
    python = f"{sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro}"
    return {
        s.name: {
            "package": s.package or f"python{sys.version_info.major}.{sys.version_info.minor}",
            "version": package_version(s.package) if s.package else python,
            "license": s.license,
        }
        for s in SOURCES.values()
    }


def corpus_statistics(records: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per-source and per-family counts, the median response length in words and the top response's share."""
    rows = [r for split in records.values() for r in split]
    pool = records.get("train", [])
    lengths = sorted(n_words(r["targets"]) for r in rows)
    top, top_count = Counter(r["targets"] for r in pool).most_common(1)[0] if pool else ("", 0)
    return {
        "records_per_source": dict(sorted(Counter(r["source"] for r in rows).items())),
        "records_per_task": dict(sorted(Counter(r["task"] for r in rows).items())),
        "median_response_words": lengths[len(lengths) // 2] if lengths else 0,
        "top_response_count_in_pool": top_count,
        "top_response_share_of_pool": top_count / len(pool) if pool else 0.0,
        "top_response": top,
    }


def write_realtext_corpus(
    folder: str | Path, sizes: dict[str, int], seed: int, root: str | Path = "/"
) -> dict[str, Any]:
    """Write the real-text corpus as a Hub dataset folder (``data/<split>.parquet``, card). Returns its summary."""
    entries = load_entries(Path(root))
    records = generate_split_records(sizes, seed, entries=entries)
    stats = corpus_statistics(records)
    versions = source_versions()
    summary = {
        **corpus_summary(CORPUS_NAME, seed, records, len(FAMILIES)),
        # Two machines whose package files differ parse different entries: this says which they were.
        "sources_digest": entries_digest(entries),
        "sources": versions,
        **{k: v for k, v in stats.items() if k != "top_response"},
    }
    source_rows = "\n".join(
        f"| {name} | {v['package']} | {v['version']} | {v['license']} | {stats['records_per_source'].get(name, 0)} |"
        for name, v in versions.items()
    )
    family_rows = "\n".join(
        f"| {f.name} | {f.category} | {f.source} | {len(f.templates)} | {f.weight:g} | "
        f"{stats['records_per_task'].get(f.name, 0)} |"
        for f in FAMILIES
    )
    card = f"""# {CORPUS_NAME}

{len(FAMILIES)} instruction task families over human-written text from {len(SOURCES)} sources that
Debian packages (and Python itself) install, built offline by AirRep-Hub
(`airrep/labels/realtext.py`). Records use the FLAN schema (`inputs`, `targets`) with `id`, `task`,
`category`, `source` and `template` (the paraphrase used). Responses are the sources' own text, cut
at a sentence end within {MAX_RESPONSE_WORDS} words.

- Seed: {seed}; fingerprint: `{summary["fingerprint"]}`; parsed sources: `{summary["sources_digest"]}`
- Sizes: {json.dumps(summary["sizes"])}
- Median response: {stats["median_response_words"]} words. The most frequent response in the pool
  (`train`) occurs {stats["top_response_count_in_pool"]} time(s), {stats["top_response_share_of_pool"]:.2%} of it.
- Splits: `pretrain` warm-starts the target LM, `train` is the attribution pool, `test` holds
  held-out queries. Each source entry yields at most one record, and responses whose first
  {DEDUP_PREFIX_WORDS} words match an earlier one are dropped, so no text is shared between splits.
- WordNet and GCIDE are not used: they are kept as an independent check.

| source | package | version | license | records |
|---|---|---|---|---|
{source_rows}

| task | category | source | templates | draw weight | records |
|---|---|---|---|---|---|
{family_rows}
"""
    return save_corpus(folder, records, summary, card, tags=["instruction-tuning", "data-attribution", "real-text"])


def entries_digest(entries: dict[str, Sequence[Entry]]) -> str:
    """A content hash of the parsed sources (for telling two machines' package files apart)."""
    digest = hashlib.sha256()
    for name in sorted(entries):
        for e in entries[name]:
            digest.update(json.dumps([name, e.key, e.fields, e.response], sort_keys=True).encode())
    return digest.hexdigest()[:16]
