"""Errors a user can act on. The CLI prints them as one line, never as a traceback."""

from __future__ import annotations


class TunelabError(Exception):
    """A problem the user can fix: bad config, bad data, missing model or package."""


class NotFoundError(TunelabError):
    """A name or id that points at nothing (a registered model, a version, an alias, a key, an A/B test)."""


class ConfigError(TunelabError):
    """One or more config problems, all listed at once."""

    def __init__(self, problems: list[str], source: str = "config"):
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{source}: {len(problems)} problem(s)\n{lines}")


class DataError(TunelabError):
    """A bad file or row, named by file and line (1-based) so the user can find it."""

    def __init__(self, path: str, reason: str, line: int | None = None):
        self.path = str(path)
        self.line = line
        self.reason = reason
        where = f"{self.path} line {line}" if line is not None else self.path
        super().__init__(f"{where}: {reason}")
