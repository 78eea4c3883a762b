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


def test_heartbeat_lines_tell_the_iterations_of_the_running_units(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Each running unit listed with its shard, chains and iterations; more than
    LISTED_UNITS summed; a unit whose process finished leaves the line."""
    import time

    from hetmpi.progress import LISTED_UNITS, ShardProgress

    def beats_while(told: list[tuple]) -> list[str]:
        caplog.clear()
        progress = ShardProgress(9, heartbeat=0.05)
        for process, key, done, total in told:
            progress.iterations(process, key, done, total)
        time.sleep(0.3)
        progress.close()
        return [r.getMessage() for r in caplog.records if r.getMessage().startswith("sampling:")]

    with caplog.at_level(logging.INFO, logger="hetmpi"):
        two = beats_while([(0, (3, (0,)), 50, 600), (2, (1, (0, 1)), 100, 600)])
        gone = beats_while([(0, (3, (0,)), 50, 600), (0, None, 0, 0)])
        many = beats_while([(k, (k, (0,)), 100 * k, 600) for k in range(LISTED_UNITS + 1)])
    assert two and all(
        line.endswith(" s elapsed; running: shard 1 chains [0, 1] 100/600, "
                      "shard 3 chains [0] 50/600 iterations") for line in two
    )  # fmt: skip
    assert gone and all(line.endswith(" s elapsed") for line in gone)
    total = 600 * (LISTED_UNITS + 1)
    done = sum(100 * k for k in range(LISTED_UNITS + 1))
    expected = f"running: {LISTED_UNITS + 1} units at {done}/{total} iterations"
    assert many and all(expected in line for line in many)
