"""Completion and event records of LMCache's multiprocess mode, kept in order with the device work.

LMCache records a completion (or an observability event) "on a stream": it must become visible
only after the work queued on that stream before it has finished. On the CPU every transfer has
finished when its call returns, so a record is visible at once. For an NPU stream the record waits
for the stream (aclrtSynchronizeStream through lmcache_ascend's NPU library) before it is queued.
"""
from __future__ import annotations

import threading
import time
from typing import Any

_lock = threading.Lock()
_completions: list[tuple[str, bytes]] = []
_events: list[tuple[str, str, float, dict, dict]] = []


def _after_stream(stream: int) -> None:
    if stream:
        from lmcache_ascend._native import transfer as native

        native.synchronize_npu_stream(int(stream))


def record_completion_on_stream(cuda_stream_ptr: int, kind: str, payload: bytes) -> None:
    _after_stream(cuda_stream_ptr)
    with _lock:
        _completions.append((str(kind), bytes(payload)))


def drain_recorded_completions() -> list[tuple[str, bytes]]:
    with _lock:
        drained = list(_completions)
        _completions.clear()
    return drained


def record_event_on_stream(cuda_stream_ptr: int, event_type_name: str, session_id: str,
                           str_metadata: dict[str, str], int_metadata: dict[str, int]) -> None:
    _after_stream(cuda_stream_ptr)
    record: tuple[str, str, float, dict[str, Any], dict[str, Any]] = (
        str(event_type_name), str(session_id), time.time(), dict(str_metadata), dict(int_metadata))
    with _lock:
        _events.append(record)


def drain_recorded_events() -> list[tuple[str, str, float, dict, dict]]:
    with _lock:
        drained = list(_events)
        _events.clear()
    return drained
