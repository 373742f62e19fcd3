"""A YAML document as plain data that remembers where every value came from.

Pipeline files are composed (not ``safe_load``-ed) so PyYAML's node marks
survive: every later error, from pydantic or from a plugin's config model,
is reported with its YAML path (``connectors[1].config.dir``) and line.
``${NAME}`` / ``${NAME:-default}`` are interpolated in strings on the way
(``$$`` is a literal ``$``); values that came from the environment are
remembered as secrets and redacted from every message.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

Loc = tuple[str | int, ...]
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def format_path(loc: Loc) -> str:
    """``("connectors", 1, "config", "dir")`` -> ``connectors[1].config.dir``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _IDENT.fullmatch(part):
            out += f".{part}" if out else part
        else:
            out += f"[{json.dumps(part)}]"
    return out


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One problem in a pipeline file: where (YAML path, 1-based line) and what."""

    path: str
    line: int | None
    message: str
    column: int | None = None

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message

    def format(self, filename: str) -> str:
        """``FILE:LINE: path: message``, the form editors and CI logs link to."""
        where = f"{filename}:{self.line}" if self.line is not None else filename
        return f"{where}: {self}"


_REFERENCE = re.compile(r"\$\$|\$\{([^}]*)\}|\$\{")
_VARIABLE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?::-(.*))?", re.S)
_STR_TAG = "tag:yaml.org,2002:str"
_MAX_DEPTH = 64
#: shorter values ("1", "on") are not hidden inside messages: they would garble them, and hide nothing
_MIN_REDACTED = 3


class YamlDocument:
    """A YAML document as plain data, with the mark of every node by path.

    Composing (rather than ``safe_load``) keeps PyYAML's node marks, so every
    later error can name the line it comes from.
    """

    def __init__(self, text: str, env: Mapping[str, str]) -> None:
        self.env = env
        self.marks: dict[Loc, yaml.Mark] = {}
        self.secret_paths: set[Loc] = set()
        self.secret_values: set[str] = set()
        self.unresolved: set[Loc] = set()
        self.problems: list[ConfigProblem] = []
        self.data: Any = None
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            if node is not None:
                self._loader = loader
                self.data = self._build(node, ())
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            what = " ".join(str(s) for s in (exc.context, exc.problem) if s)
            line = mark.line + 1 if mark else None
            column = mark.column + 1 if mark else None
            at = f" (column {column})" if column else ""
            self.problems.append(ConfigProblem("", line, f"invalid YAML: {what}{at}", column))
        except yaml.YAMLError as exc:
            self.problems.append(ConfigProblem("", None, f"invalid YAML: {exc}"))
        finally:
            loader.dispose()

    def problem(self, loc: Loc, message: str, mark: yaml.Mark | None = None) -> None:
        mark = mark or self.mark_for(loc)
        line = mark.line + 1 if mark else None
        self.problems.append(ConfigProblem(format_path(loc), line, self.redact(message)))

    def mark_for(self, loc: Loc) -> yaml.Mark | None:
        """The mark of the deepest node along ``loc`` that exists in the file."""
        for end in range(len(loc), -1, -1):
            mark = self.marks.get(loc[:end])
            if mark is not None:
                return mark
        return None

    def redact(self, message: str) -> str:
        for value in sorted(self.secret_values, key=len, reverse=True):
            message = message.replace(value, "***")
        return message

    def _build(self, node: yaml.Node, loc: Loc) -> Any:
        if len(loc) > _MAX_DEPTH:
            raise yaml.YAMLError(f"nesting deeper than {_MAX_DEPTH} levels (a recursive alias?)")
        self.marks.setdefault(loc, node.start_mark)
        if isinstance(node, yaml.MappingNode):
            self._loader.flatten_mapping(node)
            out: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                key = self._loader.construct_object(key_node, deep=True)
                if isinstance(key, (dict, list)):
                    self.problem(loc, "a mapping key must be a plain value", key_node.start_mark)
                    continue
                if key in out:
                    self.problem(loc + (key,), f"duplicate key {key!r}", key_node.start_mark)
                    continue
                # the key's line, not its value's: a block mapping value starts a line later
                self.marks[loc + (key,)] = key_node.start_mark
                out[key] = self._build(value_node, loc + (key,))
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self._build(item, loc + (i,)) for i, item in enumerate(node.value)]
        if isinstance(node, yaml.ScalarNode) and node.tag == _STR_TAG and "$" in node.value:
            return self._interpolate(node, loc)
        return self._loader.construct_object(node, deep=True)

    def _interpolate(self, node: yaml.ScalarNode, loc: Loc) -> Any:
        text: str = node.value
        secret = False

        def substitute(match: re.Match[str]) -> str:
            nonlocal secret
            whole = match.group(0)
            if whole == "$$":
                return "$"
            body = match.group(1)
            variable = _VARIABLE.fullmatch(body) if body is not None else None
            if variable is None:
                self.problem(
                    loc,
                    f"bad variable reference {whole!r}: write ${{NAME}} or ${{NAME:-default}}"
                    " ($$ for a literal $)",
                )
                self.unresolved.add(loc)
                return ""
            name, default = variable.group(1), variable.group(2)
            value = self.env.get(name)
            if value:
                secret = True
                if len(value) >= _MIN_REDACTED:
                    self.secret_values.add(value)
                return value
            if default is not None:
                return default
            if value is None:
                self.problem(
                    loc,
                    f"environment variable {name} is not set"
                    f" (export it, or give a default: ${{{name}:-default}})",
                )
                self.unresolved.add(loc)
            return ""

        result = _REFERENCE.sub(substitute, text)
        if secret:
            self.secret_paths.add(loc)
        if node.style is None and result != text:
            # a plain scalar keeps YAML's typing: "${PORT}" -> 5432 (an int)
            tag = self._loader.resolve(  # type: ignore[no-untyped-call]
                yaml.ScalarNode, result, (True, False)
            )
            typed = yaml.ScalarNode(tag, result, node.start_mark, node.end_mark)
            return self._loader.construct_object(typed, deep=True)
        return result
