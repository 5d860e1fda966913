"""Every exception of the package: the failures a user can cause and fix.

Each is a ``FasslError``, so the command line catches them in one place and prints one or
two lines with exit status 2; each also keeps the built-in base that code outside the
package would catch (``ValueError`` for a bad value, ``OSError``-like failures stay
``OSError``). Anything else is a bug and keeps its traceback.

A leaf module: it imports nothing from the package, so every other module can import it.
"""

from __future__ import annotations

import os
import pickle

DEBUG_ENV = "FASSL_DEBUG"  # FASSL_DEBUG=1: tracebacks for every error, expected or not


class FasslError(Exception):
    """A failure the user can fix; its message names the key, file or line and what to do."""


class ConfigError(FasslError, ValueError):
    """A config file, override or flag that does not fit the schema or its ranges."""


class DataError(FasslError, ValueError):
    """A data source that cannot be used as configured (no images, unknown classes, ...)."""


class UnreadableBatch(DataError, pickle.UnpicklingError):
    """A CIFAR batch file that would unpickle anything but plain arrays."""


class RunConflict(FasslError):
    """A run folder whose finished or started stages were trained with other settings,
    or that another run is training in."""


class CheckpointError(FasslError, ValueError):
    """A file that is not a readable fassl checkpoint."""


class IncompatibleCheckpoint(FasslError, ValueError):
    """A checkpoint whose tensors do not fit the model being built."""


class DeviceUnavailable(FasslError, RuntimeError):
    """The configured device does not exist on this machine."""


class NonFiniteLoss(FasslError, FloatingPointError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class DiskFull(FasslError, OSError):
    """Not enough space for a file; what was written before it is intact."""


class PeerFailed(FasslError):
    """Another process of a multi-process run (torchrun) failed or stopped; this one
    stops with it. The failed process prints its own error."""


class RanksDiffer(FasslError, ValueError):
    """The processes of a multi-process run (torchrun) hold different settings or data
    (an override passed to one rank, a node whose copy of the images differs)."""


class DamagedFile(FasslError, ValueError):
    """A file a run wrote (results.json, grid.json) that is empty, truncated or does not
    hold what it should: the run is treated as unfinished, or the file is named."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) or SIGTERM during a command; the message says where it stopped and
    how to resume. A KeyboardInterrupt, so no ``except Exception`` swallows it."""

    def __init__(self, message: str, signum: int = 2) -> None:
        super().__init__(message)
        self.signum = signum


class ToolError(FasslError, ValueError):
    """A per-image tool (embed, rare, export, tsne) asked for something it cannot do."""


class RarityError(ToolError):
    """A weight that cannot rank this collection with this checkpoint."""


def printable(name: str | bytes | os.PathLike[str]) -> str:
    """A file name that can be printed and written whatever its bytes.

    Names that are not valid UTF-8 reach Python as strings with lone surrogates
    (``os.fsdecode``), which fail when written as UTF-8; they become ``\\xNN`` escapes.
    """
    text = os.fsdecode(name) if isinstance(name, bytes | os.PathLike) else name
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def expected_errors() -> tuple[type[BaseException], ...]:
    """The exception types that are a user's error, not a bug: ``FasslError``, and OSError
    (missing files, permissions, full disks), which always names its path."""
    return (FasslError, OSError)


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
