"""The collector's checkpoint journal: per-node watermarks of stored flows, recent uuids, and the batches
shipped but not yet reported stored (collectors.hubble_client moves it; collectors.stored_acks confirms)."""

from __future__ import annotations

import json
import os
from collections import deque
from pathlib import Path
from typing import Any

BatchName = tuple[str, tuple[int, ...]]  # (collector id, Kafka batch sequences): its name in flows.stored


class Checkpoint:
    """Per-node watermark of the stored flows, the uuids stored in the last `window_ns`, and the batches
    shipped but not yet reported stored, as an append-only journal of JSON lines:

      {"nodes", "t", "u"[, "done", "pos"]}  a batch stored: every node's watermark, its newest time, its
                                            uuids[, its name, the flows.stored position read so far]
      {"ship", "n", "u"}                    a batch shipped (name, newest time per node, uuids)

    Cost per batch, not per flow held (at 30k flows/s the window holds 150k uuids). The file is rewritten
    with only what is still needed every `compact_every` lines or `compact_bytes` appended. A torn last
    line (killed mid-write) is ignored: its batch is re-sent and de-duplicated by the store. Shipped batches
    survive a restart: a restarted collector does not send them again, and confirms them from flows.stored
    read again from `ack_positions`; if no notice comes they are read from Hubble again (`forget_pending`).
    """

    def __init__(self, path: Path | None, window_ns: int = 5_000_000_000, compact_every: int = 500,
                 compact_bytes: int = 8 << 20, stale_ns: int = 600_000_000_000):
        self.path = path
        self.window_ns = window_ns
        self.stale_ns = stale_ns
        self.compact_every = compact_every
        self.compact_bytes = compact_bytes
        self._appended = 0
        self.nodes: dict[str, int] = {}
        self.batches: deque[tuple[int, list[str]]] = deque()  # (newest time in batch, uuids), oldest first
        self.pending: dict[BatchName, tuple[dict[str, int], list[str]]] = {}  # shipped, oldest first
        self.ack_positions: dict[int, int] = {}  # flows.stored partition -> next offset to read
        self._lines = 0
        self._queue: list[str] = []
        self._rewrite = False
        if path and path.exists():
            for line in path.read_text().splitlines():
                try:
                    self._load(json.loads(line))
                except (ValueError, KeyError, TypeError, IndexError):
                    continue
                self._lines += 1
            self._prune()

    def _load(self, doc: dict[str, Any]) -> None:
        if "ship" in doc:
            collector, seqs = doc["ship"]
            self.pending[(str(collector), tuple(int(x) for x in seqs))] = (
                {k: int(v) for k, v in doc.get("n", {}).items()}, list(doc.get("u", [])))
            return
        if "nodes" in doc:
            self.nodes = {k: int(v) for k, v in doc["nodes"].items()}
            if "recent" in doc:  # the single-document format of earlier versions
                for t, u in doc["recent"]:
                    self.batches.append((int(t), [u]))
            else:
                self.batches.append((int(doc.get("t", 0)), list(doc.get("u", []))))
        if "done" in doc:
            collector, seqs = doc["done"]
            self.pending.pop((str(collector), tuple(int(x) for x in seqs)), None)
        if "pos" in doc:
            self.ack_positions = {int(k): int(v) for k, v in doc["pos"].items()}

    def since_ns(self) -> int | None:
        """Where a (re)connect resumes: the oldest watermark of the nodes still reporting, rewound by the
        window (Relay merges nodes only within ~1 s, so a node may lag the others). A node whose newest flow
        is `stale_ns` older than the newest of any node has left (or stopped): it no longer holds the resume
        point back, or every reconnect would replay the others' flows since it left."""
        if not self.nodes:
            return None
        newest = max(self.nodes.values())
        live = [t for t in self.nodes.values() if t >= newest - self.stale_ns]
        return max(0, min(live) - self.window_ns)

    def recent_uuids(self) -> set[str]:
        """Uuids stored within the window (what a resumed stream may send again)."""
        return {u for _, uuids in self.batches for u in uuids}

    def record_shipped(self, name: BatchName, node_times: dict[str, int], uuids: list[str]) -> None:
        """A batch Kafka acknowledged, not yet reported stored."""
        self.pending[name] = (node_times, uuids)
        self._queue.append(json.dumps({"ship": [name[0], list(name[1])], "n": node_times, "u": uuids}))

    def record_batch(self, node_times: dict[str, int], uuids: list[str], done: BatchName | None = None,
                     positions: dict[int, int] | None = None) -> None:
        """A batch that is stored (or, without end-to-end acknowledgement, that Kafka acknowledged): the
        newest time per node in it, and its uuids; with its name when it was pending."""
        for node, t in node_times.items():
            if t > self.nodes.get(node, -1):
                self.nodes[node] = t
        newest = max(node_times.values(), default=0)
        if uuids:
            self.batches.append((newest, uuids))
        doc: dict[str, Any] = {"nodes": self.nodes, "t": newest, "u": uuids}
        if done is not None:
            self.pending.pop(done, None)
            doc["done"] = [done[0], list(done[1])]
        if positions:
            self.ack_positions = dict(positions)
            doc["pos"] = self.ack_positions
        self._queue.append(json.dumps(doc))

    def forget_pending(self) -> None:
        """The shipped batches were lost on the way: they must be read from Hubble again, after a restart too."""
        self.pending.clear()
        self._rewrite = True

    def _prune(self) -> None:
        horizon = max(self.nodes.values(), default=0) - self.window_ns
        while self.batches and self.batches[0][0] < horizon:
            self.batches.popleft()

    def save(self) -> None:
        self._prune()
        if not self.path:
            self._queue.clear()
            return
        if (self._rewrite or self._lines >= self.compact_every or self._appended >= self.compact_bytes
                or not self.batches):
            lines = [json.dumps({"nodes": self.nodes, "t": t, "u": u}) for t, u in self.batches] or [
                json.dumps({"nodes": self.nodes, "t": 0, "u": []})]
            lines += [json.dumps({"ship": [c, list(q)], "n": n, "u": u}) for (c, q), (n, u) in self.pending.items()]
            if self.ack_positions:
                lines.append(json.dumps({"pos": self.ack_positions}))
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text("\n".join(lines) + "\n")
            os.replace(tmp, self.path)
            self._lines = len(lines)
            self._appended = 0
            self._queue.clear()
            self._rewrite = False
            return
        if not self._queue:
            return
        text = "".join(line + "\n" for line in self._queue)
        self._queue.clear()
        with open(self.path, "a") as f:
            f.write(text)
        self._lines += text.count("\n")
        self._appended += len(text)
