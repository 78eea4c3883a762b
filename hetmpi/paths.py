"""Paths from the user, checked before any work.

``path_problem`` says why the operating system cannot use a path (a NUL character, a name
over 255 bytes, ...); config path fields and every path argument and option use it.
``CheckedPath`` is click.Path that first refuses such a path with an InputError naming the
option. ``existing_file`` checks a file a command is about to read, ``check_output_file`` one
it is about to write.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Final

import click

from hetmpi.errors import InputError

NAME_MAX: Final = 255  # bytes in one file name (ext4, XFS, Btrfs, APFS, Lustre, GPFS)
PATH_MAX: Final = 4096  # bytes in a whole path, its final NUL included (Linux)


def brief_repr(value: object) -> str:
    """``repr(value)`` cut to at most 60 characters (ending in "...") for an error message."""
    shown = repr(value)
    return shown if len(shown) <= 60 else shown[:57] + "..."


def existing_file(path: str | os.PathLike[str], field: str) -> Path:
    """``path`` as a Path; an InputError naming ``field`` when the OS cannot use it, nothing
    is there, or it is a folder."""
    problem = path_problem(path)
    if problem is not None:
        raise InputError(f"{field}: {problem}")
    p = Path(path)
    if not p.exists():
        raise InputError(f"{field}: {p} does not exist")
    if p.is_dir():
        raise InputError(f"{field}: {p} is a folder; give a file")
    return p


def path_problem(value: str | os.PathLike[str]) -> str | None:
    """Why the operating system cannot use ``value`` as a path, or None: a NUL character, a
    character the file system encoding cannot write, a name over NAME_MAX bytes, or a path
    of PATH_MAX bytes or more."""
    text = os.fspath(value)
    if "\0" in text:
        shown = brief_repr(text)
        return f"contains a NUL character (\\0), which no path can hold, got {shown}; drop it"
    try:
        raw = os.fsencode(text)
    except UnicodeEncodeError as exc:
        bad = text[exc.start]
        return f"contains {bad!r}, which no file name can hold, got {brief_repr(text)}; remove it"
    longest = max(raw.split(b"/"), key=len)
    if len(longest) > NAME_MAX:
        return (
            f"has a name of {len(longest)} bytes, got {brief_repr(text)}; a file or folder name "
            f"may have at most {NAME_MAX} bytes, so shorten it"
        )
    if len(raw) >= PATH_MAX:
        return f"is {len(raw)} bytes long; a path may have at most {PATH_MAX - 1}, so shorten it"
    return None


def param_name(param: click.Parameter | None) -> str:
    """How the user spelled ``param``: its long option ("--output") or argument ("CONFIG")."""
    if isinstance(param, click.Option):
        return max(param.opts, key=len)
    return param.human_readable_name if param is not None else "path"


class CheckedPath(click.Path):
    """click.Path that raises InputError naming the parameter for a path the OS cannot use."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str | os.PathLike):
            problem = path_problem(value)
            if problem is not None:
                raise InputError(f"{param_name(param)}: {problem}")
        return super().convert(value, param, ctx)


def check_output_file(value: str | os.PathLike[str], option: str, *, overwrite: bool) -> Path:
    """``value`` as an absolute file path a command may create (or replace, with
    ``overwrite``); InputError naming ``option`` when it is a folder, already exists without
    ``overwrite``, or its folder can neither be found nor created."""
    problem = path_problem(value)
    if problem is not None:
        raise InputError(f"{option}: {problem}")
    path = Path(value).expanduser().absolute()
    try:
        if path.is_dir():
            raise InputError(
                f"{option}: {path} is a folder; give the file to write, e.g. {path / 'data.h5'}"
            )
        if not overwrite and (path.exists() or path.is_symlink()):
            raise InputError(f"{option}: {path} exists; pass --overwrite to replace it")
        ancestor = path.parent
        while not ancestor.exists():
            ancestor = ancestor.parent
    except OSError as exc:
        reason = exc.strerror or exc
        raise InputError(f"{option}: cannot use {path} ({reason}); choose another path") from None
    if not ancestor.is_dir():
        raise InputError(
            f"{option}: cannot create {path}: {ancestor} is a file, not a folder; "
            "choose another path"
        )
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise InputError(
            f"{option}: cannot create {path}: {ancestor} is not a folder you can write to; "
            "choose another path"
        )
    return path
