"""YAML files read safely: ``load_yaml`` is ``yaml.safe_load`` that refuses a key given twice.

Only plain YAML data is built (no Python objects, as with ``yaml.safe_load``). A mapping that
gives one key twice, at any depth, raises :class:`DuplicateKeyError` (a ``yaml.YAMLError``)
naming the key path and both places, where PyYAML would silently keep the last value.
``yaml_error_text`` puts any YAML error on one line; ``plain_data`` turns dataclasses, paths and
tuples back into YAML-safe dicts, strings and lists.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml

from hetmpi._validate import join


class DuplicateKeyError(yaml.MarkedYAMLError):
    """A YAML mapping gives one key twice (YAML forbids it; PyYAML would keep the last)."""

    def __init__(self, key_path: str, first: yaml.Mark, second: yaml.Mark) -> None:
        self.key_path = key_path
        if first.line == second.line:
            columns = f"columns {first.column + 1} and {second.column + 1}"
            self.place = f"line {first.line + 1}, {columns}"
        else:
            self.place = f"lines {first.line + 1} and {second.line + 1}"
        super().__init__(problem=self.text(""), problem_mark=second)

    def text(self, where: str) -> str:
        """One line: the key path, ``where`` (" in FILE") and both places."""
        return f"{self.key_path}: given twice{where} ({self.place}); keep one"


class UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that raises DuplicateKeyError for a key given twice in one mapping, at
    any depth (keys brought in by a ``<<`` merge may still be overridden)."""

    def construct_document(self, node: yaml.Node) -> Any:
        self._check_unique(node, "", set())
        return super().construct_document(node)

    def _check_unique(self, node: yaml.Node, path: str, seen: set[int]) -> None:
        if id(node) in seen:
            return
        seen.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self._check_unique(item, f"{path}[{i}]", seen)
        if not isinstance(node, yaml.MappingNode):
            return
        marks: dict[Any, yaml.Mark] = {}
        for key_node, value_node in node.value:
            merge = key_node.tag == "tag:yaml.org,2002:merge"
            if merge or not isinstance(key_node, yaml.ScalarNode):
                self._check_unique(value_node, path, seen)
                continue
            key = self.construct_object(key_node, deep=True)
            if key in marks:
                raise DuplicateKeyError(join(path, key), marks[key], key_node.start_mark)
            marks[key] = key_node.start_mark
            self._check_unique(value_node, join(path, key), seen)


def load_yaml(text: str) -> Any:
    """``yaml.safe_load`` that refuses duplicate keys (DuplicateKeyError, a YAMLError)."""
    loader = UniqueKeyLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def yaml_error_text(exc: yaml.YAMLError) -> str:
    """A YAML parse error in one line: the problem and where it is."""
    if isinstance(exc, DuplicateKeyError):
        return exc.text("")
    mark = getattr(exc, "problem_mark", None)
    if isinstance(exc, yaml.MarkedYAMLError) and mark is not None:
        return f"{exc.problem} at line {mark.line + 1}, column {mark.column + 1}"
    return " ".join(str(exc).split())


def plain_data(obj: Any) -> Any:
    """Dataclasses, paths, tuples and mappings turned into dicts, strings and lists."""
    if is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: plain_data(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, Mapping):
        return {str(k): plain_data(x) for k, x in obj.items()}
    if isinstance(obj, list | tuple):
        return [plain_data(x) for x in obj]
    return obj
