"""The enrichment seam between the sink (which decodes a batch in ClickHouse and finds its distinct keys) and
the enricher (ownership and policy verdicts from the inventory). Evaluated once per distinct key, never per flow.
"""

from __future__ import annotations

from typing import Protocol

import pyarrow as pa

from schemas.flow_record import ENRICHMENT_COLUMNS, ENRICHMENT_RESULT_SCHEMA


class KeyEnricher(Protocol):
    def enrich_keys(self, keys: pa.Table) -> pa.Table:
        """keys: ENRICHMENT_KEY_SCHEMA rows, one per distinct key of a batch. Returns one row per key in
        ENRICHMENT_RESULT_SCHEMA (`ekey` plus every enrichment column). Must not block on I/O."""
        ...


class NoEnrichment:
    """Empty ownership, verdicts not evaluated (0): what a flow gets when no inventory is known."""

    def enrich_keys(self, keys: pa.Table) -> pa.Table:
        n = keys.num_rows
        arrays = [keys.column("ekey").combine_chunks()] + [
            pa.nulls(n, c.arrow).fill_null(pa.scalar(_zero(c.arrow), c.arrow)) for c in ENRICHMENT_COLUMNS
        ]
        return pa.Table.from_arrays(arrays, schema=ENRICHMENT_RESULT_SCHEMA)


def _zero(t: pa.DataType) -> object:
    if pa.types.is_string(t):
        return ""
    if pa.types.is_boolean(t):
        return False
    return 0
