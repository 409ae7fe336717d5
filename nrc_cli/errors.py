"""The one exception tree of ``nrc``.

Every error the library raises on purpose is an :class:`NrcError`. Its message says what was
expected, what was found and where; ``hint`` (optional) says how to fix it. The command line maps
these to exit code 2 (bad usage or bad input); :class:`CheckFailed` is the exception to that rule
and maps to exit code 1.
"""

from __future__ import annotations


class NrcError(Exception):
    """Base class for every error ``nrc`` raises on purpose (bad input, bad usage).

    Parameters
    ----------
    message : str
        One line: what was expected, what was found, and where.
    hint : str, optional
        One line telling the user how to fix it.
    """

    exit_code = 2

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message

    def with_context(self, context: str) -> NrcError:
        """Return a copy of this error whose message is prefixed by ``context``."""
        err = type(self)(f"{context}: {self.message}", hint=self.hint)
        return err


class CheckpointError(NrcError):
    """A checkpoint cannot be read, or no model can be built from it."""


class DataError(NrcError):
    """A data file is missing, malformed, or disagrees with the model."""


class ConfigError(NrcError):
    """An option or a combination of options is invalid."""


class CheckFailed(NrcError):
    """A check ran and at least one requirement failed (exit code 1)."""

    exit_code = 1
