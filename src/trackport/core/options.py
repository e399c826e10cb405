"""The options a command runs with, typed and checked once, before any work.

`Options` is what every connector receives (`open_source`, `open_sink`, `RunPlan.options`):
the run-wide settings as typed attributes, and each connector's own declared options
(`ConnectorSpec.options`) by name, each value checked against its declared kind.  A name no
installed connector declares is refused where it is given (a typo in a script fails at
once) and where it is read (`get` of an undeclared name is a bug in the connector).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Iterator

from .errors import UsageError

# Run-wide settings a connector may read with `get` as well (they are attributes first).
_RUN_WIDE = ("workers", "allow_drops")


def _declared() -> dict[str, Any]:
    from .registry import connector_options

    return {option.name: option for option in connector_options()}


def _coerce(option, value: Any, origin: str) -> Any:
    """`value` as `option`'s kind, or a UsageError naming where it came from."""
    flag = option.flag
    if option.kind == "flag":
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off", ""):
            return False
        raise UsageError(f"{origin}: {flag} takes true or false, not {value!r}")
    if option.kind in ("int", "count"):
        if isinstance(value, bool):
            raise UsageError(f"{origin}: {flag} takes a whole number, not {value!r}")
        try:
            number = int(value) if not isinstance(value, float) or value.is_integer() else None
        except (TypeError, ValueError):
            number = None
        if number is None:
            raise UsageError(f"{origin}: {flag} takes a whole number, not {value!r}")
        low = 1 if option.kind == "int" else 0
        if number < low:
            raise UsageError(f"{origin}: {flag} must be at least {low}, not {number}")
        return number
    if option.kind == "float":
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise UsageError(f"{origin}: {flag} takes a number, not {value!r}") from None
        if number < 0:
            raise UsageError(f"{origin}: {flag} must be at least 0, not {number:g}")
        return number
    text = str(value)
    if option.choices and text not in option.choices:
        raise UsageError(f"{origin}: {flag} takes one of {', '.join(option.choices)}, not {text!r}")
    return text


@dataclass(frozen=True)
class Options(Mapping):
    """Run-wide settings plus the connectors' own options (by option name, checked).

    Read-only mapping too (name -> value given), so `dict(options)` and `**options` work."""

    workers: int = 4
    allow_drops: bool = False
    values: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def build(cls, values: Mapping[str, Any] | None = None, *, workers: int = 4, allow_drops: bool = False,
              environment: bool = True) -> "Options":
        """Check `values` (option name -> value; None = not given) against every installed
        connector's declared options.  With `environment`, an option not given takes its
        declared environment variable, as the CLI does."""
        declared = _declared()
        checked: dict[str, Any] = {}
        for name, value in (values or {}).items():
            if name in _RUN_WIDE:
                continue
            option = declared.get(name)
            if option is None:
                known = ", ".join(sorted(declared)) or "none"
                raise UsageError(f"unknown option {name!r}: no installed connector declares it "
                                 f"(`trackport connectors` lists each one's options: {known})")
            if value is not None:
                checked[name] = _coerce(option, value, "option")
        if environment:
            for name, option in declared.items():
                if name in checked:
                    continue
                for var in option.envvar:
                    if os.environ.get(var):
                        checked[name] = _coerce(option, os.environ[var], f"environment variable {var}")
                        break
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise UsageError(f"workers must be a whole number of at least 1, not {workers!r}")
        return cls(workers=workers, allow_drops=bool(allow_drops), values=checked)

    @classmethod
    def of(cls, options: "Options | Mapping[str, Any] | None") -> "Options":
        """`options` as Options: a mapping is checked like `build` (its `workers` and
        `allow_drops` keys, when present, become the run-wide settings)."""
        if isinstance(options, Options):
            return options
        options = dict(options or {})
        return cls.build(options, workers=options.get("workers") or 4,
                         allow_drops=bool(options.get("allow_drops")), environment=False)

    def get(self, name: str, default: Any = None) -> Any:
        """The value of option `name` (a run-wide setting or a declared connector option),
        `default` when it was not given."""
        if name in _RUN_WIDE:
            return getattr(self, name)
        if name not in self.values and name not in _declared():
            raise KeyError(f"{name!r} is not an option any installed connector declares")
        value = self.values.get(name)
        return default if value is None else value

    def __getitem__(self, name: str) -> Any:
        if name in _RUN_WIDE:
            return getattr(self, name)
        return self.values[name]

    def __iter__(self) -> Iterator[str]:
        yield from _RUN_WIDE
        yield from self.values

    def __len__(self) -> int:
        return len(_RUN_WIDE) + len(self.values)

    def __contains__(self, name: object) -> bool:
        return name in _RUN_WIDE or name in self.values

    def with_values(self, **values: Any) -> "Options":
        """A copy with these connector options set (checked)."""
        merged = {**self.values, **values}
        return Options.build(merged, workers=self.workers, allow_drops=self.allow_drops, environment=False)
