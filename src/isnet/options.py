"""Command-line options generated from a typed configuration dataclass.

Each field with ``help`` metadata (see :func:`isnet.config.option`) becomes one option of an
argument group: ``--field-name`` (or the field's ``flag``), typed from the annotation, with
the field's default shown in the help. Every option defaults to None on the command line,
so :func:`given_values` returns exactly what the user typed and the dataclass supplies the
rest; a resumed run can therefore tell a changed option from an unchanged one.

Annotations map to options as follows: ``bool`` gives ``--name/--no-name``; ``int``,
``float`` and ``str`` (optionally ``| None``) give one typed value; a union with a list gives
zero or more values (none meaning True, e.g. ``--deep-supervision`` alone); a union of
``int`` and ``str`` accepts a count, a comma-separated list of integers or a word (Lightning's
``--devices``). A number with a range in its metadata (``at_least``, ``above``, ``at_most``) is
checked as it is parsed, so a bad value is reported with its option name before anything runs.
An option renamed since (:data:`isnet.config.RENAMED`) also takes its earlier flag, hidden from
``--help``, which says once per command line that it is deprecated (``--variant``).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from .config import RENAMED, out_of_range
from .errors import UserError

__all__ = ["OneLineParser", "add_dataclass_options", "given_values", "named_tests", "number", "target"]


def _members(annotation: Any) -> tuple[Any, ...]:
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return tuple(a for a in typing.get_args(annotation) if a is not type(None))
    return (annotation,)


def _int_list_or_word(value: str) -> int | str | list[int]:
    if value.isdigit():
        return int(value)
    if "," in value:
        try:
            return [int(v) for v in value.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a count, a list such as 0,1, or a word; got {value!r}") from None
    return value


class OneLineParser(argparse.ArgumentParser):
    """An argument error as one line naming the option (no usage block), exit status 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def target(text: str) -> str:
    """An argparse ``type`` for the explained class: ``pred``, ``label`` or a class index."""
    if text in ("pred", "label") or text.isdigit():
        return text
    raise argparse.ArgumentTypeError(f"expected pred, label or a class index (0, 1, ...), got {text!r}")


def number(kind: type, *, at_least: float | None = None, above: float | None = None,
           at_most: float | None = None) -> Callable[[str], Any]:
    """An argparse ``type``: ``kind`` (int or float) parsed from the text and checked against the range."""
    return _ranged(kind, {"at_least": at_least, "above": above, "at_most": at_most})


def _ranged(kind: type, meta: Mapping[str, Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, "
                                             f"got {text!r}") from None
        problem = out_of_range(meta, value)
        if problem:
            raise argparse.ArgumentTypeError(problem)
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def _describe(default: Any) -> str:
    if default is None:
        return ""
    if isinstance(default, bool):
        return f" (default {'on' if default else 'off'})"
    return f" (default {default})"


def _kwargs(annotation: Any, meta: dict, default: Any) -> dict[str, Any]:
    members = _members(annotation)
    kwargs: dict[str, Any] = {"default": None, "help": meta["help"] + _describe(default)}
    if meta.get("metavar"):
        kwargs["metavar"] = meta["metavar"]
    if meta.get("choices"):
        kwargs["choices"] = list(meta["choices"])
    if members == (bool,):
        kwargs["action"] = argparse.BooleanOptionalAction
    elif any(typing.get_origin(m) is list for m in members) and bool in members:
        kwargs["nargs"] = "*"
    elif int in members and str in members:
        kwargs["type"] = _int_list_or_word
    elif len(members) == 1 and members[0] in (int, float):
        kwargs["type"] = _ranged(members[0], meta)
    elif members == (str,):
        kwargs["type"] = str
    else:
        raise TypeError(f"no command-line form for the annotation {annotation!r}")
    return kwargs


class _EarlierFlag(argparse.Action):
    """An option's earlier flag: stores the value as the option does, and says once that it is deprecated."""

    def __init__(self, option_strings: list[str], dest: str, *, current: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, **kwargs)
        self.current = current

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        warned = vars(namespace).setdefault("_deprecated_flags", set())
        if option_string not in warned:
            warned.add(option_string)
            print(f"{parser.prog}: warning: {option_string} is deprecated; use {self.current}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def _earlier_flags(name: str, kwargs: Mapping[str, Any], flag: str) -> tuple[list[str], dict[str, Any]] | None:
    """The hidden argument of a renamed field's earlier flag (``--variant``), or None."""
    earlier = [f"--{old.replace('_', '-')}" for old, new in RENAMED.items() if new == name]
    if not earlier:
        return None
    if "action" in kwargs or "nargs" in kwargs:
        raise TypeError(f"an earlier flag of {flag} needs a field with one value")
    hidden = {key: value for key, value in kwargs.items() if key != "required"}
    return earlier, {**hidden, "help": argparse.SUPPRESS, "action": _EarlierFlag, "current": flag}


def add_dataclass_options(parser: argparse.ArgumentParser, cls: type, *, required: Iterable[str] = ()) -> None:
    """Add one option per documented field of the dataclass ``cls``, in argument groups (and the hidden
    earlier flags of renamed fields)."""
    hints = typing.get_type_hints(cls)
    required = set(required)
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f in dataclasses.fields(cls):
        if "help" not in f.metadata:
            continue
        meta = f.metadata
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        group = groups.get(meta["group"]) or groups.setdefault(meta["group"], parser.add_argument_group(meta["group"]))
        flag = meta.get("flag") or "--" + f.name.replace("_", "-")
        kwargs = _kwargs(hints[f.name], meta, default)
        if f.name in required:
            kwargs["required"] = True
        group.add_argument(flag, dest=f.name, **kwargs)
        if (alias := _earlier_flags(f.name, kwargs, flag)) is not None:
            group.add_argument(*alias[0], dest=f.name, **alias[1])


def given_values(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The fields of ``cls`` given on the command line (an empty list stands for True)."""
    values = {}
    for f in dataclasses.fields(cls):
        value = getattr(args, f.name, None)
        if value is None:
            continue
        values[f.name] = True if value == [] else value
    return values


def named_tests(items: Iterable[str], option: str = "--test") -> dict[str, Path]:
    """The folders of repeated ``--test NAME=DIR`` options (or ``option``), by name; a malformed or repeated name
    is an error."""
    tests: dict[str, Path] = {}
    for item in items:
        name, sep, root = item.partition("=")
        if not sep or not name or not root:
            raise UserError(f"{option} expects NAME=DIR, got {item!r}")
        if name in tests:
            raise UserError(f"test set name {name!r} given twice")
        tests[name] = Path(root)
    return tests
