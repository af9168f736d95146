"""flows.stored values: the worker's word that a collector's batches are stored (or dead-lettered) and
committed. Written by streams.app after each commit, read by collectors.stored_acks."""

from __future__ import annotations

import json
from dataclasses import dataclass


@dataclass(frozen=True)
class StoredNotice:
    """One flows.stored value: batches of one collector, committed by the worker."""

    collector: str
    sequences: tuple[int, ...]

    def to_json(self) -> bytes:
        return json.dumps({"collector": self.collector, "sequences": list(self.sequences)}).encode()

    @classmethod
    def from_json(cls, value: bytes) -> StoredNotice:
        doc = json.loads(value)
        return cls(str(doc["collector"]), tuple(int(s) for s in doc["sequences"]))


def notices(batch_ids: list[tuple[str, int]]) -> list[StoredNotice]:
    """One notice per collector for the (collector, sequence) names of a commit."""
    by_collector: dict[str, list[int]] = {}
    for collector, sequence in batch_ids:
        by_collector.setdefault(collector, []).append(sequence)
    return [StoredNotice(c, tuple(sorted(s))) for c, s in by_collector.items()]
