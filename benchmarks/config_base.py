"""What the benchmarks' YAML configs share: one error type, ``key=value`` overrides, pydantic validation.

Every part of a config is a :class:`Section` (a pydantic model: unknown keys refused, values not
coerced, so ``"3"`` is not an int and ``1`` is not ``true``). :func:`validate` applies the
``key=value`` overrides to the raw mapping FIRST and then validates the result once, so every
problem of the file and of the overrides comes back together in one :class:`ConfigError`, each
line named by its key path (``train.lr``, ``methods.lawa.k[0]``).

Example:
    >>> cfg = validate(MyConfig, yaml.safe_load(text), ["train.epochs=3"], source="my.yaml")
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from .config_files import resolve_config

__all__ = ["ConfigError", "Section", "apply_overrides", "config_diff", "load_yaml", "validate"]

M = TypeVar("M", bound=BaseModel)


class ConfigError(ValueError):
    """A config with problems; ``errors`` lists every one of them, ``source`` names the file."""

    def __init__(self, errors: Sequence[str], source: str = "config") -> None:
        self.errors = list(errors)
        self.source = source
        lines = "\n".join(f"  - {e}" for e in self.errors)
        super().__init__(f"{len(self.errors)} problem(s) in {source}:\n{lines}")


class Section(BaseModel):
    """A part of a config: strict types, no unknown keys, frozen; an empty YAML section is all defaults."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _empty_is_defaults(cls, data: Any) -> Any:
        return {} if data is None else data


def _set_path(raw: dict, dotted: str, value: Any) -> str | None:
    node = raw
    keys = dotted.split(".")
    for key in keys[:-1]:
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            return f"override {dotted}: {key!r} is not a section"
        node = child
    node[keys[-1]] = value
    return None


def _yaml(text: str) -> Any:
    """``yaml.safe_load`` that reads ``1e-3`` as a number, as YAML 1.2 does (PyYAML's YAML 1.1 resolver
    needs a dot, ``1.0e-3``, and gives the string ``'1e-3'`` otherwise)."""
    import re

    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
        list("-+0123456789"),
    )
    return yaml.load(text, Loader=Loader)  # noqa: S506 (a SafeLoader subclass)


def config_diff(old: Any, new: Any, where: str = "") -> list[str]:
    """``"dotted.key: old -> new"`` for every value that differs between two (nested) config dicts."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [line for k in sorted(set(old) | set(new), key=str)
                for line in config_diff(old.get(k), new.get(k), f"{where}.{k}" if where else str(k))]
    return [] if old == new else [f"{where}: {old!r} -> {new!r}"]


def apply_overrides(raw: dict, overrides: Sequence[str]) -> list[str]:
    """Set each ``dotted.key=value`` of ``overrides`` in ``raw`` (values parsed as YAML); the problems found."""
    import yaml

    errors = []
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            errors.append(f"override {item!r}: write it as key=value, e.g. train.epochs=3")
            continue
        try:
            value = _yaml(text)
        except yaml.YAMLError as err:
            errors.append(f"override {item!r}: the value is not valid YAML ({err})")
            continue
        problem = _set_path(raw, key.strip(), value)
        if problem:
            errors.append(problem)
    return errors


def load_yaml(path: str | Path) -> Any:
    """The parsed YAML file (a path, or a shipped config's name: :func:`.config_files.resolve_config`);
    :class:`ConfigError` if it is missing or not YAML."""
    import yaml

    try:
        path = resolve_config(path)  # a file, or a shipped config named (quick) or given by its path in a clone
    except FileNotFoundError as err:
        raise ConfigError([str(err)], str(path)) from err
    try:
        return _yaml(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError([f"not valid YAML: {err}"], str(path)) from err


def _where(loc: Sequence[int | str]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else ("." if out else "") + str(part)
    return out or "the config"


def _known_keys(model: type[BaseModel], loc: Sequence[int | str]) -> list[str]:
    node: Any = model
    for part in loc:
        field = node.model_fields.get(part) if isinstance(part, str) else None
        node = field.annotation if field is not None else None
        if not (isinstance(node, type) and issubclass(node, BaseModel)):
            return []
    return list(node.model_fields)


def _line(model: type[BaseModel], err: dict[str, Any]) -> str:
    where = _where(err["loc"])
    if err["type"] == "extra_forbidden":
        known = _known_keys(model, err["loc"][:-1])
        near = difflib.get_close_matches(str(err["loc"][-1]), known, n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        return f"{where}: unknown key{hint}; known keys: {', '.join(known)}"
    if err["type"] == "missing":
        return f"{where}: missing; give it a value"
    if err["type"] == "value_error":  # raised by a validator of ours or by a method checking its arguments
        msg = str(err["ctx"]["error"])
        return f"{where}: {msg}" if isinstance(err["input"], dict) else f"{where}: {err['input']!r} is invalid: {msg}"
    return f"{where}: {err['input']!r} is invalid: {err['msg'][:1].lower()}{err['msg'][1:]}"


def validate(model: type[M], raw: Any, overrides: Sequence[str] = (), source: str = "config",
             checks: Callable[[dict], list[str]] | None = None) -> M:
    """``raw`` (a parsed YAML file; None: all defaults) with ``overrides`` applied, validated into ``model``.

    Validators that compare sections (e.g. an epoch against ``train.epochs``) find the whole raw
    mapping, overrides applied, as ``info.context["config"]``. ``checks(raw)`` returns further
    problems found by other code (e.g. a method checking its own arguments); they are reported
    with pydantic's.

    Raises:
        ConfigError: listing every bad override, unknown key and invalid value at once.
    """
    raw = copy.deepcopy(raw) if raw is not None else {}
    if not isinstance(raw, dict):
        raise ConfigError([f"the top level must be a mapping of keys, got {type(raw).__name__}"], source)
    errors = apply_overrides(raw, overrides)
    cfg = None
    try:
        cfg = model.model_validate(raw, context={"config": raw})
    except ValidationError as err:
        errors += [_line(model, e) for e in err.errors()]
    if checks is not None:
        errors += checks(raw)
    if errors:
        raise ConfigError(errors, source)
    return cfg
