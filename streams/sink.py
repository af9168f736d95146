"""The ClickHouse sink: Arrow tables into the `flows` table. Idempotent through the table's dedup key."""

from __future__ import annotations

import threading
from typing import Any

import pyarrow as pa

from schemas.clickhouse import FLOWS_TABLE


class ClickHouseSink:
    def __init__(self, client: Any):
        self.client = client
        # chDB allows one connection at a time per process; threads take turns.
        self._lock = threading.Lock()

    def insert(self, table: pa.Table) -> int:
        if table.num_rows == 0:
            return 0
        with self._lock:
            self.client.insert_arrow(FLOWS_TABLE, table)
        return table.num_rows
