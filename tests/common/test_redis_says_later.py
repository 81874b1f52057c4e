"""connection.redis_says_later: Redis's "not now" replies, as redis-py's parser raises them."""

from __future__ import annotations

import pytest
from redis._parsers.base import BaseParser
from redis.exceptions import ConnectionError as RedisConnectionError

from sessionq.common.connection import redis_says_later, redis_unavailable

REPLIES = {
    "BUSY Redis is busy running a script..": "BUSY",
    "LOADING Redis is loading the dataset in memory": "LOADING",
    "READONLY You can't write against a read only replica.": "READONLY",
    "MASTERDOWN Link with MASTER is down.": "MASTERDOWN",
    "MISCONF Redis is configured to save RDB snapshots but cannot": "MISCONF",
    "NOPERM User tester has no permissions to access the 'x' key": "NOPERM",
    "OOM command not allowed when used memory > 'maxmemory'.": "OOM",
    "ERR unknown command 'FOO'": "",
    "WRONGTYPE Operation against a key holding the wrong kind of value": "",
}


@pytest.mark.parametrize(("reply", "code"), REPLIES.items())
def test_each_reply_is_classified(reply: str, code: str) -> None:
    error = BaseParser.parse_error(reply)
    assert redis_says_later(error) == code
    assert redis_unavailable(error) == bool(code)


def test_a_pipelines_annotated_error_keeps_its_code() -> None:
    error = BaseParser.parse_error("BUSY Redis is busy running a script.")
    error.args = (f"Command # 1 (ZADD k 1 m) of pipeline caused error: {error.args[0]}",)
    assert redis_says_later(error) == "BUSY"


def test_a_lost_connection_is_unavailable_but_not_try_later() -> None:
    assert redis_says_later(RedisConnectionError("gone")) == ""
    assert redis_unavailable(RedisConnectionError("gone"))
