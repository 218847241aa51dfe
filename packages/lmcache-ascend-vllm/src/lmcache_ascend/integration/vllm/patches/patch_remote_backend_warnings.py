"""One warning, not one per request, while LMCache's remote store (e.g. Redis) is unreachable.

Why: LMCache's RemoteBackend logs a warning or error on every lookup and every put that fails, so a
  stopped Redis floods the serving log (one line per request and per chunk) while vLLM carries on
  by recomputing.
How: a logging filter on LMCache's remote-backend loggers lets the first failure message through,
  counts the rest, and reports the count with the next message that is not a failure (e.g. after
  the connection recovers). Nothing else about LMCache's behaviour changes.
Versions: LMCache 0.5.x (checked against 0.5.6).
Remove when: LMCache rate-limits these messages itself.
"""
from __future__ import annotations

import logging
import threading

LOGGERS = ("lmcache.v1.storage_backend.remote_backend", "lmcache.v1.storage_backend.connector.redis_connector")
FAILURE_HINTS = ("failed", "Failed", "Connection is None", "Error", "error", "refused", "unreachable")


class OncePerOutage(logging.Filter):
    """Passes the first failure record of an outage; suppresses and counts the rest."""

    def __init__(self) -> None:
        super().__init__("lmcache_ascend.remote_outage")
        self._lock = threading.Lock()
        self.suppressed = 0
        self._in_outage = False

    def filter(self, record: logging.LogRecord) -> bool:
        failure = record.levelno >= logging.WARNING and any(h in record.getMessage() for h in FAILURE_HINTS)
        with self._lock:
            if failure:
                if self._in_outage:
                    self.suppressed += 1
                    return False
                self._in_outage = True
                record.msg = f"{record.msg} (lmcache-ascend: further remote-store failures are counted, not logged)"
                return True
            if self._in_outage:
                self._in_outage = False
                if self.suppressed:
                    record.msg = f"{record.msg} (after {self.suppressed} suppressed remote-store failure messages)"
                    self.suppressed = 0
            return True


def apply() -> None:
    for name in LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, OncePerOutage) for f in logger.filters):
            logger.addFilter(OncePerOutage())
