"""netwarden.grafana.macros against the plugin's own expectations (grafana/clickhouse-datasource:
pkg/macros/macros_test.go, src/data/CHDatasource.test.ts) and Grafana's variable formats."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from netwarden.grafana.macros import ALL, MacroError, QueryContext, TemplateVariable, expand

# The plugin's test range: 2014-11-12T11:45:26.123Z .. 2015-11-12T11:45:26.456Z
FROM = datetime(2014, 11, 12, 11, 45, 26, 123000, tzinfo=UTC)
TO = datetime(2015, 11, 12, 11, 45, 26, 456000, tzinfo=UTC)


def ctx(interval_s: float = 60, **variables: TemplateVariable) -> QueryContext:
    return QueryContext(FROM, TO, interval_s, variables)


@pytest.mark.parametrize(("sql", "want"), [
    ("select * from foo where $__timeFilter(cast(sth as timestamp) )",
     "select * from foo where cast(sth as timestamp) >= toDateTime(1415792726) AND "
     "cast(sth as timestamp) <= toDateTime(1447328726)"),
    ("select * from foo where $__timeFilter_ms(cast(sth as timestamp))",
     "select * from foo where cast(sth as timestamp) >= fromUnixTimestamp64Milli(1415792726123) AND "
     "cast(sth as timestamp) <= fromUnixTimestamp64Milli(1447328726456)"),
    ("select * from foo where ( date >= $__fromTime ) and ( date <= $__toTime ) limit 100",
     "select * from foo where ( date >= toDateTime(1415792726) ) and ( date <= toDateTime(1447328726) ) limit 100"),
    ("select * from foo where ( date >= $__fromTime_ms and date <= $__toTime_ms ) limit 100",
     "select * from foo where ( date >= fromUnixTimestamp64Milli(1415792726123) and "
     "date <= fromUnixTimestamp64Milli(1447328726456) ) limit 100"),
    ("SELECT $__timeInterval($__fromTime) AS from_time",
     "SELECT toStartOfInterval(toDateTime(toDateTime(1415792726)), INTERVAL 60 second) AS from_time"),
    ("SELECT $__timeInterval_ms($__fromTime_ms)",
     "SELECT toStartOfInterval(toDateTime64(fromUnixTimestamp64Milli(1415792726123), 3), INTERVAL 60000 millisecond)"),
    ("select * from foo where $__timeFilter(coalesce(closed_at, $__toTime))",
     "select * from foo where coalesce(closed_at, toDateTime(1447328726)) >= toDateTime(1415792726) AND "
     "coalesce(closed_at, toDateTime(1447328726)) <= toDateTime(1447328726)"),
    ("select * from foo where msg = 'it\\'s -- fine' and $__fromTime",
     "select * from foo where msg = 'it\\'s -- fine' and toDateTime(1415792726)"),
    ("select $__dateFilter(d)", "select d >= toDate('2014-11-12') AND d <= toDate('2015-11-12')"),
    ("select $__interval_s", "select 60"),
])
def test_backend_macros_expand_as_the_plugin_does(sql: str, want: str) -> None:
    assert expand(sql, ctx()) == want


def test_interval_is_at_least_one_second() -> None:
    assert expand("$__interval_s $__timeInterval(t)", ctx(interval_s=0.2)) == (
        "1 toStartOfInterval(toDateTime(t), INTERVAL 1 second)")


def test_conditional_all_keeps_the_condition_unless_all_or_empty() -> None:
    sql = "select stuff from table where $__conditionalAll(fieldVal in ($fieldVal), $fieldVal) and " \
          "$__conditionalAll(fieldVal in ($fieldVal2), $fieldVal2);"
    chosen = TemplateVariable("fieldVal", ["val1", "val2"])
    assert expand(sql, ctx(fieldVal=chosen, fieldVal2=TemplateVariable("fieldVal2", [ALL], ["x"]))) == (
        "select stuff from table where fieldVal in ('val1','val2') and 1=1;")
    assert expand(sql, ctx(fieldVal=TemplateVariable("fieldVal", ""), fieldVal2=chosen)) == (
        "select stuff from table where 1=1 and fieldVal in ('val1','val2');")


def test_variable_formats() -> None:
    one = TemplateVariable("ns", "shop")
    many = TemplateVariable("ns", ["shop", "o'brien"])
    every = TemplateVariable("ns", ALL, ["a", "b"])
    assert expand("$ns ${ns} [[ns]] ${ns:singlequote}", ctx(ns=one)) == "shop shop shop 'shop'"
    assert expand("x IN ($ns)", ctx(ns=many)) == "x IN ('shop','o'brien')"  # the plugin does not escape
    assert expand("x IN (${ns:singlequote})", ctx(ns=many)) == "x IN ('shop','o\\'brien')"
    assert expand("x IN (${ns:sqlstring})", ctx(ns=many)) == "x IN ('shop','o''brien')"
    assert expand("x IN (${ns:singlequote})", ctx(ns=every)) == "x IN ('a','b')"
    assert expand("${ns:csv}|${ns:pipe}", ctx(ns=every)) == "a,b|a|b"


def test_unknown_names_fail_loudly() -> None:
    with pytest.raises(MacroError, match=r"unknown macro \$__timeFilterr"):
        expand("select $__timeFilterr(t)", ctx())
    with pytest.raises(MacroError, match="unknown variable 'cluster'"):
        expand("$__conditionalAll(c IN ($cluster), $cluster)", ctx())
    with pytest.raises(MacroError, match="unknown variable format 'bogus'"):
        expand("${ns:bogus}", ctx(ns=TemplateVariable("ns", "a")))
    with pytest.raises(MacroError, match=r"\$__timeFilter expects 1 argument, got 2"):
        expand("$__timeFilter(a, b)", ctx())
    with pytest.raises(MacroError, match="time_from: a timezone-aware time"):
        QueryContext(datetime(2020, 1, 1), TO)
