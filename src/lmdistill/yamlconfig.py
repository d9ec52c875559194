"""Typed YAML configs: a root dataclass whose fields are sections (dataclasses) or plain values.

Every field carries its help text (`setting(default, doc)`), so one place documents it. Loading checks
every key and type and turns each mistake into one `UserError` naming the key; `section.key=value`
overrides (values parsed as YAML) apply after the file.
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from dataclasses import field
from pathlib import Path
from typing import Any

import yaml

from lmdistill.errors import UserError


def setting(default: Any, doc: str) -> Any:
    """A config field: its default and its help text (the one place the key is documented); mutable
    defaults are copied per instance."""
    if isinstance(default, list | dict):
        return field(default_factory=lambda: type(default)(default), metadata={"help": doc})
    return field(default=default, metadata={"help": doc})


# Decimal and scientific notation; YAML 1.1 (PyYAML) reads `2e-5` (no dot) as a string.
_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` (from YAML) against annotation `tp`; ints and float notation such as `2e-5`
    (which YAML 1.1 leaves a string) are accepted for floats."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        for arg in options:
            try:
                return _coerce(value, arg, key)
            except UserError:
                continue
        if len(options) == 1:
            return _coerce(value, options[0], key)  # raises with the precise message
        names = " or ".join(_type_name(a) for a in args)
        raise UserError(f"{key}: expected {names}, got {value!r}")
    if origin is list:
        if not isinstance(value, list):
            raise UserError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)] if args else value
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
        return float(value)
    if tp is int and isinstance(value, bool):
        raise UserError(f"{key}: expected an integer, got {value!r}")
    if tp is dict and isinstance(value, dict):
        return value
    if _is_section(tp):  # an entry of a list of sections (`teachers:`): a mapping with the entry's keys
        return _entry(tp, value, key)
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise UserError(f"{key}: expected {_type_name(tp)}, got {value!r}")


def _entry(tp: type, value: Any, key: str):
    """A dataclass from a mapping, every key checked (`key.name` in messages)."""
    if not isinstance(value, dict):
        raise UserError(f"{key}: expected a mapping of {', '.join(f.name for f in dataclasses.fields(tp))}")
    hints = typing.get_type_hints(tp)
    unknown = [k for k in value if k not in hints]
    if unknown:
        raise UserError(f"{key}: unknown key {unknown[0]!r}; valid keys: {', '.join(sorted(hints))}")
    return tp(**{k: _coerce(v, hints[k], f"{key}.{k}") for k, v in value.items()})


def _list_entry(tp: Any) -> type | None:
    """The section type of a `list[Section]` field, else None."""
    args = typing.get_args(tp)
    return args[0] if typing.get_origin(tp) is list and args and _is_section(args[0]) else None


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    if typing.get_origin(tp) is list:
        return f"list[{_type_name(typing.get_args(tp)[0])}]" if typing.get_args(tp) else "list"
    return getattr(tp, "__name__", str(tp))


def _is_section(tp: Any) -> bool:
    return dataclasses.is_dataclass(tp)


def build(root: type, raw: dict, source: str):
    """Instantiate `root` from a nested dict, checking every key and value type."""
    hints = typing.get_type_hints(root)
    if not isinstance(raw, dict):
        raise UserError(f"{source}: the config must be a mapping of {', '.join(hints)}")
    kwargs = {}
    for name, values in raw.items():
        if name not in hints:
            raise UserError(f"{source}: unknown section {name!r}; sections are {', '.join(hints)}")
        if not _is_section(hints[name]):
            kwargs[name] = _coerce(values, hints[name], name)
            continue
        values = values or {}
        if not isinstance(values, dict):
            raise UserError(f"{source}: section {name!r} must be a mapping")
        section_hints = typing.get_type_hints(hints[name])
        section = {}
        for key, value in values.items():
            if key not in section_hints:
                raise UserError(
                    f"{source}: unknown key {name}.{key}; valid keys: {', '.join(sorted(section_hints))}"
                )
            section[key] = _coerce(value, section_hints[key], f"{name}.{key}")
        kwargs[name] = hints[name](**section)
    return root(**kwargs)


def parse_overrides(overrides: list[str]) -> dict:
    """`["distill.kd_ratio=0.3", "mode=cot"]` -> nested dict; values parsed as YAML."""
    nested: dict[str, Any] = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        parts = key.strip().split(".")
        if not sep or len(parts) > 2 or not all(parts):
            raise UserError(f"override {item!r}: expected section.key=value, e.g. distill.kd_ratio=0.3")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as e:
            raise UserError(f"override {item!r}: value is not valid YAML ({_yaml_problem(e)})") from None
        if len(parts) == 1:
            nested[parts[0]] = value
        else:
            nested.setdefault(parts[0], {})[parts[1]] = value
    return nested


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error: plain PyYAML keeps
    the last one and silently drops the first (a second `train:` section would replace the first)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                first = seen.setdefault(key, key_node.start_mark.line + 1)
            except TypeError:  # an unhashable key: PyYAML's own error follows
                continue
            if first != key_node.start_mark.line + 1:
                raise _DuplicateKey(key, first, key_node.start_mark.line + 1)
        return super().construct_mapping(node, deep=deep)


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key, first: int, again: int):
        super().__init__(f"{key!r} is given twice (line {first} and line {again})")
        self.key, self.first, self.again = key, first, again


def safe_load_unique(text: str) -> Any:
    """`yaml.safe_load`, refusing a key given twice in one mapping (`_DuplicateKey`, a YAMLError)."""
    return yaml.load(text, Loader=_UniqueKeyLoader)


def _yaml_problem(e: yaml.YAMLError) -> str:
    """A YAML error in one line (PyYAML's own message spans several, with a drawing of the spot)."""
    problem = getattr(e, "problem", None)
    context = getattr(e, "context", None)
    if problem:
        return f"{problem} ({context})" if context else problem
    return " ".join(str(e).split())


def load(root: type, path: str | os.PathLike | None, overrides: list[str] = ()):
    """Read a YAML file (or start from defaults when `path` is None), apply overrides, build `root`."""
    raw: dict = {}
    source = "overrides"
    if path is not None:
        source = str(path)
        p = Path(path)
        if not p.is_file():
            raise UserError(f"config file not found: {path}")
        from lmdistill.io import read_text

        try:
            raw = safe_load_unique(read_text(p)) or {}
        except _DuplicateKey as e:
            raise UserError(
                f"{path}:{e.again}: {e.key!r} is given twice (first on line {e.first}); YAML would keep only "
                "the last one: merge them into one"
            ) from None
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
            raise UserError(f"{where}: not valid YAML: {_yaml_problem(e)}") from None
        if not isinstance(raw, dict):
            raise UserError(
                f"{path}: the config must be a mapping of {', '.join(typing.get_type_hints(root))}"
            )
    for name, values in parse_overrides(list(overrides)).items():
        if isinstance(values, dict):
            current = raw.get(name) or {}
            if not isinstance(current, dict):
                raise UserError(f"{source}: section {name!r} must be a mapping")
            raw[name] = {**current, **values}
        else:
            raw[name] = values
    return build(root, raw, source)


def save(cfg: Any, path: str | os.PathLike) -> None:
    """Write a config as YAML, atomically (a reader never sees half a file)."""
    from lmdistill.io import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False))


def describe(root: type) -> str:
    """Every key of `root` with its default and help."""
    lines = []
    for top in dataclasses.fields(root):
        tp = typing.get_type_hints(root)[top.name]
        if not _is_section(tp):
            lines.append(f"{top.name}: {_default(top)!r}")
            lines.append(f"    {top.metadata.get('help', '')}")
            lines += _describe_entry(root, _list_entry(tp))
            continue
        lines.append(f"{top.name}:")
        for f_ in dataclasses.fields(tp):
            lines.append(f"  {f_.name}: {_default(f_)!r}")
            lines.append(f"      {f_.metadata.get('help', '')}")
    return "\n".join(lines)


def _describe_entry(root: type, entry: type | None) -> list[str]:
    """The keys of one entry of a list of sections; an entry that extends a section (as `teachers:`
    entries extend `teacher:`) names that section and lists only its own keys."""
    if entry is None:
        return []
    lines, inherited = [], set()
    hints = typing.get_type_hints(root)
    for base in entry.__mro__[1:]:
        section = next((name for name, tp in hints.items() if tp is base), None)
        if dataclasses.is_dataclass(base) and section:
            inherited = {f_.name for f_ in dataclasses.fields(base)}
            lines.append(f"  - every key of {section}: ({', '.join(sorted(inherited))}), and:")
            break
    for f_ in dataclasses.fields(entry):
        if f_.name not in inherited:
            lines.append(f"    {f_.name}: {_default(f_)!r}")
            lines.append(f"        {f_.metadata.get('help', '')}")
    return lines


def _default(f_: dataclasses.Field) -> Any:
    return f_.default_factory() if f_.default_factory is not dataclasses.MISSING else f_.default
