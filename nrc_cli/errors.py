"""The one exception tree of ``nrc``.

Every error the library raises on purpose is an :class:`NrcError`. Its message says what was
expected, what was found and where; ``hint`` (optional) says how to fix it. The command line maps
these to exit code 2 (bad usage or bad input); :class:`CheckFailed` is the exception to that rule
and maps to exit code 1.
"""

from __future__ import annotations


def printable(text: object) -> str:
    r"""``text`` with every character that is not printable (a newline, a carriage return, an
    escape sequence, a lone surrogate of an undecodable file name) written as Python writes it
    in a string literal, so that a message that holds a user's name stays one line.

    >>> printable("data\nerror: x.npz")
    'data\\nerror: x.npz'
    """
    s = str(text)
    if s.isprintable():
        return s
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in s)


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
        # One error is one line, whatever names it holds (see printable).
        message = printable(message)
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


class OptionError(ConfigError):
    """A bad option, said in the words of each interface.

    ``message`` names the Python parameter (``rank: expected an integer >= 1, found 0``), as
    the Python API raises it; ``cli_message`` names the command-line flag (``--rank: ...``),
    as ``nrc`` prints it. Both come from one text (see ``nrc_cli.options.option_error``).
    """

    def __init__(self, message: str, *, cli_message: str | None = None, hint: str | None = None):
        super().__init__(message, hint=hint)
        self.cli_message = cli_message or message

    def with_context(self, context: str) -> NrcError:
        return OptionError(
            f"{context}: {self.message}",
            cli_message=f"{context}: {self.cli_message}",
            hint=self.hint,
        )


class CheckFailed(NrcError):
    """A check ran and at least one requirement failed (exit code 1)."""

    exit_code = 1


class WriteError(NrcError):
    """An output file cannot be written: disk full, read-only file system, no permission."""


# Hints for the OS errors a user can fix, by errno name.
_OS_HINTS = {
    "ENOSPC": "free some space on that file system, or write somewhere else",
    "EDQUOT": "your disk quota is used up; free some space, or write somewhere else",
    "EROFS": "the file system is mounted read-only; write somewhere else",
    "EACCES": "you may not write there; write somewhere else, or change its permissions",
    "EPERM": "you may not write there; write somewhere else, or change its permissions",
    "ENOENT": "check the path",
    "ENOTDIR": "check the path: a part of it is a file, not a folder",
    "EISDIR": "give a file path, not a folder",
    "EMFILE": "too many open files; raise the limit (ulimit -n) or run fewer jobs",
}


def os_error_reason(exc: OSError) -> str:
    """The operating system's reason for ``exc``, in words and with its errno name.

    >>> import errno, os
    >>> os_error_reason(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
    'no space left on device (ENOSPC)'
    """
    import errno

    name = errno.errorcode.get(exc.errno) if isinstance(exc.errno, int) else None
    text = exc.strerror or (str(exc.args[0]) if exc.args else "") or type(exc).__name__
    text = text[:1].lower() + text[1:]
    return f"{text} ({name})" if name else text


def os_error_hint(exc: OSError) -> str | None:
    """How to fix ``exc``, for the errors a user can act on; None otherwise."""
    import errno

    name = errno.errorcode.get(exc.errno) if isinstance(exc.errno, int) else None
    return _OS_HINTS.get(name or "")


def os_error_line(exc: OSError) -> str:
    """The ``error:`` line for an OSError that reached the command line: path and reason.

    >>> import errno
    >>> os_error_line(PermissionError(errno.EACCES, "Permission denied", "run.json"))
    "error: 'run.json': permission denied (EACCES)"
    """
    where = [printable(f) for f in (exc.filename, exc.filename2) if f is not None]
    paths = " -> ".join(f"'{w}'" for w in where)
    return f"error: {paths + ': ' if paths else ''}{os_error_reason(exc)}"
