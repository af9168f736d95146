"""LiveHub fan-out semantics without I/O: bounded queues, gaps in place, hub overload, closing."""

from __future__ import annotations

import asyncio
from typing import Any

from query_api.live import LiveHub, LiveMessage, Missed


def rows(start: int, n: int) -> list[dict[str, Any]]:
    return [{"i": i, "even": i % 2 == 0} for i in range(start, start + n)]


async def drain(sub: Any) -> list[LiveMessage]:
    out: list[LiveMessage] = []
    while batch := await sub.next_batch(timeout=0.2):
        out += batch
    return out


def shape(messages: list[LiveMessage]) -> list[Any]:
    return [m.count if isinstance(m, Missed) else m["i"] for m in messages]


async def wait_drained(hub: LiveHub) -> None:
    for _ in range(200):
        if hub.drained():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("hub never drained")


async def test_full_queue_drops_and_marks_the_gap_where_it_happened() -> None:
    hub = LiveHub()
    slow = hub.subscribe(lambda r: r, queue_flows=3)
    evens = hub.subscribe(lambda r: r if r["even"] else None, queue_flows=100)
    hub.publish_rows(rows(0, 10))
    await wait_drained(hub)
    assert shape(await drain(slow)) == [0, 1, 2, 7]  # 3 kept, then a gap of the 7 it missed
    hub.publish_rows(rows(10, 2))  # after reading, it has room again
    await wait_drained(hub)
    assert shape(await drain(slow)) == [10, 11]
    assert slow.missed_total == 7 and slow.delivered == 5
    assert shape(await drain(evens)) == [0, 2, 4, 6, 8, 10]  # a filter counts only what matches
    assert evens.missed_total == 0
    hub.close()


async def test_missed_counts_only_matching_flows() -> None:
    hub = LiveHub()
    sub = hub.subscribe(lambda r: r if r["even"] else None, queue_flows=2)
    hub.publish_rows(rows(0, 10))  # evens: 0 2 | 4 6 8 dropped
    await wait_drained(hub)
    assert shape(await drain(sub)) == [0, 2, 3]
    hub.close()


async def test_nobody_listening_costs_nothing_and_a_closed_hub_ends_streams() -> None:
    hub = LiveHub()
    hub.publish_rows(rows(0, 5))
    assert hub.published_rows == 0  # dropped at the door: no subscriber
    sub = hub.subscribe(lambda r: r)
    waiter = asyncio.create_task(sub.next_batch())
    await asyncio.sleep(0.05)
    hub.close()
    assert await asyncio.wait_for(waiter, 2) is None
    assert hub.subscriber_count == 0


async def test_an_overloaded_hub_sheds_whole_batches_and_says_so_in_order() -> None:
    hub = LiveHub(backlog_rows=5)
    sub = hub.subscribe(lambda r: r)
    with hub._cond:  # the dispatcher cannot take anything meanwhile: it has fallen behind
        hub.publish_rows(rows(0, 4))
        hub.publish_rows(rows(4, 4))  # 8 > 5 rows waiting: shed
        hub.publish_rows(rows(8, 2))  # consecutive sheds make one gap
        hub.publish_rows(rows(10, 1))  # fits again
    await wait_drained(hub)
    assert hub.shed_rows == 6
    assert shape(await drain(sub)) == [0, 1, 2, 3, 6, 10]
    hub.close()


async def test_a_failing_filter_skips_the_row_not_the_stream() -> None:
    hub = LiveHub()

    def accept(r: dict[str, Any]) -> dict[str, Any]:
        if r["i"] == 1:
            raise KeyError("boom")
        return r

    sub = hub.subscribe(accept)
    hub.publish_rows(rows(0, 3))
    await wait_drained(hub)
    assert shape(await drain(sub)) == [0, 2]
    hub.close()


async def test_clients_seeing_the_same_row_share_one_rendering() -> None:
    from collectors.traffic import DemoTraffic
    from query_api.live import table_rows
    from schemas.flow_render import row_jsonpb_line as _jsonpb_text
    from streams.decode import FlowDecoder

    flows = table_rows(
        FlowDecoder().decode("c", [d for _, _, d in DemoTraffic("c", seed=1).serialized(20)]).table
    )
    hub = LiveHub()
    copies = [hub.subscribe(lambda r: dict(r)) for _ in range(2)]  # e.g. ScopeFilter.redact of an org role
    redacting = hub.subscribe(lambda r: {**r, "src_pod": ""})
    hub.publish_rows(flows)
    await wait_drained(hub)
    a, b, c = [await drain(s) for s in (*copies, redacting)]
    assert all(x is y for x, y in zip(a, b, strict=True))  # the shared row itself
    # A redaction that changed the row is not shared; one that changed nothing (no pod to hide) may be.
    assert not any(x is z for x, z in zip(a, c, strict=True) if x["src_pod"])
    for x, z in zip(a, c, strict=True):
        assert isinstance(x, dict) and isinstance(z, dict)
        assert hub.text_of(x) is hub.text_of(x) and hub.text_of(x) == _jsonpb_text(x)
        assert hub.text_of(z) == _jsonpb_text(z)
        if x["src_pod"]:
            assert hub.text_of(z) != hub.text_of(x)
    hub.close()
