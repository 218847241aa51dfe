"""One warning, not one per request, while LMCache's remote store (e.g. Redis) is unreachable.

Why: LMCache's remote backend logs a warning on every lookup and every put that fails, so a stopped
  Redis floods the serving log (lines per request and per chunk) while vLLM carries on by
  recomputing.
How: one logging filter, shared by LMCache's remote-store loggers, lets the first warning through
  (saying that repeats are counted) and suppresses the rest; every REPORT_EVERY_S seconds of a
  continuing outage one more gets through with the count. INFO and DEBUG records are untouched,
  and nothing about LMCache's behaviour changes.
Versions: LMCache 0.5.x (checked against 0.5.6).
Remove when: LMCache rate-limits these messages itself.
"""
from __future__ import annotations

import logging
import threading
import time

LOGGERS = (
    "lmcache.v1.storage_backend.remote_backend",
    "lmcache.v1.storage_backend.connector.redis_connector",
    "lmcache.v1.storage_backend.connector.redis_adapter",
    "lmcache.v1.storage_backend.connector.instrumented_connector",
)
REPORT_EVERY_S = 300.0


class OncePerOutage(logging.Filter):
    """Passes the first warning, then one every REPORT_EVERY_S seconds with the suppressed count."""

    def __init__(self, clock=time.monotonic) -> None:
        super().__init__("lmcache_ascend.remote_outage")
        self._clock = clock
        self._lock = threading.Lock()
        self._last_passed = None
        self.suppressed = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        with self._lock:
            now = self._clock()
            if self._last_passed is not None and now - self._last_passed < REPORT_EVERY_S:
                self.suppressed += 1
                return False
            note = (f"{self.suppressed} similar remote-store messages suppressed since the last one; "
                    if self.suppressed else "")
            record.msg = f"{record.msg} (lmcache-ascend: {note}further ones are counted, not logged, " \
                         f"for {REPORT_EVERY_S:.0f} s; serving continues, recomputing what the store misses)"
            self._last_passed, self.suppressed = now, 0
            return True


_shared = OncePerOutage()


def apply() -> None:
    for name in LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, OncePerOutage) for f in logger.filters):
            logger.addFilter(_shared)
