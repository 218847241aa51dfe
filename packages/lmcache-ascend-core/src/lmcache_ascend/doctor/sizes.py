"""Byte sizes as users write them (`--pool-size`, LMCache's max_local_cpu_size) and as reports print them."""
from __future__ import annotations

import re

KiB, MiB, GiB, TiB = 1 << 10, 1 << 20, 1 << 30, 1 << 40

_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-z]*)\s*$")
_UNITS = {"b": 1, "k": KiB, "kb": KiB, "kib": KiB, "m": MiB, "mb": MiB, "mib": MiB,
          "g": GiB, "gb": GiB, "gib": GiB, "t": TiB, "tb": TiB, "tib": TiB}
SIZE_HELP = ("a bare number is GiB, exactly like LMCache's max_local_cpu_size (5, 0.5); or a number with a "
             "unit: B, K/KB/KiB, M/MB/MiB, G/GB/GiB, T/TB/TiB (all powers of 1024, as LMCache counts)")


def parse_size(text: str) -> int:
    """'5' / '0.5' (GiB, like max_local_cpu_size), '512MiB', '5GB', '1073741824B' -> bytes."""
    match = _SIZE.match(text)
    number, unit_name = match.groups() if match else (None, "")
    unit = _UNITS.get(unit_name.lower()) if unit_name else GiB
    if number is None or unit is None:
        raise ValueError(f"invalid size {text!r}: {SIZE_HELP}")
    size = int(float(number) * unit)
    if size <= 0:
        raise ValueError(f"invalid size {text!r}: must be more than 0 bytes ({SIZE_HELP})")
    return size


def human_bytes(n: int) -> str:
    for unit, scale in (("TiB", TiB), ("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"
