"""Child process of test_access.py (chDB serves one data directory and one configuration per process).

    python -m tests.grafana.row_policy_child write DATA_DIR CONTROL_PLANE_DIR
        the demo traffic of conftest.py, stored through the sink into DATA_DIR's chDB; prints flows per cluster
    python -m tests.grafana.row_policy_child sql DATA_DIR CONFIG_XML [DATABASE] < {"name": "SQL", ...}
        chDB on DATA_DIR started with CONFIG_XML (its users: who `default` is, e.g. the generated Grafana
        user, so every query runs under its grants, readonly profile and row filters); runs each statement
        and prints {"name": rows | {"error": first line}}
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def write(data_dir: str, control_plane_dir: str) -> None:
    from query_api.store import FlowStore, open_clickhouse
    from tests.grafana.conftest import store_demo_traffic

    store = FlowStore(open_clickhouse(data_dir, None))
    store.ensure_schema()
    store_demo_traffic(store.client, Path(control_plane_dir))
    rows = store.client.query("SELECT cluster, count() FROM flows GROUP BY cluster ORDER BY cluster").result_rows
    print(json.dumps({cluster: n for cluster, n in rows}))


def sql(data_dir: str, config: str, database: str = "") -> None:
    import chdb

    from query_api.store import clickhouse_path

    queries: dict[str, str] = json.load(sys.stdin)
    connection = chdb.connect(f"{clickhouse_path(data_dir)}?config-file={config}")
    cursor = connection.cursor()
    if database:  # as Grafana's datasource does with its default database
        cursor.execute(f"USE {database}")
    out: dict[str, Any] = {}
    for name, sql in queries.items():
        try:
            cursor.execute(sql)
            out[name] = [[str(v) if not isinstance(v, int | float) else v for v in row] for row in cursor.fetchall()]
        except Exception as exc:  # reported to the test, which decides whether it was expected
            out[name] = {"error": str(exc).splitlines()[0]}
    print(json.dumps(out))


if __name__ == "__main__":
    {"write": write, "sql": sql}[sys.argv[1]](*sys.argv[2:])
