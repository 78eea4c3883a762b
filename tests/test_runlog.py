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


def test_a_long_shard_leaves_heartbeat_lines_until_progress_closes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Without a terminal, a line every heartbeat while shards run; none after close."""
    import time

    from hetmpi.progress import ShardProgress

    with caplog.at_level(logging.INFO, logger="hetmpi"):
        progress = ShardProgress(1, heartbeat=0.05)
        time.sleep(0.3)
        progress.close()
        beats = [r.getMessage() for r in caplog.records if r.getMessage().startswith("sampling:")]
        time.sleep(0.2)
        after = [r for r in caplog.records if r.getMessage().startswith("sampling:")]
    assert len(beats) >= 2
    assert beats[0].startswith("sampling: 0/1 shards done, ") and beats[0].endswith(" s elapsed")
    assert len(after) == len(beats)
