"""The one msgpack codec: everything sessionq writes to Redis goes through here."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgpack

from sessionq.common.errors import CodecError


def encode(obj: Any) -> bytes:
    """msgpack bytes for dict, list, tuple, str, int, float, bool, None and bytes."""
    try:
        return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]  # msgpack.packb returns Any
    except (TypeError, ValueError, OverflowError) as exc:
        raise CodecError(f"cannot encode as msgpack: {exc}") from exc


def encode_each(objs: Iterable[Any]) -> list[bytes]:
    """encode() of each object, with one packer for them all (a batch's payloads: making a
    packer is most of what packing a small map costs)."""
    packer = msgpack.Packer(use_bin_type=True)
    try:
        return [packer.pack(obj) for obj in objs]
    except (TypeError, ValueError, OverflowError) as exc:
        raise CodecError(f"cannot encode as msgpack: {exc}") from exc


def text(raw: object) -> str:
    """A Redis reply (bytes) as text."""
    if isinstance(raw, bytes):
        return raw.decode(errors="replace")
    return str(raw)


def encode_for_lua(obj: Any) -> bytes:
    """msgpack for a Lua script's cmsgpack.unpack, which knows no bin type: bytes travel as
    raw strings (Lua strings are bytes anyway). Never stored as is."""
    try:
        return msgpack.packb(obj, use_bin_type=False)  # type: ignore[no-any-return]  # msgpack.packb returns Any
    except (TypeError, ValueError, OverflowError) as exc:
        raise CodecError(f"cannot encode as msgpack: {exc}") from exc


def decode(data: object) -> Any:
    """The value msgpack bytes hold; CodecError for anything else (truncated, garbage)."""
    return _unpack(data, raw=False)


def decode_raw(data: object) -> Any:
    """As decode, strings left as bytes: for what a Lua script packed (cmsgpack has no bin
    type, so binary fields come as raw strings)."""
    return _unpack(data, raw=True)


def _unpack(data: object, *, raw: bool) -> Any:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise CodecError(f"expected bytes, got {type(data).__name__}")
    try:
        return msgpack.unpackb(data, raw=raw, strict_map_key=False)
    except (ValueError, msgpack.UnpackException, TypeError) as exc:
        raise CodecError(f"undecodable payload ({len(data)} bytes): {exc}") from exc


def decode_map(data: object, what: str) -> dict[str, Any]:
    """Decode bytes that must hold a msgpack map; `what` names them in the error."""
    try:
        value = decode(data)
    except CodecError as exc:
        raise CodecError(f"{what}: {exc}") from exc
    if not isinstance(value, dict):
        raise CodecError(f"{what}: expected a msgpack map, got {type(value).__name__}")
    return value


class RQSerializer:
    """The serializer handed to every RQ Queue and Worker: msgpack, never pickle."""

    dumps = staticmethod(encode)
    loads = staticmethod(decode)
