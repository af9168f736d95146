"""What Grafana and the grafana-clickhouse-datasource plugin do to a panel's SQL before ClickHouse sees it.

Pure, so tests can run every dashboard query against the real engine exactly as Grafana would send it.
Three passes, in the plugin's order (github.com/grafana/clickhouse-datasource):

1. `$__conditionalAll(condition, $var)` (frontend, CHDatasource.applyConditionalAll): the condition, or
   `1=1` when the variable's current value is `$__all` or empty. Innermost/last call first.
2. Template variables (Grafana's templateSrv.replace with the plugin's default format): `$var`, `${var}`,
   `${var:format}`, `[[var]]`. Default format: a list becomes `'a','b'` (no escaping), a single value is
   inserted raw; `singlequote` quotes each value escaping `'` as `\\'`. "All" without a custom all value
   stands for every option of the variable. Unknown names (e.g. `$__timeFilter`) are left alone.
3. Backend macros (pkg/macros/macros.go): `$__timeFilter(c)` -> `c >= toDateTime(from) AND c <= toDateTime(to)`,
   `$__timeFilter_ms`, `$__dateFilter`, `$__timeInterval(c)` -> `toStartOfInterval(toDateTime(c), INTERVAL n
   second)`, `$__timeInterval_ms`, `$__interval_s`, `$__fromTime`/`$__toTime` (`toDateTime(unix)`) and their
   `_ms` forms (`fromUnixTimestamp64Milli(ms)`). The plugin leaves an unknown macro in the SQL (ClickHouse
   then fails on it); here it is an error naming the macro, so a typo fails the tests, not the dashboard.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

ALL = "$__all"


class MacroError(ValueError):
    """A query Grafana or the plugin would not expand (bad arguments, unknown macro or format)."""


@dataclass(frozen=True)
class TemplateVariable:
    """A dashboard variable's current state: one value, several (multi-value), or All (`$__all`)."""

    name: str
    current: str | Sequence[str]
    options: Sequence[str] = ()  # the values All stands for

    def values(self) -> list[str]:
        raw = [self.current] if isinstance(self.current, str) else list(self.current)
        if raw == [ALL]:
            return list(self.options)
        return raw

    def as_text(self) -> str:
        """The current value as the plugin's JavaScript sees it (`value.toString()`: a list joins with ',')."""
        return self.current if isinstance(self.current, str) else ",".join(self.current)


@dataclass(frozen=True)
class QueryContext:
    """The panel's time range and interval (Grafana's `$__interval`, in seconds)."""

    time_from: datetime
    time_to: datetime
    interval_s: float = 60.0
    variables: Mapping[str, TemplateVariable] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, t in (("time_from", self.time_from), ("time_to", self.time_to)):
            if t.tzinfo is None:
                raise MacroError(f"{name}: a timezone-aware time is required, got {t!r}")
        if self.time_to < self.time_from:
            raise MacroError(f"time_to: {self.time_to.isoformat()} is before time_from {self.time_from.isoformat()}")


def expand(sql: str, ctx: QueryContext) -> str:
    """The SQL ClickHouse receives for `sql` in a panel with `ctx`."""
    sql = apply_conditional_all(sql, ctx.variables)
    sql = replace_variables(sql, ctx.variables)
    return expand_backend_macros(sql, ctx)


# ---- 1. $__conditionalAll -----------------------------------------------------------------------------

_CONDITIONAL_ALL = "$__conditionalAll("
_VAR_REF = re.compile(r"(?<=\$\{)\w+(?=\})|(?<=\$)\w+")


def apply_conditional_all(sql: str, variables: Mapping[str, TemplateVariable]) -> str:
    index = sql.rfind(_CONDITIONAL_ALL)
    while index != -1:
        args, end = _macro_args(sql, index + len(_CONDITIONAL_ALL) - 1)
        if len(args) != 2:
            raise MacroError(f"$__conditionalAll expects 2 arguments (condition, $variable), got {len(args)}: "
                             f"{sql[index:end]!r}")
        phrase = args[0]
        ref = _VAR_REF.search(args[1].strip())
        if ref is None:
            raise MacroError(f"$__conditionalAll: second argument must be a variable reference, got {args[1]!r}")
        variable = variables.get(ref.group(0))
        if variable is None:
            raise MacroError(f"$__conditionalAll: unknown variable {ref.group(0)!r}")
        if variable.as_text() in ("", ALL):
            phrase = "1=1"
        sql = sql[:index] + phrase + sql[end:]
        index = sql.rfind(_CONDITIONAL_ALL)
    return sql


def _macro_args(sql: str, open_paren: int) -> tuple[list[str], int]:
    """Arguments of the call whose '(' is at `open_paren` (split on top-level commas; quotes and
    backslash escapes respected), and the index after its ')'."""
    depth, start, args, quote = 0, open_paren + 1, [], ""
    i = open_paren
    while i < len(sql):
        ch = sql[i]
        if quote:
            if ch == "\\":
                i += 2
                continue
            if ch == quote:
                quote = ""
        elif ch in "'`\"":
            quote = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                args.append(sql[start:i])
                return args, i + 1
        elif ch == "," and depth == 1:
            args.append(sql[start:i])
            start = i + 1
        i += 1
    raise MacroError(f"unbalanced parentheses after {sql[max(0, open_paren - 20):open_paren + 1]!r}")


# ---- 2. template variables ----------------------------------------------------------------------------

# Grafana's variable syntax: $name, [[name]] / [[name:format]], ${name} / ${name:format}
_VARIABLE = re.compile(r"\$(\w+)|\[\[(\w+?)(?::(\w+))?\]\]|\$\{(\w+)(?::([^}]+))?\}")


def _format(values: list[str], fmt: str | None, multi: bool) -> str:
    if fmt is None:  # the plugin's own format function
        return "'" + "','".join(values) + "'" if multi else values[0]
    if fmt == "singlequote":
        return ",".join("'" + v.replace("'", "\\'") + "'" for v in values)
    if fmt == "doublequote":
        return ",".join('"' + v.replace('"', '\\"') + '"' for v in values)
    if fmt == "sqlstring":
        return ",".join("'" + v.replace("'", "''") + "'" for v in values)
    if fmt == "csv":
        return ",".join(values)
    if fmt == "pipe":
        return "|".join(values)
    if fmt == "raw":
        return ",".join(values) if multi else values[0]
    raise MacroError(f"unknown variable format {fmt!r}")


def replace_variables(sql: str, variables: Mapping[str, TemplateVariable]) -> str:
    def sub(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2) or m.group(4)
        fmt = m.group(3) or m.group(5)
        variable = variables.get(name)
        if variable is None:
            return m.group(0)  # not a variable: a macro, or text Grafana leaves alone
        values = variable.values()
        multi = not isinstance(variable.current, str) or variable.current == ALL
        if not values:
            raise MacroError(f"variable {name!r}: no value (All with no options)")
        return _format(values, fmt, multi)

    return _VARIABLE.sub(sub, sql)


# ---- 3. backend macros --------------------------------------------------------------------------------

_MACRO = re.compile(r"\$__(\w+)")


def _seconds(t: datetime) -> int:
    return int(t.astimezone(UTC).timestamp() // 1)


def _millis(t: datetime) -> int:
    return int(t.astimezone(UTC).timestamp() * 1000 // 1)


def _one_arg(name: str, args: list[str] | None) -> str:
    if args is None or len(args) != 1:
        raise MacroError(f"$__{name} expects 1 argument, got {0 if args is None else len(args)}")
    return args[0].strip()


def _backend_macro(name: str, args: list[str] | None, ctx: QueryContext) -> str:
    if args is not None:  # a macro in an argument expands first, as the plugin does
        args = [expand_backend_macros(a, ctx) for a in args]
    start, end = ctx.time_from, ctx.time_to
    dt_from, dt_to = f"toDateTime({_seconds(start)})", f"toDateTime({_seconds(end)})"
    ms_from, ms_to = f"fromUnixTimestamp64Milli({_millis(start)})", f"fromUnixTimestamp64Milli({_millis(end)})"
    seconds = int(max(ctx.interval_s, 1))
    if name == "timeFilter":
        col = _one_arg(name, args)
        return f"{col} >= {dt_from} AND {col} <= {dt_to}"
    if name == "timeFilter_ms":
        col = _one_arg(name, args)
        return f"{col} >= {ms_from} AND {col} <= {ms_to}"
    if name == "dateFilter":
        col = _one_arg(name, args)
        return (f"{col} >= toDate('{start.astimezone(UTC):%Y-%m-%d}') AND "
                f"{col} <= toDate('{end.astimezone(UTC):%Y-%m-%d}')")
    if name == "timeInterval":
        return f"toStartOfInterval(toDateTime({_one_arg(name, args)}), INTERVAL {seconds} second)"
    if name == "timeInterval_ms":
        ms = int(max(ctx.interval_s * 1000, 1))
        return f"toStartOfInterval(toDateTime64({_one_arg(name, args)}, 3), INTERVAL {ms} millisecond)"
    simple = {"interval_s": str(seconds), "fromTime": dt_from, "toTime": dt_to,
              "fromTime_ms": ms_from, "toTime_ms": ms_to}
    if name in simple:
        if args is not None:
            raise MacroError(f"$__{name} takes no arguments")
        return simple[name]
    raise MacroError(f"unknown macro $__{name}")


def expand_backend_macros(sql: str, ctx: QueryContext) -> str:
    out, pos = [], 0
    for m in _MACRO.finditer(sql):
        if m.start() < pos:
            continue  # inside the arguments of a macro already expanded
        args: list[str] | None = None
        end = m.end()
        if end < len(sql) and sql[end] == "(":
            args, end = _macro_args(sql, end)
        out.append(sql[pos:m.start()])
        out.append(_backend_macro(m.group(1), args, ctx))
        pos = end
    out.append(sql[pos:])
    return "".join(out)
