"""Pipeline recipes: one TOML file per teacher -> student experiment, read into frozen dataclasses.

Each concept owns its dataclass beside its code (``GeometryConfig`` in ``data.geometry``, ``ModelConfig``
in ``archs``, ...); this module only assembles them into a ``Recipe``, checking every key and type so a
typo fails at once with the key's full name instead of being silently ignored. None of them imports torch,
so reading and checking a recipe (``frs recipe``) takes a fraction of a second.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from frs_cli.archs import ModelConfig, arch_spec, default_anchor_size
from frs_cli.cache.config import CacheConfig
from frs_cli.data.config import DataConfig
from frs_cli.data.geometry import GeometryConfig, canonical_view, view_short_side
from frs_cli.errors import ConfigError, FrsError, ModelError
from frs_cli.files import missing_file
from frs_cli.train.config import DistillConfig, TrainConfig, schedule_table

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recipe:
    name: str = "experiment"  # a label for logs and summaries
    data: DataConfig = field(default_factory=DataConfig)
    geometry: GeometryConfig = field(default_factory=GeometryConfig)
    teacher: ModelConfig = field(default_factory=ModelConfig)
    student: ModelConfig = field(default_factory=ModelConfig)
    teacher_train: TrainConfig = field(default_factory=TrainConfig)  # schedule for `frs train --role teacher`
    train: TrainConfig = field(default_factory=TrainConfig)  # student schedule: baseline and distillation
    distill: DistillConfig = field(default_factory=DistillConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def train_config(self, role: str) -> TrainConfig:
        return getattr(self, schedule_table(role))

    def model_config(self, role: str) -> ModelConfig:
        return self.teacher if role == "teacher" else self.student


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _expected(tp) -> str:
    """What a value of the annotation ``tp`` must be, as ``_convert``'s errors say it."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return "a table"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_expected(arg) for arg in typing.get_args(tp) if arg is not type(None))
    if origin is typing.Literal:
        return f"one of {', '.join(map(repr, typing.get_args(tp)))}"
    if origin in (tuple, list):
        return "a list"
    return {float: "a number", int: "an integer"}.get(tp) or _type_name(tp)


def _convert(value: Any, tp, key: str):
    """Check ``value`` (from TOML) against the annotation ``tp``; return it in the field's type."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"recipe key '{key}': expected {_expected(tp)}, got {type(value).__name__} {value!r}")
        return _build(tp, value, key)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arg in typing.get_args(tp):
            if arg is type(None):
                if value is None:
                    return None
                continue
            try:
                return _convert(value, arg, key)
            except ConfigError as exc:
                errors.append(exc)
        inner = [e for e in errors if not str(e).startswith(f"recipe key '{key}': ")]
        if inner:  # an alternative took the value's form and refused something inside it: that is the mistake
            raise inner[0]
        if len(errors) > 1:  # every alternative refused its form: name them all ("an integer or one of 'auto'")
            raise ConfigError(f"recipe key '{key}': expected {_expected(tp)}, got {type(value).__name__} {value!r}")
        raise errors[0] if errors else ConfigError(f"recipe key '{key}': unexpected value {value!r}")
    if origin is typing.Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"recipe key '{key}': expected {_expected(tp)}, got {value!r}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"recipe key '{key}': expected {_expected(tp)}, got {type(value).__name__} {value!r}")
        args = typing.get_args(tp)
        item_tp = args[0] if args else Any
        items = [_convert(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if tp is Any:
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"recipe key '{key}': expected {_expected(tp)}, got {type(value).__name__} {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"recipe key '{key}': expected {_expected(tp)}, got {type(value).__name__} {value!r}")
        return value
    if tp in (bool, str):
        if not isinstance(value, tp):
            raise ConfigError(
                f"recipe key '{key}': expected {_expected(tp)}, got {type(value).__name__} {value!r}"
            )
        return value
    raise ConfigError(f"recipe key '{key}': unsupported type {_type_name(tp)}")


def _build(cls, table: dict, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in table.items():
        full = f"{prefix}.{key}" if prefix else key
        if key not in names:
            valid = ", ".join(sorted(names))
            raise ConfigError(f"recipe key '{full}': unknown key (valid keys here: {valid})")
        kwargs[key] = _convert(value, hints[key], full)
    try:
        return cls(**kwargs)
    except FrsError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"recipe table '{prefix or '<top>'}': {exc}") from exc


def parse_override(text: str) -> tuple[list[str], Any]:
    """``'train.lr=0.02'`` -> (['train', 'lr'], 0.02). The value is read as TOML, bare words as strings."""
    if "=" not in text:
        raise ConfigError(f"--set: expected KEY=VALUE (for example train.epochs=2), got {text!r}")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"--set: expected KEY=VALUE with a non-empty key, got {text!r}")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.split("."), value


def apply_overrides(table: dict, overrides: list[str]) -> dict:
    out = dict(table)
    for text in overrides:
        path, value = parse_override(text)
        node = out
        for part in path[:-1]:
            child = node.get(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {text!r}: '{part}' is not a table")
            child = dict(child)
            node[part] = child
            node = child
        node[path[-1]] = value
    return out


def recipe_from_dict(table: dict) -> Recipe:
    recipe = _resolve_cache_split(_build(Recipe, table))
    check_values(recipe)
    return _resolve_views(_resolve_distill_weights(recipe))


def check_values(recipe: Recipe) -> None:
    """Values every key's type allows but no run can use (a negative learning rate, zero epochs, ...):
    ConfigError naming the key, what was expected and what arrived. Each table's dataclass says what it
    accepts in its ``check(table_name)``."""
    for role in ("teacher", "student"):
        arch = getattr(recipe, role).arch
        try:
            arch_spec(arch)
        except ModelError as exc:  # the registry's refusal, told as the recipe key it came from
            raise ConfigError(f"recipe key '{role}.arch': expected an arch `frs models` lists, got unknown arch {arch!r}",
                              hint=exc.hint) from None
    for f in dataclasses.fields(recipe):
        value = getattr(recipe, f.name)
        if hasattr(value, "check"):
            value.check(f.name)


def _resolve_cache_split(recipe: Recipe) -> Recipe:
    """``cache.split`` names a role, "train" or "val"; the folder is ``data.train`` / ``data.val``, so a recipe
    names each split's folder once. The resolved recipe holds the folder name in ``cache.split`` (what the
    cache writer reads and records). A folder name equal to ``data.train`` or ``data.val`` is accepted as an
    alias (recipes written before roles); anything else is refused, as overriding one without the other would
    send teacher-cache to the wrong annotation file."""
    split, data = recipe.cache.split, recipe.data
    roles = {"train": data.train, "val": data.val}
    if split in roles:
        folder = roles[split]
    elif split in roles.values():
        folder = split
    else:
        raise ConfigError(f"recipe key 'cache.split': expected 'train' or 'val' (the folder comes from data.train = "
                          f"{data.train!r} or data.val = {data.val!r}), got {split!r}",
                          hint="name the folder in data.train or data.val only, and the role in cache.split")
    return dataclasses.replace(recipe, cache=dataclasses.replace(recipe.cache, split=folder))


def _resolve_distill_weights(recipe: Recipe) -> Recipe:
    """``distill.alpha`` and ``distill.beta`` left out of the recipe are the student family's official FRS weights
    (``DistillConfig.for_family``); the resolved recipe holds the numbers (``frs recipe show``, a run's recipe.json)."""
    family = arch_spec(recipe.student.arch).family
    return dataclasses.replace(recipe, distill=recipe.distill.for_family(family))


def _resolve_views(recipe: Recipe) -> Recipe:
    """``cache.views`` in their one spelling under ``geometry`` (``orig@800`` is ``orig`` at min_size 800), each once
    and within ``geometry.max_size``, as are ``train.min_sizes`` and ``teacher_train.min_sizes``. Whether the views
    fit the student's training scales is checked by the commands that write or read a cache
    (``CacheConfig.check_training_scales``)."""
    geometry = recipe.geometry
    views = tuple(canonical_view(v, geometry) for v in recipe.cache.views)
    sides = [(f"{table}.min_sizes", size, size) for table in ("train", "teacher_train")
             for size in getattr(recipe, table).min_sizes]
    for key, size, given in sides + [("cache.views", view_short_side(v, geometry), repr(v)) for v in views]:
        if size > geometry.max_size:
            raise ConfigError(f"recipe key '{key}': expected short sides of at most geometry.max_size "
                              f"({geometry.max_size}), got {given}")
    if len(set(views)) != len(views):
        raise ConfigError(f"recipe key 'cache.views': expected each view once, got {list(recipe.cache.views)} "
                          f"(at geometry.min_size = {geometry.min_size} a view needs no '@{geometry.min_size}')")
    return dataclasses.replace(recipe, cache=dataclasses.replace(recipe.cache, views=views))


EXTENDS_KEY = "extends"  # top-level recipe key: the path of a base recipe, relative to the file naming it


def installed_recipes() -> Path:
    """The folder of the recipes installed with frs; ``pipelines/`` in the project's source links to them."""
    from importlib import resources

    return Path(str(resources.files("frs_cli") / "recipes"))


def recipe_path(path: str | Path) -> Path:
    """The recipe file ``path`` names: itself where it is a file; for a bare name ``X``, the file ``X.toml`` here;
    else the installed recipe it names, so that ``pipelines/X.toml`` (as the examples write it) works from any
    folder and ``X`` or ``X.toml`` names recipe X; else ``path``, which reading then refuses naming it. An absolute
    path, or one through ``..``, is never replaced by an installed recipe; a folder is no recipe."""
    p = Path(path)
    if p.is_file() or p.is_symlink() or p.is_absolute() or ".." in p.parts:  # a dangling link is named as one
        return p
    if len(p.parts) == 1 and p.suffix != ".toml" and p.with_name(p.name + ".toml").is_file():
        return p.with_name(p.name + ".toml")
    parts = p.parts[1:] if p.parts[:1] == ("pipelines",) else p.parts if len(p.parts) == 1 else ()
    if not parts:
        return p
    installed = installed_recipes().joinpath(*parts)
    for candidate in (installed, installed.with_name(installed.name + ".toml")):
        if candidate.suffix == ".toml" and candidate.is_file():
            log.info("recipe %s: not a file here; reading the one installed with frs, %s", p, candidate)
            return candidate
    return p


def _installed_hint(p: Path) -> str | None:
    """Where to find the installed recipes, for a ``p`` that names none of them and no file, else None."""
    if len(p.parts) > 1 and p.parts[0] != "pipelines":
        return None
    return "frs recipe list names the recipes installed with frs; -p NAME or -p pipelines/NAME.toml reads one " \
           "from any folder"


def _read_toml(p: Path, named_by: Path | None) -> dict:
    if not p.is_file():
        where = f" (extends of {str(named_by)!r})" if named_by is not None else ""
        raise ConfigError(f"recipe: expected a TOML file, but {str(p)!r} {missing_file(p)}{where}",
                          hint="extends is relative to the recipe file that names it" if named_by else
                          _installed_hint(p))
    try:
        return tomllib.loads(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"recipe {str(p)!r}: expected a UTF-8 TOML text file, got bytes that are not UTF-8 text "
                          f"(byte {exc.start}: {exc.object[exc.start:exc.start + 1]!r})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"recipe {str(p)!r}: not valid TOML ({exc})") from exc


def _check_keys(table: dict, cls, source: Path, prefix: str = "") -> None:
    """Unknown keys of one file, named with that file (types are checked once, on the merged table)."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    for key, value in table.items():
        full = f"{prefix}.{key}" if prefix else key
        if key not in names:
            raise ConfigError(f"recipe key '{full}': unknown key in {str(source)!r} "
                              f"(valid keys here: {', '.join(sorted(names))})")
        if isinstance(value, dict) and dataclasses.is_dataclass(hints[key]):
            _check_keys(value, hints[key], source, full)


def merge_tables(base: dict, child: dict) -> dict:
    """``child`` over ``base``, key by key: tables merge recursively, anything else (lists too) is replaced."""
    out = dict(base)
    for key, value in child.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_tables(out[key], value)
        else:
            out[key] = value
    return out


def resolve_extends(path: str | Path) -> dict:
    """The recipe table of ``path`` with its ``extends`` chain applied, ``extends`` itself removed.

    ``extends = "base.toml"`` (relative to the file that says it) loads that recipe first, then the file's own
    keys override it key by key (``merge_tables``); a base may extend another. Every file's keys are checked
    against the recipe's schema, so an unknown key names the file it is in. ``ConfigError`` for a missing
    base file, a cycle, an ``extends`` that is not a string, or an unknown key.
    """
    return _merged(_extends_chain(path))


def _merged(chain: list[tuple[Path, dict]]) -> dict:
    """The tables of an ``extends`` chain merged: the deepest base first, the named file last."""
    merged: dict = {}
    for _, table in reversed(chain):
        merged = merge_tables(merged, table)
    return merged


def _extends_chain(path: str | Path) -> list[tuple[Path, dict]]:
    """``(file, its own table)`` from the named file down its ``extends`` chain (``resolve_extends``' checks)."""
    chain: list[Path] = []
    tables: list[dict] = []
    first = p = recipe_path(path)
    named_by = None
    while True:
        resolved = p.resolve()
        if resolved in chain:
            names = " -> ".join(repr(str(c)) for c in [*chain, resolved])
            raise ConfigError(f"recipe extends: expected a chain of distinct files, got a cycle: {names}")
        table = _read_toml(p, named_by)
        base = table.pop(EXTENDS_KEY, None)
        _check_keys(table, Recipe, p)
        chain.append(resolved)
        tables.append(table)
        if base is None:
            break
        if not isinstance(base, str) or not base:
            raise ConfigError(f"recipe {str(p)!r}: expected 'extends' to be a file name, got {base!r}")
        named_by, p = p, p.parent / base
    return list(zip([first, *chain[1:]], tables))  # the named file as given (or the installed one), its bases resolved


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read a recipe TOML file (its ``extends`` chain resolved); ``overrides`` are ``KEY=VALUE`` strings
    applied on top (``--set``). A value of the wrong type names where it was set: the ``--set`` (with how to
    quote a string) or the file of the chain."""
    chain = _extends_chain(path)
    try:
        return recipe_from_dict(apply_overrides(_merged(chain), overrides or []))
    except ConfigError as exc:
        raise _where_set(exc, chain, overrides or []) from None


def _where_set(exc: ConfigError, chain: list[tuple[Path, dict]], overrides: list[str]) -> ConfigError:
    """``exc`` about ``recipe key 'K'``, told where K was set: the last ``--set K=...``, else the first file of
    the chain whose own table holds K; other errors as they are."""
    found = re.match(r"recipe key '([^'\[]+)", exc.message)
    if not found:
        return exc
    key = found.group(1)
    given = [text for text in overrides if text.split("=", 1)[0].strip() == key]
    if given:
        hint = f"from --set {given[-1]}"
        name, _, raw = given[-1].partition("=")
        if "expected str" in exc.message:
            hint += f"; a value TOML reads as a number, boolean or list is given as a string quoted: --set '{name}=\"{raw}\"'"
        elif "got str" in exc.message and (number := _python_number(raw, "expected an integer" in exc.message)):
            hint += f"; TOML writes this number {number}: --set {name}={number}"
        return ConfigError(exc.message, hint=f"{hint}; {exc.hint}" if exc.hint else hint)
    for file, table in chain:
        node: Any = table
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None:
            return ConfigError(f"{exc.message}, in {str(file)!r}", hint=exc.hint)
    return exc


def _python_number(raw: str, integer: bool) -> str | None:
    """``raw`` in TOML's spelling where Python reads it as a number TOML does not (``.5``, ``5.``), else None."""
    try:
        tomllib.loads(f"v = {raw}")
        return None  # TOML reads it: its spelling is not the mistake
    except tomllib.TOMLDecodeError:
        pass
    try:
        value = float(raw.strip())
    except ValueError:
        return None
    if integer and value.is_integer():
        return str(int(value))
    return repr(value) if math.isfinite(value) else None


def recipe_to_toml(recipe: Recipe) -> str:
    """The whole recipe, every key with its value (defaults included), as TOML that ``load_recipe`` reads back.
    ``cache.split`` is written as the role it resolved from, "train" or "val" (the resolved recipe holds the
    folder), so that ``--set data.train=...`` on the printed recipe moves the cache with it, as on the source."""
    table = recipe.to_dict()
    split = table["cache"]["split"]
    roles = [role for role in ("train", "val") if table["data"][role] == split]
    table["cache"]["split"] = roles[0] if roles else split
    lines = [f"{key} = {_toml_value(value)}" for key, value in table.items() if not isinstance(value, dict)]
    for key, value in table.items():
        if isinstance(value, dict):
            lines += ["", f"[{key}]"]
            lines += [f"{k} = {_toml_value(v)}{_meaning(key, k, value)}" for k, v in value.items() if v is not None]
    return "\n".join(lines) + "\n"


def _meaning(table: str, key: str, values: dict) -> str:
    """A TOML comment saying what a model key's 0 ("the arch's own") comes to for the table's arch, else ""."""
    if table not in ("teacher", "student") or values[key] != 0:
        return ""
    if key == "nms_thresh":
        return f"  # 0: {values['arch']}'s own, {arch_spec(values['arch']).nms_iou()}"
    if key == "anchor_size":
        return f"  # 0: {values['arch']}'s own, {default_anchor_size(values['arch'])} px"
    return ""


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise ConfigError(f"recipe_to_toml: expected TOML-representable values, got {type(value).__name__} {value!r}")
