"""Study specs: a TOML file (docs/DESIGN.md, "Study spec") parsed into a frozen Study that
expands into runs: the union of its arms (one `[grid]` table, or several `[[grid]]`
tables), each arm the product of its axes crossed with the top-level settings.

The keys, types and checks come from the settings declaration (bnstudy.config.settings): every
setting has one name everywhere, so the CLI flag `--limit-train` is the spec key
`limit_train` and the CSV/JSON field `limit_train`. Torch-free.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import stat
import tomllib
from dataclasses import dataclass
from pathlib import Path

from bnstudy.errors import UserError, printable
from bnstudy.config.settings import (
    BY_NAME,
    MAX_NAME_LENGTH,
    REQUIRED,
    RUN_SETTINGS,
    TYPE_WORDS,
    RunConfig,
    SettingError,
    applicable,
)

# ---------------------------------------------------------------- study specs
REQUIRED_SETTINGS = tuple(key for key in RUN_SETTINGS if BY_NAME[key].default is REQUIRED)
DEVICES = ("auto", "cpu", "cuda")
# `name` becomes RunConfig.study; `device` says how to run, not what, so it is no part of a run's identity.
STUDY_KEYS = ("name", "device", *RUN_SETTINGS)
NAME_PATTERN = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")  # a folder name under results/, never "." or ".."


Axes = tuple[tuple[str, tuple], ...]


@dataclass(frozen=True)
class Study:
    """A checked study spec: settings fixed for every run and arms, each a grid of axes whose
    product (crossed with the fixed settings) is its runs; the study's runs are the arms' union.

    `fixed` holds (key, value) pairs and each arm of `arms` (key, values) pairs in the spec's
    order, each value already of its setting's type (an integer lr is a float, so `lr = 1` and
    `lr = 1.0` are one run). A spec with one `[grid]` (or none) has one arm. `device` is None
    when the spec leaves it to the command line. `source` and `overrides` (the --set items)
    say where it came from.
    """

    name: str
    source: str
    fixed: tuple[tuple[str, object], ...]
    arms: tuple[Axes, ...]
    device: str | None = None
    overrides: tuple[str, ...] = ()

    @property
    def axes(self) -> Axes:
        """The axes of a study of one arm (ValueError for several: see `arms`)."""
        if len(self.arms) != 1:
            raise ValueError(f"study {self.name} has {len(self.arms)} arms ([[grid]] tables); read Study.arms")
        return self.arms[0]

    def arm_runs(self, arm: Axes) -> list[RunConfig]:
        """One RunConfig per point of `arm`, in spec order (the last axis varies fastest),
        each setting that does not apply to its run at its default (settings.applicable), so
        the list may repeat a run. Raises SettingError for an impossible combination."""
        keys = [key for key, _ in arm]
        return [
            RunConfig(study=self.name, **applicable({**dict(self.fixed), **dict(zip(keys, point))}))
            for point in itertools.product(*(values for _, values in arm))
        ]

    def runs(self) -> list[RunConfig]:
        """The runs of every arm in spec order, each once (where it first appears).
        Raises SettingError for an impossible combination."""
        return list(dict.fromkeys(config for arm in self.arms for config in self.arm_runs(arm)))

    def to_toml(self) -> str:
        """The spec as run: TOML that `load_study` reads back into the same runs."""
        origin = printable(" ".join([self.source, *(f"--set {item}" for item in self.overrides)]))
        lines = [f"# the study spec as run: {origin}", f"name = {_toml_value(self.name)}"]
        if self.device is not None:
            lines.append(f"device = {_toml_value(self.device)}")
        lines += [f"{key} = {_toml_value(value)}" for key, value in self.fixed]
        header = "[grid]" if len(self.arms) == 1 else "[[grid]]"
        for arm in self.arms:
            lines += ["", header] + [f"{key} = [{', '.join(map(_toml_value, values))}]" for key, values in arm]
        return "\n".join(lines) + "\n"


def _toml_value(value) -> str:
    """A str, int or float as a TOML literal (JSON's string escapes are valid TOML; repr keeps floats exact)."""
    return json.dumps(value) if isinstance(value, str) else repr(value)


@dataclass(frozen=True)
class _Problems:
    """Builds the one-line UserError `<file>: <key>: <problem>`, naming the --set item a key came from."""

    path: str
    set_by: dict

    def __call__(self, key: str, problem: str) -> UserError:
        origin = f" (from --set {self.set_by[key]})" if key in self.set_by else ""
        return UserError(f"{self.path}: {key}: {problem}{origin}")


def load_study(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Study:
    """Read the spec at `path`, apply `--set KEY=VALUE` overrides, check every key, type and
    value, and expand the grid once so that an impossible run is reported now.

    Raises UserError `<path>: <key>: <problem>` for the first mistake. Reads one file; writes nothing.
    """
    path = str(path)
    raw = _read_toml(path)
    grid = raw.pop("grid", {})
    problem = _Problems(path, {})
    arms = grid if isinstance(grid, list) else [grid]
    if not arms or not all(isinstance(arm, dict) for arm in arms):
        raise problem("grid", "must be a table of axes, [grid] then KEY = [values], or several [[grid]] tables")
    for item in overrides:
        _apply_override(raw, arms, item, problem)
    study = _build(raw, arms, path, tuple(overrides), problem)
    _check_size(study, problem)
    for number, arm in enumerate(study.arms, start=1):
        where = f" (in [[grid]] table {number})" if len(study.arms) > 1 else ""
        try:
            runs = study.arm_runs(arm)
        except SettingError as exc:
            axis_keys = {key for key, _ in arm}
            key = "name" if exc.key == "study" else f"grid.{exc.key}" if exc.key in axis_keys else exc.key
            raise problem(key, exc.problem + where) from None
        for key, values in arm:
            _check_applies(f"grid.{key}", key, values, runs, problem, where)
    runs = study.runs()
    for key, value in study.fixed:
        _check_applies(key, key, (value,), runs, problem, "")
    _check_distinct_ids(runs, problem)
    return study


def _check_applies(where: str, key: str, values: tuple, runs: list[RunConfig], problem: _Problems, arm: str) -> None:
    """UserError when a value other than the default of a setting that does not apply
    everywhere (bn_momentum, norm, ghost_batch_size, ...) is in none of `runs`: every run
    it was asked for ignores it (settings.applicable), so it would silently not be run."""
    setting = BY_NAME[key]
    if setting.inapplicable is None:
        return
    for value in values:
        if value != setting.default and not any(getattr(config, key) == value for config in runs):
            why = setting.inapplicable({**runs[0].identity(), key: value})
            raise problem(where, f"{value!r} applies to none of the runs{arm}: {why}")


MAX_RUNS = 100_000  # runs of one study; the largest shipped spec (full.toml) has 3,240, weeks of CPU time


def _check_size(study: Study, problem: _Problems) -> None:
    """UserError when the grid holds more than MAX_RUNS runs, from the product of the axes'
    lengths, before a run is made: planning 10^6 runs took 92 s and 1 GB, 10^8 a MemoryError."""
    sizes = [math.prod(len(values) for _, values in arm) for arm in study.arms]  # the arms' union is at most their sum
    size = sum(sizes)
    if size > MAX_RUNS:
        axes = " + ".join(" × ".join(f"{key} {len(values):,}" for key, values in arm) for arm in study.arms)
        raise problem("grid", f"{size:,} runs ({axes}); a study holds at most {MAX_RUNS:,}: shrink an axis or split "
                              "the study")  # fmt: skip


def _check_distinct_ids(runs: list[RunConfig], problem: _Problems) -> None:
    """UserError when two of a study's runs (distinct configs: the axes' values are) share a
    run_id, a collision of its hash (settings.RUN_ID_DIGITS: unlikely in any study, but
    one would count as the other's)."""
    seen: dict[str, RunConfig] = {}
    for config in runs:
        other = seen.setdefault(config.run_id, config)
        if other is not config:
            a, b = other.identity(), config.identity()
            differ = [key for key in a if a[key] != b[key]]
            words = [", ".join(f"{key} {values[key]}" for key in differ) for values in (a, b)]
            raise problem("grid", f"two runs share the run id {config.run_id} ({words[0]} and {words[1]}), a collision "
                                  "of its hash; change one of their values slightly")  # fmt: skip


MAX_SPEC_BYTES = 1 << 20  # the largest spec read; the shipped ones are under 2 kB


def _read_toml(path: str) -> dict:
    """The spec file's TOML; UserError unless it is a regular file of at most MAX_SPEC_BYTES
    of valid TOML (checked before reading: a FIFO would wait for a writer, /dev/zero never end)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # a FIFO opens at once, without a writer
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise UserError(f"{path}: not a regular file; a spec is a TOML file")
            with open(fd, "rb", closefd=False) as f:
                data = f.read(MAX_SPEC_BYTES + 1)
        finally:
            os.close(fd)
    except OSError as exc:
        raise UserError(f"{path}: cannot read the spec ({exc.strerror})") from None
    if len(data) > MAX_SPEC_BYTES:
        raise UserError(f"{path}: {max(info.st_size, len(data)):,} bytes; a spec is a small TOML file (at most 1 MB)")
    try:
        text = data.decode()
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a text file") from None
    try:
        return tomllib.loads(text)
    except (ValueError, RecursionError) as exc:  # TOMLDecodeError; an integer past 4,300 digits; deep nesting
        problem = "RecursionError: nested too deeply" if isinstance(exc, RecursionError) else exc
        raise UserError(f"{path}: not valid TOML ({problem})") from None


def parse_override_value(text: str):
    """A --set value read as TOML (`2`, `1e-3`, `[0, 1]`, `"x"`); a bare word such as `none` is
    that string. ValueError for a malformed list, table or quoted string."""
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except (ValueError, RecursionError) as exc:  # TOMLDecodeError; past 4,300 digits; nested too deeply
        word = text.strip()
        if not word or word[0] in "[{\"'" or not isinstance(exc, tomllib.TOMLDecodeError):
            hint = "quote the strings in a list: ['none', 'bn_after']"
            raise ValueError(f"{text!r} is not a TOML value ({hint})") from None
        return word


def _apply_override(top: dict, arms: list[dict], item: str, problem: _Problems) -> None:
    """Apply one `KEY=VALUE` (or `grid.KEY=[...]`) to the raw spec in place: a run setting moves
    to where --set puts it (top level, or an axis of every arm). Records the key's origin in
    `problem`."""
    if not item.isprintable():  # a newline or escape would garble the spec as run and every message
        raise UserError(f"{problem.path}: --set {printable(item)}: a control character; --set takes printable text")
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        example = "e.g. --set epochs=2 or --set grid.seed=[0,1]"
        raise UserError(f"{problem.path}: --set {item}: expected KEY=VALUE, {example}")
    problem.set_by[key] = item
    if key == "grid":
        raise problem(key, "set one axis at a time: --set grid.KEY=[values]")
    try:
        value = parse_override_value(text)
    except ValueError as exc:
        raise problem(key, str(exc)) from None
    if key.startswith("grid."):
        axis = key.removeprefix("grid.")
        top.pop(axis, None)
        for arm in arms:
            arm[axis] = value
    else:
        for arm in arms:
            arm.pop(key, None)
        top[key] = value


def _build(top: dict, arms: list[dict], path: str, overrides: tuple[str, ...], problem: _Problems) -> Study:
    """Check keys and types of the raw spec (top level and each arm's [grid]) and make the Study."""
    for key in top:
        if key not in STUDY_KEYS:
            raise problem(key, f"unknown key; the keys are {', '.join(STUDY_KEYS)} and [grid]")
    for grid in arms:
        for key in grid:
            if key in ("name", "device"):
                raise problem(f"grid.{key}", f"{key} cannot be an axis; set it at the top level")
            if key not in RUN_SETTINGS:
                raise problem(f"grid.{key}", f"unknown setting; axes can be {', '.join(RUN_SETTINGS)}")
            if key in top:
                raise problem(key, "set both at the top level and as a [grid] axis; keep one")
    for key in REQUIRED_SETTINGS:
        missing_in = [number for number, grid in enumerate(arms, start=1) if key not in top and key not in grid]
        if missing_in:
            where = f" (in [[grid]] table {missing_in[0]})" if len(arms) > 1 else ""
            raise problem(key, f"missing; set it at the top level or make it a [grid] axis{where}")
    name = top.get("name", Path(path).stem)
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name) or len(name) > MAX_NAME_LENGTH:
        raise problem("name", f"must be a folder name of at most {MAX_NAME_LENGTH} letters, digits, '.', '_' or "
                              f"'-' (got {name!r})")
    device = top.get("device")
    if device is not None and device not in DEVICES:
        raise problem("device", f"unknown device {device!r}; expected one of {', '.join(DEVICES)}")
    fixed = tuple((key, _typed(key, value, problem)) for key, value in top.items() if key in RUN_SETTINGS)
    arms_ = tuple(tuple((key, _axis(key, values, problem)) for key, values in grid.items()) for grid in arms)
    return Study(name, path, fixed, arms_, device, overrides)


def _typed(key: str, value, problem: _Problems, where: str | None = None):
    """`value` as run setting `key`'s type (an int becomes a float for a float setting)."""
    kind = BY_NAME[key].kind
    accepted = (int, float) if kind is float else kind
    if isinstance(value, bool) or not isinstance(value, accepted):
        hint = f"; to vary it, make it a [grid] axis: grid.{key} = [...]" if isinstance(value, list) else ""
        raise problem(where or key, f"must be {TYPE_WORDS[kind]} (got {value!r}){hint}")
    typed = float(value) if kind is float else value
    wrong = BY_NAME[key].problem(typed)  # now, before a grid point is read as a run (settings.applicable)
    if wrong:
        raise problem(where or key, wrong)
    return typed


def _axis(key: str, values, problem: _Problems) -> tuple:
    """A checked [grid] axis: a non-empty list of distinct values of the setting's type."""
    where = f"grid.{key}"
    if not isinstance(values, list):
        raise problem(where, f"must be a list of values (got {values!r}); to fix one value, set {key} at the top level")
    if not values:
        raise problem(where, "empty axis; give at least one value")
    typed = [_typed(key, value, problem, where) for value in values]
    seen = set()  # values of one type, all hashable; a set, not pairwise: an axis may hold 10^5 values
    for value in typed:
        if value in seen:
            raise problem(where, f"duplicate value {value!r}")
        seen.add(value)
    return tuple(typed)
