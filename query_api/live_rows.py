"""Rows of a stored Arrow table as the live stream reads them: `table_rows` (plain dicts) and `stored_rows`
(lazy, column by column, with ClickHouse's jsonpb text when the read-back has it, streams.jsonpb_sql)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

Row = Mapping[str, Any]

# Column of a stored table holding each row's jsonpb text as ClickHouse rendered it (streams.jsonpb_sql).
JSONPB_COLUMN = "jsonpb"


def table_rows(table: pa.Table) -> list[dict[str, Any]]:
    """Rows of a decoded/stored Arrow table in the shape schemas.flow_render and the SQL rows use.

    `time` becomes `time_ns` (int ns) like `flow_query.SELECT_COLUMNS`: Python datetimes stop at µs.
    """
    if JSONPB_COLUMN in table.column_names:
        table = table.drop_columns([JSONPB_COLUMN])
    if "time" in table.column_names:
        i = table.column_names.index("time")
        table = table.set_column(i, "time_ns", pc.cast(table.column(i), pa.int64()))
    return table.to_pylist()


class _StoredColumns:
    """A stored table's columns, each turned into Python values for the whole batch on first use: a filter
    reads a few columns, and a row rendered by ClickHouse (StoredRow.jsonpb) is never turned into a dict
    (Table.to_pylist costs ~50 us a flow)."""

    def __init__(self, table: pa.Table) -> None:
        self.table = table
        self.names = [n for n in table.column_names if n not in ("time", JSONPB_COLUMN)]
        if "time" in table.column_names:
            self.names.insert(table.column_names.index("time"), "time_ns")
        self._values: dict[str, list[Any]] = {}

    def values(self, name: str) -> list[Any]:
        got = self._values.get(name)
        if got is None:
            if name == "time_ns":
                got = pc.cast(self.table.column("time"), pa.int64()).to_pylist()
            elif name in self.names:
                got = self.table.column(name).to_pylist()
            else:
                raise KeyError(name)
            self._values[name] = got  # two threads may both convert a column: the same values
        return got


class StoredRow(Mapping[str, Any]):
    """A row of a stored table in `table_rows` shape, read column by column; `jsonpb` is its text as rendered
    by ClickHouse ('' when Python must render it). Only the row itself carries that text: a redacted copy
    (ScopeFilter.redact makes a dict) is rendered from its own values."""

    __slots__ = ("_columns", "_index", "jsonpb")

    def __init__(self, columns: _StoredColumns, index: int, jsonpb: str) -> None:
        self._columns = columns
        self._index = index
        self.jsonpb = jsonpb

    def __getitem__(self, key: str) -> Any:
        return self._columns.values(key)[self._index]

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self._columns.values(key)[self._index]
        except KeyError:
            return default

    def __iter__(self) -> Iterator[str]:
        return iter(self._columns.names)

    def __len__(self) -> int:
        return len(self._columns.names)

    def __contains__(self, key: object) -> bool:
        return key in self._columns.names

    def __repr__(self) -> str:
        return f"StoredRow({dict(self)!r})"


def stored_rows(table: pa.Table) -> list[StoredRow]:
    """The hub's rows of a stored table: lazy (StoredRow), with ClickHouse's jsonpb text when it has one."""
    columns = _StoredColumns(table)
    if JSONPB_COLUMN in table.column_names:
        texts = table.column(JSONPB_COLUMN).to_pylist()
    else:
        texts = [""] * table.num_rows
    return [StoredRow(columns, i, text or "") for i, text in enumerate(texts)]
