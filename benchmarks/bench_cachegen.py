#!/usr/bin/env python
"""CacheGen's codec: ours (native, lmcache_ascend.ops) vs LMCache 0.5.6's baseline (torch + numba).

    python benchmarks/bench_cachegen.py [--quick] [--out docs/benchmarks.md]

The calls LMCache's CacheGen serde makes for one 256-token chunk of Llama-3.1-8B (32 layers,
8 KV heads x 128; `lmcache/storage_backend/serde/cachegen_encoder.py` and `_decoder.py`): K and
V quantised by LMCache's own `torch_quant_vectorized` with the model's bins (CacheGenConfig: K 32
bins in layers 0-9 and 16 after, V 32 in layers 0-1 and 16 after), so the symbols are the
[64 = 2 x 32 layers, 256 tokens, 1024 channels] int8 tensor the encoder builds; the KV values are
random normal (a real model's outlier channels narrow the symbol spread further).

- `calculate_cdf`: the two calls (K half, V half; num_bins = the largest bin count, 32);
- `encode_fast_new`: into LMCache's [64, 1024, 256] uint8 buffer and [64, 1024] int32 lengths;
- `decode_fast_prefsum`: the packed bytes and running lengths, as the decoder calls it;
- `decode_fast_new`: the per-row buffer and lengths (a DeviceOps name the serde does not call).

MB/s = symbols (one byte each, 16.8 M per chunk; the fp16 KV is twice that) per second. Each
contender runs with its defaults (our thread pool over the usable cores; the baseline's numba
kernels under its ThreadPoolExecutor). In each round both run, in alternating order; the ratio is
the median of the per-round ratios, with its range over the rounds. Both produce the same bytes
first. Target: >= 5x the baseline for encode and decode.
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
from lmcache.storage_backend.serde import cachegen_encoder as serde  # noqa: E402
from lmcache.storage_backend.serde.cachegen_basics import CACHEGEN_GPU_MAX_TOKENS_PER_CHUNK  # noqa: E402
from lmcache.v1.platform.torch_ops import cachegen_kernels as baseline  # noqa: E402
from lmcache.v1.storage_backend.naive_serde.cachegen_basics import CacheGenConfig  # noqa: E402

MODEL, NL, NH, HS, CHUNK = "meta-llama/Llama-3.1-8B-Instruct", 32, 8, 128, 256
TARGET = 5.0


def bins_per_layer(specs) -> torch.Tensor:
    bins = torch.zeros(NL)
    for spec in specs:
        bins[spec.start_layer:spec.end_layer] = spec.bins
    return bins


def chunk() -> dict:
    """Symbols, CDF and both stream layouts of one chunk, as LMCache's serde produces them."""
    config = CacheGenConfig.from_model_name(MODEL)
    key_bins, value_bins = bins_per_layer(config.kspecs), bins_per_layer(config.vspecs)
    gen = torch.Generator().manual_seed(0)
    kv = torch.randn(NL, 2, CHUNK, NH, HS, generator=gen).to(torch.float16)
    fp_k, fp_v = serde._split_kv(kv)
    key, _ = serde.torch_quant_vectorized(key_bins, fp_k)
    value, _ = serde.torch_quant_vectorized(value_bins, fp_v)
    sym = torch.cat((key, value))  # [2 * NL, CHUNK, NH * HS] int8
    num_bins = int(max(key_bins.max(), value_bins.max()))
    cdf = torch.cat([baseline.calculate_cdf(key, int(key_bins.max())),
                     baseline.calculate_cdf(value, int(value_bins.max()))])
    buffer = torch.zeros((2 * NL, NH * HS, CACHEGEN_GPU_MAX_TOKENS_PER_CHUNK), dtype=torch.uint8)
    lengths = torch.zeros((2 * NL, NH * HS), dtype=torch.int32)
    baseline.encode_fast_new(cdf, sym, buffer, lengths)
    return {"key": key, "value": value, "sym": sym, "num_bins": num_bins, "cdf": cdf, "buffer": buffer,
            "lengths": lengths, "packed": serde.collect_bytes(buffer, lengths),
            "prefsum": lengths.flatten().cumsum(0).reshape(lengths.shape)}


def cases(c: dict) -> dict:
    """op -> (call(module, outputs), outputs of one contender, bytes-equal check)."""
    sym, cdf = c["sym"], c["cdf"]

    def cdf_call(m, out):
        out["cdf"] = torch.cat([m.calculate_cdf(c["key"], c["num_bins"]), m.calculate_cdf(c["value"], c["num_bins"])])

    def encode_call(m, out):
        m.encode_fast_new(cdf, sym, out["buffer"], out["lengths"])

    def prefsum_call(m, out):
        m.decode_fast_prefsum(cdf, c["packed"], c["prefsum"], out["sym"])

    def rows_call(m, out):
        m.decode_fast_new(cdf, c["buffer"], c["lengths"], out["sym"])

    def encoded():
        return {"buffer": torch.zeros_like(c["buffer"]), "lengths": torch.zeros_like(c["lengths"])}

    def decoded():
        return {"sym": torch.zeros(sym.shape, dtype=torch.uint8)}

    def same_cdf(out):
        return torch.equal(out["cdf"], cdf)

    def same_stream(out):
        return torch.equal(out["buffer"], c["buffer"]) and torch.equal(out["lengths"], c["lengths"])

    def same_symbols(out):
        return torch.equal(out["sym"], sym.to(torch.uint8))

    return {"calculate_cdf": (cdf_call, dict, same_cdf), "encode_fast_new": (encode_call, encoded, same_stream),
            "decode_fast_prefsum": (prefsum_call, decoded, same_symbols),
            "decode_fast_new": (rows_call, decoded, same_symbols)}


def run(rounds: int, min_s: float) -> tuple[dict, list[dict]]:
    c = chunk()
    nbytes = c["sym"].numel()
    rows = []
    for op, (call, outputs, same) in cases(c).items():
        outs = {"ours": outputs(), "baseline": outputs()}
        contenders = {k: (lambda m, o: lambda: call(m, o))(m, outs[k]) for k, m in (("ours", ours), ("baseline", baseline))}
        for k, fn in contenders.items():
            fn()  # warm-up (numba loads its cached kernels)
            assert same(outs[k]), f"{op}: {k} does not reproduce LMCache's output"
        samples = {k: [] for k in contenders}
        for r in range(rounds):
            for k in (("ours", "baseline") if r % 2 == 0 else ("baseline", "ours")):
                samples[k].append(sample_gbps(contenders[k], nbytes, min_s) * 1e3)  # MB/s
        ratios = [a / b for a, b in zip(samples["ours"], samples["baseline"])]
        rows.append({"op": op, "ours": statistics.median(samples["ours"]),
                     "baseline": statistics.median(samples["baseline"]), "ratio": statistics.median(ratios),
                     "low": min(ratios), "high": max(ratios)})
    size = {"symbols": nbytes, "bytes": int(c["lengths"].sum()), "kv_bytes": 2 * nbytes}
    return size, rows


def markdown(size: dict, rows: list[dict], rounds: int, quick: bool) -> str:
    cmd = f"python benchmarks/bench_cachegen.py{' --quick' if quick else ''} --out docs/benchmarks.md"
    lines = ["<!-- cachegen:begin -->", "## CacheGen codec (`calculate_cdf`, `encode_fast_new`, `decode_fast_*`)", "",
             f"`{cmd}` ({datetime.date.today().isoformat()}, {rounds} rounds): the calls LMCache's CacheGen serde "
             f"makes for one {CHUNK}-token chunk of {MODEL.split('/')[-1]} ({NL} layers x K and V, {NH} KV heads x "
             f"{HS}): symbols [{2 * NL}, {CHUNK}, {NH * HS}] from LMCache's own quantiser with the model's bins "
             "(32 / 16), random-normal KV; encoded to "
             f"{size['bytes'] / size['symbols']:.2f} bytes per symbol. MB/s of symbols ({size['symbols'] / 1e6:.1f} M "
             "per chunk), median; ours (native, thread pool) vs LMCache 0.5.6's baseline "
             "(`lmcache.v1.platform.torch_ops.cachegen_kernels`: torch + numba, ThreadPoolExecutor), run "
             "alternately in each round, same bytes out. Ratio: median of the per-round ratios [lowest - highest].",
             "", "| op | ours MB/s | baseline MB/s | ours / baseline |", "|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['op']} | {r['ours']:.1f} | {r['baseline']:.1f} | "
                     f"{r['ratio']:.1f}x [{r['low']:.1f} - {r['high']:.1f}] |")
    coder = [r for r in rows if r["op"] != "calculate_cdf"]
    worst = min(coder, key=lambda r: r["ratio"])
    lines += ["", f"Target: >= {TARGET:.0f}x the baseline for encode and decode (worst here {worst['ratio']:.1f}x, "
              f"{worst['op']}: {'met' if worst['ratio'] >= TARGET else 'NOT met'}).", "",
              "Machine: " + ", ".join(f"{k} {v}" for k, v in machine_info().items()),
              "<!-- cachegen:end -->", ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter rounds (smoke test, noisy machines)")
    parser.add_argument("--out", type=Path, help="write the section into this markdown file")
    args = parser.parse_args()
    rounds, min_s = (3, 0.05) if args.quick else (9, 0.5)
    size, rows = run(rounds, min_s)
    text = markdown(size, rows, rounds, args.quick)
    print(text)
    if args.out:
        write_section(args.out, text, "cachegen")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
