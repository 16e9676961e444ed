"""What every command line shares: one argument parser, and one way to report a user's mistake.

The scripts (``generate_labels.py``, ``train_airrep.py``, ``eval_lds.py``, ``ladder_report.py``) and
the ``python -m airrep...`` tools all parse dataclass arguments with :class:`ArgumentParser`
(transformers' ``HfArgumentParser``) and run through :func:`run`. A mistake in what the user asked
for (a flag value, an input folder, a file's contents) then prints one line naming the culprit and
exits with status 2, as argparse does for a bad flag. ``--debug`` (anywhere on the command line) or
``AIRREP_DEBUG=1`` shows the traceback instead. Any other exception is a bug and raises as usual.
"""

from __future__ import annotations

import logging
import os
import sys
from argparse import RawDescriptionHelpFormatter
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from transformers import HfArgumentParser

from configuration_airrep import RecordFormatError

USAGE_STATUS = 2
DEBUG_FLAG = "--debug"
DEBUG_ENV = "AIRREP_DEBUG"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class UsageError(ValueError):
    """A mistake in what the user asked for: a flag value, an input that is missing or malformed.

    A ``ValueError``, so library callers that catch those keep working; command lines report it in one
    line (see :func:`run`).
    """


# OSError covers a missing or unreadable file or folder, and transformers' "not a checkpoint" errors.
USER_ERRORS: tuple[type[BaseException], ...] = (UsageError, RecordFormatError, OSError)


class ArgumentParser(HfArgumentParser):
    """``HfArgumentParser`` whose errors are one line (argparse prints the whole usage first)."""

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE_STATUS, f"{self.prog}: error: {message} (see --help)\n")


def parse(dataclass_types: Any, argv: Sequence[str] | None, description: str | None = None) -> tuple:
    """Parse ``argv`` into instances of ``dataclass_types`` (one type or a tuple of them).

    ``description`` (the command's docstring, usually) heads ``--help``, its layout kept.
    """
    parser = ArgumentParser(dataclass_types, description=description, formatter_class=RawDescriptionHelpFormatter)
    return parser.parse_args_into_dataclasses(args=list(argv) if argv is not None else None)


def run(main: Callable[[list[str]], int | None], argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Call ``main(argv)`` with logging set up; a user error becomes one line on stderr and status 2.

    Returns:
        ``main``'s status (0 for None), for ``sys.exit``.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = DEBUG_FLAG in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    argv = [a for a in argv if a != DEBUG_FLAG]
    logging.basicConfig(format=LOG_FORMAT, level=logging.INFO)
    try:
        return main(argv) or 0
    except USER_ERRORS as error:
        if debug:
            raise
        name = prog or os.path.basename(sys.argv[0]) or "airrep"
        message = " ".join(str(error).split()) or type(error).__name__
        print(f"{name}: error: {message} (set {DEBUG_ENV}=1 or pass {DEBUG_FLAG} for the traceback)", file=sys.stderr)
        return USAGE_STATUS
