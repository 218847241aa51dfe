"""The doctor's report model: one Check per finding (a status, a one-line message, the fix for every
warn or fail, and structured details), and the text and JSON renderings of a list of them."""
from __future__ import annotations

import dataclasses
import json

import lmcache_ascend

OK, WARN, FAIL, INFO = "ok", "warn", "fail", "info"
STATUSES = (OK, INFO, WARN, FAIL)  # the order of the counts line


@dataclasses.dataclass
class Check:
    name: str  # stable key, e.g. "host.memlock"
    status: str  # ok / warn / fail / info
    message: str
    fix: str | None = None  # set for every warn and fail
    details: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"check {self.name!r} has status {self.status!r}, not one of {', '.join(STATUSES)}")
        if self.status in (WARN, FAIL) and not self.fix:
            raise ValueError(f"check {self.name!r} is {self.status} without a fix")
        # One line per check: native and loader errors can span lines.
        self.message = one_line(self.message)
        self.fix = one_line(self.fix) if self.fix else None


def one_line(text: str) -> str:
    # Lines become "; "-separated clauses; a line ending in ":" keeps introducing the next one.
    return "; ".join(line.strip() for line in text.splitlines() if line.strip()).replace(":;", ":")


def counts(checks: list[Check]) -> dict[str, int]:
    return {status: sum(c.status == status for c in checks) for status in STATUSES}


def exit_status(checks: list[Check]) -> int:
    return 1 if any(c.status == FAIL for c in checks) else 0


def to_json(checks: list[Check]) -> str:
    return json.dumps({"tool": "lmcache-ascend doctor", "version": lmcache_ascend.__version__,
                       "counts": counts(checks), "exit_status": exit_status(checks),
                       "checks": [dataclasses.asdict(c) for c in checks]}, indent=2)


def to_text(checks: list[Check]) -> str:
    width = max(len(c.name) for c in checks)
    lines = [f"lmcache-ascend doctor {lmcache_ascend.__version__}"]
    for c in checks:
        lines.append(f"  {c.status:<4}  {c.name:<{width}}  {c.message}")
        if c.fix:
            lines.append(f"  {'':<4}  {'':<{width}}  fix: {c.fix}")
    lines.append(", ".join(f"{n} {status}" for status, n in counts(checks).items()))
    return "\n".join(lines)
