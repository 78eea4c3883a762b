"""run.log: records held until the output folder exists, library warnings kept off the
terminal but in the file."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import pytest

from hetmpi.errors import RunError
from hetmpi.runlog import LOG_NAME, journal, quiet_warnings


@pytest.fixture
def quiet() -> object:
    py_warnings = logging.getLogger("py.warnings")
    handlers, propagate = list(py_warnings.handlers), py_warnings.propagate
    shown = warnings.showwarning
    quiet_warnings()
    yield
    warnings.showwarning = shown
    py_warnings.handlers[:] = handlers
    py_warnings.propagate = propagate


def test_the_log_holds_everything_from_the_first_record(
    tmp_path: Path, quiet: object, capsys: pytest.CaptureFixture[str]
) -> None:
    log = logging.getLogger("hetmpi.test_runlog")
    log.setLevel(logging.INFO)
    with journal(log) as handler:
        log.info("before the folder exists")
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.warn("a library's warning", UserWarning, stacklevel=1)
        assert not (tmp_path / LOG_NAME).exists()
        with journal(log) as inner:  # the pipeline's block inside the command line's
            assert inner is handler
            handler.open(tmp_path)
            log.warning("after it exists")
        handler.write("the results table\n")
    log.info("after the run")
    lines = (tmp_path / LOG_NAME).read_text().splitlines()
    assert lines[0].endswith("INFO before the folder exists")
    assert "WARNING" in lines[1] and "a library's warning" in lines[1]
    assert lines[-2].endswith("WARNING after it exists")
    assert lines[-1] == "the results table"
    assert "a library's warning" not in capsys.readouterr().err


def test_an_error_that_ends_the_run_is_logged_once(tmp_path: Path, quiet: object) -> None:
    log = logging.getLogger("hetmpi.test_runlog")
    with pytest.raises(RunError, match="shard 3 failed"), journal(log) as handler, journal(log):
        handler.open(tmp_path)
        raise RunError("shard 3 failed")
    lines = (tmp_path / LOG_NAME).read_text().splitlines()
    assert lines == ["error: shard 3 failed"]
