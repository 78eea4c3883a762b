"""OUT/run.log: what the terminal showed of a run, with times.

A run logs before its output folder may be created (bad input must leave nothing written),
so the handler keeps records in memory until ``open`` names the file, then writes them and
everything after. Python warnings of libraries go to the file only: ``quiet_warnings`` routes
them to the ``py.warnings`` logger, which prints nothing on the terminal.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hetmpi.errors import InputError, RunError

LOG_NAME = "run.log"
FORMAT = "%(asctime)s %(levelname)s %(message)s"
_WARNINGS = logging.getLogger("py.warnings")


class RunLogHandler(logging.Handler):
    """Holds records until ``open``, then appends them and every later one to the file."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter(FORMAT))
        self._pending: list[logging.LogRecord] = []
        self._file: logging.FileHandler | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if self._file is None:
            self._pending.append(record)
        else:
            self._file.emit(record)

    def open(self, out_dir: Path) -> None:
        file = logging.FileHandler(Path(out_dir) / LOG_NAME)
        file.setFormatter(self.formatter)
        with self.lock:  # emit runs under the same lock
            if self._file is not None:
                self._file.close()
            self._file = file
            for record in self._pending:
                file.emit(record)
            self._pending.clear()

    def write(self, text: str) -> None:
        """Lines the terminal showed outside the log (the results table, an error)."""
        with self.lock:
            if self._file is not None:
                self._file.stream.write(text.rstrip("\n") + "\n")
                self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        super().close()


def _warning_to_log(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: object = None,
    line: str | None = None,
) -> None:
    _WARNINGS.warning("%s", warnings.formatwarning(message, category, filename, lineno, line))


def quiet_warnings() -> None:
    """Python warnings become records of ``py.warnings``, which the terminal does not show.

    Sets ``warnings.showwarning`` on every call, so it holds inside any ``catch_warnings``
    block that reset it (``logging.captureWarnings`` replaces it once per process only)."""
    warnings.showwarning = _warning_to_log
    _WARNINGS.propagate = False
    if not _WARNINGS.handlers:
        _WARNINGS.addHandler(logging.NullHandler())


_active: RunLogHandler | None = None


@contextmanager
def journal(log: logging.Logger) -> Iterator[RunLogHandler]:
    """The run's RunLogHandler, on ``log`` and on library warnings while the outermost
    block runs; inner blocks (the command line's, then the pipeline's) share it. An error
    that ends the outermost block is written to the file too."""
    global _active
    if _active is not None:
        yield _active
        return
    handler = _active = RunLogHandler()
    log.addHandler(handler)
    _WARNINGS.addHandler(handler)
    try:
        yield handler
    except (InputError, RunError) as exc:
        handler.write(f"error: {exc}")  # what the command line prints (once the file exists)
        raise
    finally:
        _active = None
        log.removeHandler(handler)
        _WARNINGS.removeHandler(handler)
        handler.close()
