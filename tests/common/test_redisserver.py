"""The private redis-server keeps its own log in its data dir, across a restart: what a
fault test prints when a server does not do what it waited for."""

from __future__ import annotations

from sessionq.common.redisserver import RedisServer


def test_a_server_logs_to_its_data_dir_and_the_log_survives_a_restart() -> None:
    server = RedisServer().start()
    try:
        assert server.log_path.parent.as_posix() == server.dir
        assert "Ready to accept connections" in server.log_tail()
        server.shutdown()
        assert "ready to exit" in server.log_tail().lower()
        server.start()
        assert server.log_tail(200).count("Ready to accept connections") == 2
    finally:
        server.stop()
