"""The ``scheduler:`` config section: a frozen SchedulerConfig checked field by field.

Every value that reaches a job script is checked here, before anything is rendered or
written: names against strict patterns, walltime as HH:MM:SS, counts as positive integers,
and no CR, LF or NUL anywhere. Problems are collected and raised together as one InputError,
one line per field ("scheduler.walltime: ...").
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, Final

from hetmpi._validate import Problems, int64_problem, join
from hetmpi.errors import InputError
from hetmpi.paths import brief_repr, path_problem

SCHEDULERS: Final = ("slurm", "pbs")
MODES: Final = ("mpi", "array", "sweep")
LAUNCHERS: Final = {"slurm": ("srun", "mpiexec"), "pbs": ("mpiexec",)}
DEFAULT_MAX_ARRAY_SIZE: Final = {"slurm": 1001, "pbs": 10000}

NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}")
JOB_NAME_RE: Final = re.compile(r"[A-Za-z][A-Za-z0-9_.+-]{0,63}")
CONSTRAINT_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+&|-]{0,63}")
FILESYSTEMS_RE: Final = re.compile(r"[a-z0-9_]+(:[a-z0-9_]+)*")
WALLTIME_RE: Final = re.compile(r"(\d{2,}):([0-5]\d):([0-5]\d)")
MEMORY_RE: Final = re.compile(r"[1-9]\d{0,8}[KMGT]")
MODULE_RE: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+/@:-]{0,127}")
ENV_NAME_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
DIRECTIVE_RE: Final = re.compile(r"--?[A-Za-z][A-Za-z0-9_-]*([ =][A-Za-z0-9_.,:=/@%+\[\]-]+)?")
LAUNCHER_ARG_RE: Final = re.compile(r"[A-Za-z0-9_.,:=/@%+-]{1,128}")
SELECT_EXTRA_RE: Final = re.compile(r"[a-z_][a-z0-9_]*=[A-Za-z0-9_.-]{1,64}")
SWEEP_NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
FORBIDDEN_CHARS: Final = ("\r", "\n", "\0")
SLURM_ONLY: Final = ("partition", "qos", "constraint")
PBS_ONLY: Final = ("queue", "filesystems", "select_extra")
SWEEP_RESERVED: Final = ("output", "scheduler")
_SECTION: Final = "scheduler"  # the key path every problem line starts with


@dataclass(frozen=True)
class SweepEntry:
    """One task of a sweep: a full run into OUT/sweep/<name>/ with ``overrides`` deep-merged
    into the run config (e.g. ``{"data": {"q_index": 3}}``)."""

    name: str
    overrides: Mapping[str, Any]


@dataclass(frozen=True)
class SchedulerConfig:
    """Checked scheduler settings. Counts are per node (ranks, GPUs) or per rank (CPUs);
    ``memory`` is per node (per task in array mode) like ``64G``; walltime is HH:MM:SS.
    ``launcher`` starts the ranks of mpi and sweep jobs (None: srun on Slurm, mpiexec on PBS).
    """

    scheduler: str
    walltime: str
    account: str | None = None
    queue: str | None = None
    partition: str | None = None
    qos: str | None = None
    constraint: str | None = None
    filesystems: str | None = None
    job_name: str = "hetmpi"
    nodes: int = 1
    ranks_per_node: int = 1
    cpus_per_rank: int = 1
    gpus_per_node: int = 0
    memory: str | None = None
    array_throttle: int | None = None
    max_array_size: int | None = None
    module_paths: tuple[str, ...] = ()
    modules: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    extra_directives: tuple[str, ...] = ()
    launcher: str | None = None
    launcher_args: tuple[str, ...] = ()
    select_extra: tuple[str, ...] = ()
    venv: str | None = None
    sweep: tuple[SweepEntry, ...] = ()

    @property
    def array_limit(self) -> int:
        """Slurm: array indices must be below this; PBS: at most this many subjobs."""
        if self.max_array_size is not None:
            return self.max_array_size
        return DEFAULT_MAX_ARRAY_SIZE[self.scheduler]

    @property
    def launch_command(self) -> str:
        """The program that starts the ranks: ``launcher``, else the scheduler's own."""
        return self.launcher or LAUNCHERS[self.scheduler][0]

    def to_mapping(self) -> dict[str, Any]:
        """The raw ``scheduler:`` mapping that from_mapping turns back into this config."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None or value == () or value == f.default:
                continue
            if f.name == "env":
                value = [f"{name}={text}" for name, text in value]
            elif f.name == "sweep":
                value = [{"name": e.name, "overrides": dict(e.overrides)} for e in value]
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out


def _clean(value: Any, key: str, problems: Problems) -> str | None:
    """``value`` as a string free of CR, LF and NUL, or None after recording a problem."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        problems.add(key, f"must be a string, got {brief_repr(value)}")
        return None
    text = str(value)
    if any(c in text for c in FORBIDDEN_CHARS):
        problems.add(key, "must not contain a carriage return, line feed or NUL character")
        return None
    return text


def _pattern(pattern: re.Pattern[str], hint: str) -> Callable[[Any, str, Problems], Any]:
    def parse(value: Any, key: str, problems: Problems) -> Any:
        text = _clean(value, key, problems)
        if text is None:
            return None
        if not pattern.fullmatch(text):
            problems.add(key, f"{hint}, got {brief_repr(text)}")
            return None
        return text

    return parse


def _walltime(value: Any, key: str, problems: Problems) -> Any:
    if isinstance(value, int) and not isinstance(value, bool):
        problems.add(
            key,
            f"must be a quoted HH:MM:SS string, got the number {value} (YAML reads an unquoted "
            '10:00:00 as seconds); write walltime: "10:00:00"',
        )
        return None
    text = _clean(value, key, problems)
    if text is None:
        return None
    match = WALLTIME_RE.fullmatch(text)
    if match is None:
        problems.add(
            key,
            "must be HH:MM:SS (e.g. 01:30:00; hours may have more digits), "
            f"got {brief_repr(text)}; a bare '10' or '10:00' means different things to PBS and "
            "Slurm",
        )
        return None
    if not any(int(part) for part in match.groups()):
        problems.add(key, "must be longer than 00:00:00")
        return None
    return text


def _count(low: int) -> Callable[[Any, str, Problems], Any]:
    def parse(value: Any, key: str, problems: Problems) -> Any:
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            what = "a positive integer" if low == 1 else f"an integer >= {low}"
            problems.add(key, f"must be {what}, got {brief_repr(value)}")
            return None
        problem = int64_problem(value)
        if problem is not None:
            problems.add(key, problem)
            return None
        return value

    return parse


def _string_list(item: Callable[[Any, str, Problems], Any]) -> Callable[..., Any]:
    def parse(value: Any, key: str, problems: Problems) -> Any:
        if isinstance(value, str) or not isinstance(value, Sequence):
            problems.add(key, f"must be a list, got {brief_repr(value)}")
            return None
        items = [item(entry, f"{key}[{i}]", problems) for i, entry in enumerate(value)]
        return None if any(x is None for x in items) else tuple(items)

    return parse


def _env_line(value: Any, key: str, problems: Problems) -> Any:
    text = _clean(value, key, problems)
    if text is None:
        return None
    name, sep, content = text.partition("=")
    if not sep or not ENV_NAME_RE.fullmatch(name):
        problems.add(
            key,
            f"must be NAME=value with NAME a shell identifier, got {brief_repr(text)}; "
            "the value is used literally (quoted, no $ expansion)",
        )
        return None
    return (name, content)


def _path(value: Any, key: str, problems: Problems) -> Any:
    if not isinstance(value, str):
        problems.add(key, f"must be a path string, got {brief_repr(value)}")
        return None
    text = _clean(value, key, problems)
    if text is not None and not text.strip():
        problems.add(key, "must be a non-empty path")
        return None
    if text is not None and path_problem(text) is not None:
        problems.add(key, str(path_problem(text)))
        return None
    return text


def _sweep_entry(value: Any, key: str, problems: Problems) -> Any:
    if not isinstance(value, Mapping):
        problems.add(key, f"must be a mapping with name and overrides, got {brief_repr(value)}")
        return None
    for extra in value:
        if extra not in ("name", "overrides"):
            problems.add(f"{key}.{extra}", "unknown key; a sweep entry has name and overrides")
            return None
    name = _pattern(SWEEP_NAME_RE, "must be letters, digits, _ . - (at most 64)")(
        value.get("name"), f"{key}.name", problems
    )
    overrides = value.get("overrides", {})
    if overrides is None:
        overrides = {}
    if not isinstance(overrides, Mapping):
        problems.add(
            f"{key}.overrides", f"must be a mapping of config keys, got {brief_repr(overrides)}"
        )
        return None
    for reserved in SWEEP_RESERVED:
        if reserved in overrides:
            problems.add(
                f"{key}.overrides.{reserved}",
                "cannot be overridden per sweep entry; each entry writes to OUT/sweep/<name>/",
            )
            return None
    return None if name is None else SweepEntry(name, overrides)


def _sweep(value: Any, key: str, problems: Problems) -> Any:
    entries = _string_list(_sweep_entry)(value, key, problems)
    if entries is None:
        return None
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        if entry.name in seen:
            problems.add(f"{key}[{i}].name", f"duplicate sweep name {entry.name!r}")
            return None
        seen.add(entry.name)
    return entries


def _one_of(choices: Sequence[str]) -> Callable[[Any, str, Problems], Any]:
    def parse(value: Any, key: str, problems: Problems) -> Any:
        if value in choices:
            return value
        allowed = " or ".join(f"'{c}'" for c in choices)
        problems.add(key, f"must be {allowed}, got {brief_repr(value)}")
        return None

    return parse


_NAME_HINT = "must be letters, digits, _ . + - (at most 64, starting with a letter or digit)"
_PARSERS: Final[dict[str, Callable[[Any, str, Problems], Any]]] = {
    "scheduler": _one_of(SCHEDULERS),
    "walltime": _walltime,
    "account": _pattern(NAME_RE, _NAME_HINT),
    "queue": _pattern(NAME_RE, _NAME_HINT),
    "partition": _pattern(NAME_RE, _NAME_HINT),
    "qos": _pattern(NAME_RE, _NAME_HINT),
    "constraint": _pattern(CONSTRAINT_RE, "must be a Slurm feature expression like gpu or cpu"),
    "filesystems": _pattern(FILESYSTEMS_RE, "must be names joined by ':' like home:eagle"),
    "job_name": _pattern(
        JOB_NAME_RE, "must start with a letter, then letters, digits, _ . + - (at most 64)"
    ),
    "nodes": _count(1),
    "ranks_per_node": _count(1),
    "cpus_per_rank": _count(1),
    "gpus_per_node": _count(0),
    "memory": _pattern(MEMORY_RE, "must be a whole number with a unit K, M, G or T like 64G"),
    "array_throttle": _count(1),
    "max_array_size": _count(1),
    "module_paths": _string_list(_path),
    "modules": _string_list(_pattern(MODULE_RE, "must be a module name like cray-python/3.11")),
    "env": _string_list(_env_line),
    "extra_directives": _string_list(
        _pattern(DIRECTIVE_RE, "must be one option like --mail-type=END or -l place=scatter")
    ),
    "launcher": _one_of(LAUNCHERS["slurm"]),  # every launcher runs on Slurm
    "launcher_args": _string_list(
        _pattern(LAUNCHER_ARG_RE, "must be one argument of letters, digits and _.,:=/@%+-")
    ),
    "select_extra": _string_list(
        _pattern(SELECT_EXTRA_RE, "must be key=value like system=polaris")
    ),
    "venv": _path,
    "sweep": _sweep,
}
_OPTIONAL: Final = {f.name for f in fields(SchedulerConfig) if f.default is None}


def from_mapping(raw: Mapping[str, Any] | None) -> SchedulerConfig:
    """Check a raw ``scheduler:`` mapping (profile already merged) and build the config.

    Raises InputError listing every problem, one line per field. A null value means "not
    set" for optional fields (so a config can drop a profile's value).
    """
    problems = Problems()
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise InputError(f"scheduler: must be a mapping of settings, got {brief_repr(raw)}")
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in _PARSERS:
            match = difflib.get_close_matches(str(key), list(_PARSERS), n=1)
            hint = f"did you mean '{match[0]}'?" if match else "see docs/hpc.md for the keys"
            problems.add(join(_SECTION, str(key)), f"unknown key; {hint}")
            continue
        if value is None and key in _OPTIONAL:
            continue
        parsed = _PARSERS[key](value, join(_SECTION, key), problems)
        if parsed is not None:
            values[key] = parsed
    for required in ("scheduler", "walltime"):
        if required not in raw:
            fix = "pass --scheduler slurm|pbs" if required == "scheduler" else 'e.g. "01:00:00"'
            problems.add(join(_SECTION, required), f"is required; {fix} (or pick a --profile)")
    _check_scheduler_fit(values, problems)
    if problems.lines:
        raise InputError("\n".join(problems.lines))
    return SchedulerConfig(**values)


def _check_scheduler_fit(values: Mapping[str, Any], problems: Problems) -> None:
    kind = values.get("scheduler")
    if kind is None:
        return
    other, own = (PBS_ONLY, "Slurm") if kind == "slurm" else (SLURM_ONLY, "PBS")
    for key in other:
        if key in values:
            alternative = {"queue": "partition", "partition": "queue"}.get(key)
            fix = f"use scheduler.{alternative}" if alternative else "remove it"
            problems.add(join(_SECTION, key), f"is not used by {own}; {fix}")
    launcher = values.get("launcher")
    if launcher is not None and launcher not in LAUNCHERS[kind]:
        problems.add(
            join(_SECTION, "launcher"),
            f"{launcher} needs Slurm; PBS jobs start their ranks with mpiexec",
        )


def check_array(sc: SchedulerConfig, indices: Sequence[int], what: str) -> None:
    """Raise InputError if an array over ``indices`` exceeds the scheduler's limit."""
    if not indices:
        raise InputError(f"{what}: nothing to run (no array indices)")
    limit = sc.array_limit
    if sc.scheduler == "slurm" and max(indices) >= limit:
        raise InputError(
            f"scheduler.max_array_size: {what} needs array index {max(indices)} but Slurm's "
            f"MaxArraySize is {limit} (indices 0..{limit - 1}); use fewer shards, mode mpi, "
            "or raise max_array_size if your cluster allows it (scontrol show config)"
        )
    if sc.scheduler == "pbs" and len(indices) > limit:
        raise InputError(
            f"scheduler.max_array_size: {what} needs {len(indices)} subjobs but the limit is "
            f"{limit}; use fewer shards, mode mpi, or raise max_array_size"
        )


def memory_for(sc: SchedulerConfig) -> str | None:
    """``memory`` spelled for the scheduler: Slurm 64G, PBS 64gb."""
    if sc.memory is None:
        return None
    return sc.memory if sc.scheduler == "slurm" else sc.memory[:-1] + sc.memory[-1].lower() + "b"
