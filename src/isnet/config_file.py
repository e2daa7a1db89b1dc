"""``--config FILE`` and ``--print-config``: a run's options in a YAML or JSON file, as LightningCLI has them.

One implementation for every command whose options come from a configuration dataclass
(``isnet train``: :class:`isnet.config.TrainConfig`; ``isnet segment train``:
:class:`isnet.segment.config.SegmentConfig`). The file is a mapping of option names, the
dataclass's field names (``batch_size``, ``C1``), as ``--print-config`` writes them and a run's
``config.json`` records them. A value comes from, by precedence: the command line, the file,
the default. A key that is not an option is refused, naming it; so is a value of the wrong type. An earlier
name of an option (:data:`isnet.config.RENAMED`: ``variant``) is read as today's, with a warning.
Relative paths are read from the current folder, as on the command line.

A run's own ``config.json`` (it records the fields that training resolves, such as
``num_classes``) reruns that run: the resolved fields are left out, and so are ``resume`` and
``overwrite`` (how that run was started) and the ``C1``/``C2`` bounds that its calibration
found (listed in its ``calibration`` record), so the rerun calibrates them again as the
original run did. Bounds the original run was given are kept.

This module imports no third-party package until a file is read or printed (PyYAML).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .config import BOUND_GROUPS, current_names, from_fields, validate_ranges
from .errors import UserError, UserFileNotFoundError
from .options import given_values, number

__all__ = ["RUN_STATE", "add_config_file_options", "command_options", "config_text", "read_config_file"]

RUN_STATE = ("resume", "overwrite")
"""Options a run's config.json records about how that run was started; a rerun from it leaves them out."""


def add_config_file_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--config FILE`` and ``--print-config`` to a command's parser."""
    parser.add_argument("--config", type=Path, metavar="FILE",
                        help="read options from a YAML or JSON file (keys: the option names with underscores, as "
                             "--print-config writes them; a run's config.json reruns that run); options given on the "
                             "command line override it")
    parser.add_argument("--print-config", action="store_true",
                        help="print every option with the value this command would use (YAML) and exit")


def _members(annotation: Any) -> tuple[Any, ...]:
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return typing.get_args(annotation)
    return (annotation,)


def _is(kind: Any, value: Any) -> bool:
    """Whether ``value`` has the type ``kind`` (an integer counts as a float, a bool as neither)."""
    if typing.get_origin(kind) is list:
        item = typing.get_args(kind)[0]
        return isinstance(value, list) and all(_is(item, v) for v in value)
    if kind is type(None):
        return value is None
    if kind in (int, float):
        return isinstance(value, (int, float) if kind is float else int) and not isinstance(value, bool)
    return isinstance(value, kind)


def _describe(kind: Any) -> str:
    names = {bool: "true or false", int: "an integer", float: "a number", str: "text", type(None): "null"}
    if typing.get_origin(kind) is list:
        return f"a list of {'integers' if typing.get_args(kind)[0] is int else 'names'}"
    return names.get(kind, str(kind))


def _checked(annotation: Any, key: str, value: Any, where: str) -> Any:
    """``value`` if it has the field's type (an integer for a float field as a float); a number that YAML read
    as text (``1e-3``) as the number; else a :class:`UserError` naming the key."""
    members = _members(annotation)
    for kind in members:
        if _is(kind, value):
            return float(value) if kind is float else value
    numeric = next((kind for kind in (float, int) if kind in members), None)
    if isinstance(value, str) and numeric is not None:
        try:
            return number(numeric)(value)
        except argparse.ArgumentTypeError:
            pass
    if str in members and _is(int, value):  # a name that YAML read as a number (a Sequential index: 6)
        return str(value)
    if list[str] in members and isinstance(value, list) and all(_is(int, v) or isinstance(v, str) for v in value):
        return [str(v) for v in value]
    expected = " or ".join(_describe(kind) for kind in members)
    quote = (" (YAML reads yes, no, on and off as true and false: quote the text)"
             if isinstance(value, bool) and str in members else "")
    raise UserError(f"{where}: {key} must be {expected}, got {value!r}{quote}")


def _load(path: Path) -> Any:
    text = path.read_text()
    if path.suffix.lower() == ".json":
        try:
            return json.loads(text)
        except ValueError as err:
            raise UserError(f"--config {path} is not valid JSON: {err}") from None
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise UserError(f"--config {path} is not valid YAML: {err}") from None


def _rerun(values: dict[str, Any], cls: type) -> dict[str, Any]:
    """A run's config.json without what that run resolved or recorded about its start (see the module)."""
    resolved = {f.name for f in dataclasses.fields(cls) if f.metadata.get("resolved")}
    calibration = values.get("calibration") or {}
    calibrated = {bound + suffix for suffix in BOUND_GROUPS for bound in ("C1", "C2") if bound + suffix in calibration}
    return {k: v for k, v in values.items() if k not in resolved | calibrated | set(RUN_STATE)}


def read_config_file(path: Path, cls: type, command: str) -> dict[str, Any]:
    """The options in a YAML or JSON file, checked against the fields of the dataclass ``cls``.

    Raises
    ------
    isnet.errors.UserError
        A missing or malformed file, a key that is not an option of ``command`` (named, with the
        closest option), or a value of the wrong type.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserFileNotFoundError(f"--config {path}: no such file")
    values = _load(path)
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise UserError(f"--config {path} must hold a mapping of option names to values, not a {type(values).__name__}")
    values = current_names(values, source=f"--config {path}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in values:
        if key not in fields:
            close = difflib.get_close_matches(str(key).replace("-", "_"), list(fields), n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]}?)" if close else " (--print-config lists the options)"
            raise UserError(f"--config {path}: {key!r} is not an option of {command}{hint}")
    if any(fields[key].metadata.get("resolved") for key in values):
        values = _rerun(values, cls)
    hints = typing.get_type_hints(cls)
    return {key: _checked(hints[key], key, value, f"--config {path}") for key, value in values.items()}


def config_text(cls: type, values: Mapping[str, Any], command: str) -> str:
    """Every option of ``cls`` with its value from ``values`` or its default, as YAML grouped like ``--help``."""
    import yaml

    config = from_fields(cls, values, command)
    validate_ranges(config)
    groups: dict[str, dict[str, Any]] = {}
    for f in dataclasses.fields(cls):
        if "help" in f.metadata:
            value = getattr(config, f.name)
            groups.setdefault(f.metadata["group"], {})[f.name] = str(value) if isinstance(value, Path) else value
    lines = [f"# {command}: the options this command would use (defaults, --config, then the command line)"]
    for group, options in groups.items():
        lines += [f"# {group}", yaml.safe_dump(options, sort_keys=False, default_flow_style=False).rstrip()]
    return "\n".join(lines) + "\n"


def command_options(args: argparse.Namespace, cls: type, command: str) -> dict[str, Any] | None:
    """The options ``command`` was given: its ``--config`` file's, overridden by the flags given.

    With ``--print-config`` they are printed (all options, YAML) and None is returned. Otherwise
    ``out`` is required, and ``train`` unless ``resume``.
    """
    values = read_config_file(args.config, cls, command) if args.config is not None else {}
    values.update(given_values(args, cls))
    if args.print_config:
        print(config_text(cls, values, command), end="")
        return None
    if "out" not in values:
        raise UserError("--out is required (on the command line, or as out: in --config)")
    if not values.get("resume") and "train" not in values:
        raise UserError("--train is required (unless --resume)")
    return values
