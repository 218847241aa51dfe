#!/usr/bin/env python
"""CacheGen's codec: ours (native, lmcache_ascend.ops) vs LMCache 0.5.6's baseline (torch + numba).

    python benchmarks/bench_cachegen.py [--quick] [--out docs/benchmarks.md]

One 256-token chunk of 32 layers x 1024 channels (K or V of an 8-head x 128 model), symbols
quantised to 32 bins with a bell-shaped spread as CacheGen's quantiser produces; the CDF of the
chunk (`calculate_cdf`), its encoding (`encode_fast_new`, LMCache's buffer of 2 bytes per token)
and its decoding (`decode_fast_prefsum`, as LMCache's decoder calls it, and `decode_fast_new`).
MB/s of symbols (one byte each) per call, median over rounds in which the contenders alternate,
each with its defaults (our thread pool, the baseline's ThreadPoolExecutor). Both produce the same
bytes first. Target: >= 5x the baseline.
"""
from __future__ import annotations

import argparse
import datetime
import os
import statistics
from pathlib import Path

os.environ.setdefault("LMCACHE_LOG_LEVEL", "WARNING")  # LMCache's import banner

import torch  # noqa: E402

from common import machine_info, sample_gbps, write_section  # noqa: E402

import lmcache_ascend.ops as ours  # noqa: E402
from lmcache.v1.platform.torch_ops import cachegen_kernels as baseline  # noqa: E402

NL, NT, NC, BINS = 32, 256, 1024, 32
TARGET = 5.0


def chunk():
    gen = torch.Generator().manual_seed(0)
    sym = (torch.randn(NL, NT, NC, generator=gen) * BINS / 8 + BINS / 2).round().clamp(0, BINS - 1).to(torch.int8)
    cdf = baseline.calculate_cdf(sym, BINS)
    return sym, cdf


def run(rounds: int, min_s: float) -> list[dict]:
    sym, cdf = chunk()
    nbytes = sym.numel()
    buf = {k: torch.zeros((NL, NC, 2 * NT), dtype=torch.uint8) for k in ("ours", "baseline")}
    lengths = {k: torch.zeros((NL, NC), dtype=torch.int32) for k in ("ours", "baseline")}
    ours.encode_fast_new(cdf, sym, buf["ours"], lengths["ours"])
    baseline.encode_fast_new(cdf, sym, buf["baseline"], lengths["baseline"])  # also compiles numba's kernels
    assert torch.equal(buf["ours"], buf["baseline"]) and torch.equal(lengths["ours"], lengths["baseline"])
    assert torch.equal(ours.calculate_cdf(sym, BINS), cdf)
    rows_buf, row_len = buf["ours"], lengths["ours"]
    flat = rows_buf.flatten()[(torch.arange(2 * NT).expand(NL, NC, -1) < row_len[..., None]).flatten()]
    prefsum = row_len.flatten().cumsum(0).reshape(NL, NC)
    out = {k: torch.zeros((NL, NT, NC), dtype=torch.uint8) for k in ("ours", "baseline")}
    cases = {
        "calculate_cdf": lambda m, k: m.calculate_cdf(sym, BINS),
        "encode_fast_new": lambda m, k: m.encode_fast_new(cdf, sym, buf[k], lengths[k]),
        "decode_fast_prefsum": lambda m, k: m.decode_fast_prefsum(cdf, flat, prefsum, out[k]),
        "decode_fast_new": lambda m, k: m.decode_fast_new(cdf, rows_buf, row_len, out[k]),
    }
    rows = []
    for op, call in cases.items():
        contenders = {"ours": lambda: call(ours, "ours"), "baseline": lambda: call(baseline, "baseline")}
        for fn in contenders.values():
            fn()
        if op.startswith("decode"):
            assert torch.equal(out["ours"], out["baseline"]) and torch.equal(out["ours"], sym.to(torch.uint8))
        samples = {k: [] for k in contenders}
        for r in range(rounds):
            for k in (("ours", "baseline") if r % 2 == 0 else ("baseline", "ours")):
                samples[k].append(sample_gbps(contenders[k], nbytes, min_s) * 1e3)  # MB/s
        med = {k: statistics.median(v) for k, v in samples.items()}
        rows.append({"op": op, **med, "ratio": med["ours"] / med["baseline"]})
    rows.append({"op": "compressed size", "ratio": float(row_len.sum()) / nbytes})
    return rows


def markdown(rows: list[dict], quick: bool) -> str:
    size = rows[-1]["ratio"]
    speed = rows[:-1]
    lines = ["<!-- cachegen:begin -->", "## CacheGen codec (`calculate_cdf`, `encode_fast_new`, `decode_fast_*`)", "",
             f"`python benchmarks/bench_cachegen.py{' --quick' if quick else ''}` "
             f"({datetime.date.today().isoformat()}): one {NT}-token chunk, {NL} layers x {NC} channels, {BINS} bins "
             f"(bell-shaped symbols; encoded to {size:.2f} bytes per symbol); MB/s of symbols (median), ours "
             "(native, thread pool) vs LMCache 0.5.6's baseline (torch + numba, ThreadPoolExecutor), same bytes out.",
             "", "| op | ours MB/s | baseline MB/s | ours / baseline |", "|---|---|---|---|"]
    for r in speed:
        lines.append(f"| {r['op']} | {r['ours']:.1f} | {r['baseline']:.1f} | {r['ratio']:.1f}x |")
    coder = [r for r in speed if r["op"] != "calculate_cdf"]
    worst = min(r["ratio"] for r in coder)
    lines += ["", f"Target: >= {TARGET}x the baseline for encode and decode (worst here {worst:.1f}x: "
              f"{'met' if worst >= TARGET else 'NOT met'}).", "",
              "Machine: " + ", ".join(f"{k} {v}" for k, v in machine_info().items()), "<!-- cachegen:end -->", ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (smoke test)")
    parser.add_argument("--out", type=Path, help="write the section into this markdown file")
    args = parser.parse_args()
    rounds, min_s = (2, 0.05) if args.quick else (5, 0.5)
    text = markdown(run(rounds, min_s), args.quick)
    print(text)
    if args.out:
        write_section(args.out, text, "cachegen")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
