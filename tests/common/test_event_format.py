"""One event format: the bytes the Lua scripts pack (prelude.lua `flush`) are exactly an
`Event`'s wire form encoded by common.codec, whichever script emitted them."""

from __future__ import annotations

from redis import Redis

from sessionq.common import codec
from sessionq.common.events import Event
from sessionq.common.keys import Keys
from sessionq.producer import Client, Task


def test_lua_packed_events_are_the_event_dataclass_wire_form(client: Client, redis: Redis) -> None:
    s = client.session("format")
    s.pause()
    tid = s.add(Task("tests.tasks:add", args=[1, 2], name="add"))
    client.scripts.emit(s.id, [("task.progress", tid, {"fraction": 0.5, "note": "half"})],
                        worker="w-1")  # fmt: skip
    client.scripts.emit(s.id, [("task.log", None, None)])
    raws = redis.zrange(Keys(client.settings.prefix).history(s.id), 0, -1)
    assert len(raws) >= 4  # created, paused, queued, progress, log
    for raw in raws:
        event = Event.from_bytes(raw)
        assert codec.encode(event.to_wire()) == raw
        assert list(codec.decode_map(raw, "event")) == [
            "v",
            "seq",
            "ts",
            "type",
            "session",
            "task",
            "worker",
            "data",
        ]
    events = [Event.from_bytes(raw) for raw in raws]
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    progress = next(e for e in events if e.type == "task.progress")
    assert progress == Event(seq=progress.seq, ts=progress.ts, type="task.progress",
                             session=s.id, task=tid, worker="w-1",
                             data={"fraction": 0.5, "note": "half"})  # fmt: skip
    log = events[-1]
    assert (log.type, log.task, log.worker, log.data) == ("task.log", None, None, {})


def test_names_and_ids_of_any_length_are_packed_as_the_codec_packs_them(
    client: Client, redis: Redis
) -> None:
    """The scripts pack a string under 32 bytes themselves (prelude `pstr`), a longer one
    by cmsgpack: either way the bytes are the codec's."""
    s = client.session("s" * 31)
    s.pause()
    for n in (1, 30, 31, 32, 33, 40):
        s.add(Task("tests.tasks:add", args=[1, 2], name="x" * n))
    client.create("c" * 32, task="tests.tasks:add", args=[1, 2], replicas=2)
    keys = Keys(client.settings.prefix)
    raws = [raw for key in redis.scan_iter(keys.history("*")) for raw in redis.zrange(key, 0, -1)]
    names = set()
    for raw in raws:
        event = Event.from_bytes(raw)
        assert codec.encode(event.to_wire()) == raw
        names.add(event.data.get("name"))
    assert {"s" * 31, "c" * 32 + "-1", *("x" * n for n in (1, 30, 31, 32, 33, 40))} <= names
