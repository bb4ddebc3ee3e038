"""Errors that users can act on: each names the file or option and the problem.

The CLI prints ``str(error)`` on one line and exits with status 2. Library code
raises these instead of calling ``exit()`` or logging and carrying on; ``assert``
is kept for internal invariants only.
"""

from __future__ import annotations

import os


class LumiError(Exception):
    """Base class for every error lumi reports to a user."""


class UsageError(LumiError):
    """A bad option or argument: ``UsageError("--temperature", "must be >= 0, got -1")``."""

    def __init__(self, option: str, problem: str):
        self.option = option
        self.problem = problem
        super().__init__(f"{option}: {problem}")


class CheckpointError(LumiError):
    """A model or tokenizer file that cannot be read as what it claims to be.

    ``CheckpointError(path, "header.dim", "must be > 0, got -3")`` prints as
    ``model.bin: header.dim: must be > 0, got -3``.
    """

    def __init__(self, path: str | os.PathLike, field: str | None, problem: str):
        self.path = os.fspath(path)
        self.field = field
        self.problem = problem
        where = f"{self.path}: {field}" if field else self.path
        super().__init__(f"{where}: {problem}")
