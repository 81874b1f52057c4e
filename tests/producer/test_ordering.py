"""Ordering, the listener's logic without I/O: the unusual live event is checked against
the history, and a history that went back is said with a listener.gap."""

from __future__ import annotations

from typing import Any

from sessionq.common.keys import Keys
from sessionq.producer.listen import Ordering


def ev(seq: int, kind: str = "task.progress", ts: float = 1.0) -> dict[str, Any]:
    return {"v": 1, "seq": seq, "ts": ts, "type": kind, "session": "s", "task": None,
            "worker": None, "data": {}}  # fmt: skip


def ordering(upto: int, **options: Any) -> Ordering:
    order = Ordering(Keys("t:"), ["s"], after=0, **options)
    kept = [ev(n) for n in range(1, upto + 1)]
    order.deliver(order.baseline({"s": (str(upto).encode(), b"Running")}, {"s": kept}))
    return order


def test_a_terminal_event_the_history_does_not_hold_ends_nothing() -> None:
    order = ordering(5)
    forged = ev(6, "session.completed")
    step = order.live(forged)
    assert isinstance(step, tuple)
    assert order.deliver(order.reconcile("s", forged, [ev(n) for n in range(1, 6)])) == []
    assert not order.done()
    real = ev(6, "session.completed", ts=2.0)
    assert order.deliver(order.reconcile("s", real, [*map(ev, range(1, 6)), real])) == [real]
    assert order.done()


def test_a_replayed_event_heard_again_live_needs_no_history_read() -> None:
    assert ordering(5).live(ev(5)) == []


def test_a_history_that_went_back_is_a_gap_then_what_it_holds() -> None:
    order = ordering(10, types=["session.completed"])
    new = ev(8, ts=3.0)  # 8..10 lost; a new 8 written
    step = order.live(new)
    assert isinstance(step, tuple)
    out = order.deliver(order.reconcile("s", new, [*map(ev, range(1, 8)), new]))
    assert [e["type"] for e in out] == ["listener.gap"], "the gap whatever the types filter"
    assert (out[0]["data"]["from_seq"], out[0]["data"]["to_seq"]) == (8, 10)
    assert order.live(ev(9, ts=3.0)) == [ev(9, ts=3.0)], "then on from what Redis holds"


def test_a_reconnect_onto_a_history_that_went_back() -> None:
    order = ordering(10)
    kept = [ev(n) for n in range(1, 7)] + [ev(n, ts=4.0) for n in range(7, 13)]
    out = order.deliver(order.reconcile("s", None, kept[order.check_after("s") :]))
    assert out[0]["type"] == "listener.gap" and out[0]["data"]["from_seq"] == 7
    assert [e["seq"] for e in out[1:]] == list(range(7, 13))
