"""The failures a user can cause and fix, as opposed to bugs.

Every expected failure (a bad config key, an unreadable checkpoint, a data folder without
images, a run folder trained with other settings) is a ``FasslError`` or one of the few
library exceptions mapped to it in ``expected_errors``. The command line prints those as
one or two lines and exits with status 2; anything else is a bug and keeps its traceback.

This module imports nothing from the package, so every other module can import it.
"""

from __future__ import annotations

import os

DEBUG_ENV = "FASSL_DEBUG"  # FASSL_DEBUG=1: tracebacks for every error, expected or not


class FasslError(Exception):
    """A failure the user can fix; its message names the key, file or line and what to do."""


class DataError(FasslError, ValueError):
    """A data source that cannot be used as configured (no images, unknown classes, ...)."""


class RunConflict(FasslError):
    """A run folder whose finished or started stages were trained with other settings."""


def printable(name: str | bytes | os.PathLike[str]) -> str:
    """A file name that can be printed and written whatever its bytes.

    Names that are not valid UTF-8 reach Python as strings with lone surrogates
    (``os.fsdecode``), which fail when written as UTF-8; they become ``\\xNN`` escapes.
    """
    text = os.fsdecode(name) if isinstance(name, bytes | os.PathLike) else name
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def expected_errors() -> tuple[type[BaseException], ...]:
    """The exception types that are a user's error, not a bug.

    Besides ``FasslError``: errors of modules that keep their own exception classes, and
    OSError (missing files, permissions, full disks), which always names its path.
    """
    from fassl.models.state import IncompatibleCheckpoint
    from fassl.runtime import DeviceUnavailable
    from fassl.train.loop import NonFiniteLoss

    return (FasslError, IncompatibleCheckpoint, DeviceUnavailable, NonFiniteLoss, OSError)


def describe(err: BaseException) -> str:
    """The one or two lines printed for an expected error."""
    if isinstance(err, OSError) and not isinstance(err, FasslError):
        what = err.strerror or str(err)
        where = f": {printable(err.filename)}" if err.filename else ""
        extra = f" -> {printable(err.filename2)}" if err.filename2 else ""
        text = f"{what}{where}{extra}" if err.strerror else str(err)
        return printable(text)
    return printable(str(err))


def debug_enabled() -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


__all__ = [
    "DataError",
    "FasslError",
    "RunConflict",
    "debug_enabled",
    "describe",
    "expected_errors",
    "printable",
]
