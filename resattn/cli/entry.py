"""What every command line of resattn shares: bad input answered in one line, and output that
may be piped into ``head``.

Kept apart from the commands so that the thin entries (``studies/run.py``, ``python -m
resattn``) import no torch before they must.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable


class OneLineParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors are one line (the flag and what is wrong, and where
    to read more) and exit 2, instead of the usage block followed by the error."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def run(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> int:
    """``main(argv)``'s exit code; output cut short by a closed pipe (``| head``) ends quietly, the
    way Python's documentation recommends: stdout goes to devnull so that the flush at exit cannot
    raise again."""
    try:
        return main(argv) or 0
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
