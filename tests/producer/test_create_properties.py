"""Client.create given any arguments (hypothesis): sessions, or a ValidationError naming the
field before anything is written (SPEC §2)."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from redis import Redis

from sessionq.common.errors import ValidationError
from sessionq.common.settings import Settings
from sessionq.producer import Client
from tests.common.test_properties import RUN_FIELDS, anything, plausible

CREATE_FIELDS = {"name", "image", "kind", "replicas", *RUN_FIELDS}
MISSING = object()
own = {
    "name": st.sampled_from(["ok", "a" * 63, "a" * 64, "bad name", ""]) | anything,
    "image": st.sampled_from([None, "img:1"]) | anything,
    "kind": st.sampled_from(["headless", "notebook", "Bad"]) | anything,
    "replicas": st.integers(-1, 4) | anything,
}


@settings(max_examples=80, deadline=None)
@given(st.fixed_dictionaries({f: st.just(MISSING) | s for f, s in {**plausible, **own}.items()}))
def test_create_makes_sessions_or_names_the_bad_field_and_writes_nothing(
    redis_url: str, drawn: dict[str, Any]
) -> None:
    fields = {k: v for k, v in drawn.items() if v is not MISSING}
    name = fields.pop("name", "ok")
    if "cmd" not in fields and "task" not in fields:
        fields["task"] = "tests.tasks:add"
    redis = Redis.from_url(redis_url)
    client = Client(settings=Settings.from_env(redis_url, environ={}, user="prop"))
    before = redis.dbsize()
    try:
        ids = client.create(name, **fields)
    except ValidationError as exc:
        assert exc.field.split("[", 1)[0] in CREATE_FIELDS, str(exc)
        assert redis.dbsize() == before, "nothing is written"
    else:
        assert len(ids) == fields.get("replicas", 1)
        assert len(client.info(ids)) == len(ids)
    finally:
        client.close()
        redis.close()
