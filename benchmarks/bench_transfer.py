#!/usr/bin/env python
"""KV-cache transfer benchmark: our native kernel vs a contiguous copy vs LMCache 0.5.6's fallback.

    python benchmarks/bench_transfer.py                          # full run, prints the table
    python benchmarks/bench_transfer.py --out docs/benchmarks.md # also writes the doc section + plot
    python benchmarks/bench_transfer.py --quick                  # smoke test (< 30 s)

Gather (D2H, store: paged cache -> LMCache memory object) and scatter (H2D, retrieve) are timed for
each engine layout and block size. The contenders of one case are interleaved round by round and
the median per contender is reported, so a noisy neighbour slows all of them alike instead of
skewing whichever happened to run during the disturbance.
"""
from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

# LMCache logs an INFO banner on import; keep the benchmark output readable.
os.environ.setdefault("LMCACHE_LOG_LEVEL", "WARNING")
# Contenders run back to back. By default torch's OpenMP workers keep spinning on their core after
# each parallel copy, so whatever runs next (our pool, or the fallback) finds one of the two cores
# taken. Passive waiting makes every contender start on an idle machine.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

import common  # noqa: E402
from common import sample_gbps  # noqa: E402

import lmcache_ascend  # noqa: E402
from lmcache_ascend.ops import multi_layer_kv_transfer as ours_transfer  # noqa: E402
from lmcache.lmcache_native import EngineKVFormat, TransferDirection  # noqa: E402
from lmcache.v1.platform.torch_ops.mem_kernels import multi_layer_kv_transfer as fallback_transfer  # noqa: E402

BEGIN, END = "<!-- transfer:begin -->", "<!-- transfer:end -->"
TARGET_VS_COPY = 0.8       # ours >= 0.8x a contiguous copy of the same bytes
TARGET_VS_FALLBACK = 4.0   # ours >= 4x LMCache's torch fallback
CPU = torch.device("cpu")
DIRECTIONS = [  # (name, our int, LMCache enum)
    ("gather (D2H, store)", int(TransferDirection.D2H), TransferDirection.D2H),
    ("scatter (H2D, retrieve)", int(TransferDirection.H2D), TransferDirection.H2D),
]


@dataclass
class Config:
    num_layers: int = 32
    num_tokens: int = 256
    num_heads: int = 8
    head_size: int = 128
    dtype: torch.dtype = torch.float16
    block_sizes: tuple = (16, 128)
    slots_per_layer: int = 8192   # 32x the chunk's tokens, so the chunk's blocks are scattered
    warmup: int = 2               # untimed calls per contender before the rounds
    rounds: int = 25              # samples per contender (median reported)
    min_sample_s: float = 0.02    # one sample repeats the call until this much time has passed


QUICK = Config(num_layers=8, slots_per_layer=2048, warmup=1, rounds=3, min_sample_s=0.005)


# ---------------------------------------------------------------------------------------------
# Layouts: how a paged layer is shaped, and a plain-torch reference for one layer (verification).
# ---------------------------------------------------------------------------------------------

@dataclass
class Layout:
    label: str
    fmt: EngineKVFormat
    planes: int  # leading axis of the LMCache memory object: 2 = separate K/V, 1 = K/V packed

    def layer_shape(self, c: Config, nb: int, bs: int) -> tuple:
        if self.fmt == EngineKVFormat.NL_X_TWO_NB_BS_NH_HS:
            return (2, nb, bs, c.num_heads, c.head_size)
        return (nb, c.num_heads, bs, 2 * c.head_size)  # NL_X_NB_NH_BS_CS: K/V packed per head

    def hidden(self, c: Config) -> int:
        return c.num_heads * c.head_size * (2 // self.planes)

    def ref_gather(self, layer, blk, off) -> torch.Tensor:
        """[planes, T, hidden] read from one paged layer at (block, offset) per token."""
        if self.fmt == EngineKVFormat.NL_X_TWO_NB_BS_NH_HS:
            return layer[:, blk, off].flatten(2)              # [2, T, NH, HS] -> [2, T, NH*HS]
        return layer[blk, :, off].flatten(1).unsqueeze(0)     # [T, NH, 2HS] -> [1, T, NH*2HS]

    def ref_scatter(self, layer, blk, off, src) -> None:
        """Write src [planes, T, hidden] into one paged layer at (block, offset) per token."""
        if self.fmt == EngineKVFormat.NL_X_TWO_NB_BS_NH_HS:
            layer[:, blk, off] = src.unflatten(2, layer.shape[-2:])
        else:
            layer[blk, :, off] = src[0].unflatten(1, layer.shape[1::2])


LAYOUTS = [
    Layout("flash-attn", EngineKVFormat.NL_X_TWO_NB_BS_NH_HS, planes=2),
    Layout("vLLM-CPU", EngineKVFormat.NL_X_NB_NH_BS_CS, planes=1),
]


@dataclass
class Case:
    layout: Layout
    block_size: int
    direction: str
    samples: dict   # contender -> GB/s per round (index r = round r, for every contender)
    fallback_note: str = ""  # why the fallback was not timed, if it was not

    @property
    def gbps(self) -> dict:
        return {n: statistics.median(s) for n, s in self.samples.items()}

    @property
    def spread(self) -> dict:
        """Interquartile range / median per contender: how noisy its samples were."""
        out = {}
        for n, s in self.samples.items():
            q = statistics.quantiles(s, n=4) if len(s) >= 2 else [s[0]] * 3
            out[n] = (q[2] - q[0]) / statistics.median(s)
        return out

    def ratio(self, other: str) -> float | None:
        """Median over rounds of ours / other within the same round. Contenders of one round ran
        within a fraction of a second of each other, so load changes on the host cancel out.
        "copy" is the faster of torch's threaded and 1-thread copy in that round."""
        if other not in self.samples:
            return None
        s = self.samples
        ref = [max(a, b) for a, b in zip(s["copy"], s["copy_1t"])] if other == "copy" else s[other]
        return statistics.median(o / r for o, r in zip(s["ours"], ref))


def bits(t: torch.Tensor) -> torch.Tensor:
    """Compare raw bytes: random fp16 bit patterns include NaNs, which never compare equal."""
    return t.view(torch.int16)


def random_fill(t: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    # Real bytes on every page: an untouched (e.g. torch.zeros) cache maps to the kernel's shared
    # zero page, which is always in cache and makes gathers look faster than they are.
    bits(t).random_(generator=gen)
    return t


def vllm_slots(num_blocks: int, block_size: int, num_tokens: int, gen: torch.Generator) -> torch.Tensor:
    """Slot mapping as vLLM allocates it: blocks in random order, tokens consecutive in a block."""
    blocks = torch.randperm(num_blocks, generator=gen)[: -(-num_tokens // block_size)]
    return (blocks[:, None] * block_size + torch.arange(block_size)).flatten()[:num_tokens]


# ---------------------------------------------------------------------------------------------
# Verification (before any timing): ours vs the fallback vs plain torch, and the round trip.
# ---------------------------------------------------------------------------------------------

def verify(layout: Layout, c: Config, layers, call_ours, call_fallback, slots, bs, gen) -> str:
    """Raise if our kernel is wrong; return '' if the fallback agrees, else why it is not timed."""
    blk, off = slots // bs, slots % bs
    shape = (layout.planes, c.num_layers, c.num_tokens, layout.hidden(c))
    D2H, H2D = DIRECTIONS[0], DIRECTIONS[1]

    # Gather: ours must equal plain-torch indexing of every layer.
    stored = torch.empty(shape, dtype=c.dtype)
    call_ours(stored, D2H)
    expected = torch.stack([layout.ref_gather(layer, blk, off) for layer in layers], dim=1)
    assert torch.equal(bits(stored), bits(expected)), f"{layout.label} bs={bs}: our gather is wrong"

    # Scatter a different chunk: the two checked layers must equal a torch reference scatter
    # everywhere (no stray writes), and every layer must read back what was written.
    other = random_fill(torch.empty(shape, dtype=c.dtype), gen)
    checked = [0, c.num_layers - 1]
    want = {i: layers[i].clone() for i in checked}
    for i in checked:
        layout.ref_scatter(want[i], blk, off, other[:, i])
    call_ours(other, H2D)
    assert all(torch.equal(bits(layers[i]), bits(want[i])) for i in checked), \
        f"{layout.label} bs={bs}: our scatter is wrong"
    back = torch.empty(shape, dtype=c.dtype)
    call_ours(back, D2H)
    assert torch.equal(bits(back), bits(other)), f"{layout.label} bs={bs}: scatter then gather does not round-trip"

    # The fallback: same bytes as ours in both directions, or it is reported as unsupported.
    note = ""
    try:
        theirs = torch.zeros(shape, dtype=c.dtype)
        call_fallback(theirs, D2H)
        if not torch.equal(bits(theirs), bits(other)):
            note = "LMCache's fallback runs but gathers different bytes than ours / plain torch"
        else:
            call_ours(stored, H2D)              # put different bytes in the slots first ...
            call_fallback(other, H2D)           # ... then the fallback scatters `other` back
            if not all(torch.equal(bits(layers[i]), bits(want[i])) for i in checked):
                note = "LMCache's fallback scatter writes different bytes than ours / plain torch"
    except NotImplementedError as e:
        # 0.5.6 rejects every head-major (HND) layout up front, and its other branches assume
        # separate K and V planes, so K/V-packed layouts have no code path at all.
        note = (f"its `multi_layer_kv_transfer` raises NotImplementedError (\"{str(e).rstrip('.')}.\") for "
                f"`{layout.fmt.name}`: it has no code path for head-major or K/V-packed paged layouts, "
                "so there is no correct result to time")

    call_ours(stored, H2D)  # leave the cache as it was: the original chunk back in its slots
    return note


# ---------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------

def time_interleaved(contenders: dict, nbytes: int, c: Config) -> dict:
    """contenders: name -> (our threads, torch threads, fn); the thread counts are set untimed."""
    def setup(ours_threads, torch_threads):
        lmcache_ascend.set_num_threads(ours_threads)
        torch.set_num_threads(torch_threads)

    for *threads, fn in contenders.values():
        setup(*threads)
        for _ in range(c.warmup):
            fn()
    samples = {name: [] for name in contenders}
    names = list(contenders)
    for r in range(c.rounds):
        # Rotate who goes first so no contender always follows the same one.
        for name in names[r % len(names):] + names[: r % len(names)]:
            *threads, fn = contenders[name]
            setup(*threads)
            samples[name].append(sample_gbps(fn, nbytes, c.min_sample_s))
    return samples


def run_layout(layout: Layout, bs: int, c: Config, pool_threads: int, torch_threads: int,
               gen: torch.Generator) -> list[Case]:
    nb = c.slots_per_layer // bs
    page_buffer_size = nb * bs
    layers = [random_fill(torch.empty(layout.layer_shape(c, nb, bs), dtype=c.dtype), gen)
              for _ in range(c.num_layers)]
    ptrs = torch.tensor([t.data_ptr() for t in layers], dtype=torch.int64)
    slots = vllm_slots(nb, bs, c.num_tokens, gen)
    fmt = layout.fmt

    # Both kernels get the same arguments (int64 address tensor, as LMCache's connector passes);
    # ours takes plain ints, LMCache's fallback its pybind enums.
    def call_ours(kv, direction):
        ours_transfer(kv, ptrs, slots, CPU, page_buffer_size, direction[1], int(fmt), bs, c.head_size)

    def call_fallback(kv, direction):
        fallback_transfer(kv, ptrs, slots, CPU, page_buffer_size, direction[2], fmt, bs, c.head_size)

    note = verify(layout, c, layers, call_ours, call_fallback, slots, bs, gen)

    chunk = torch.empty((layout.planes, c.num_layers, c.num_tokens, layout.hidden(c)), dtype=c.dtype)
    call_ours(chunk, DIRECTIONS[0])  # the real chunk of this cache, so scatters rewrite the same bytes
    copy_src, copy_dst = chunk.clone(), torch.empty_like(chunk)
    cases = []
    for direction in DIRECTIONS:
        # name -> (our threads, torch threads, call). The copy also runs single-threaded: on a
        # busy 2-core host torch's 2-thread copy can stall on a preempted thread, and the target
        # should be measured against the best copy, not a crippled one.
        contenders = {
            "ours": (pool_threads, torch_threads, lambda: call_ours(chunk, direction)),
            "ours_1t": (1, torch_threads, lambda: call_ours(chunk, direction)),
            "copy": (pool_threads, torch_threads, lambda: copy_dst.copy_(copy_src)),
            "copy_1t": (pool_threads, 1, lambda: copy_dst.copy_(copy_src)),
        }
        if not note:  # the fallback is torch code: it runs on torch's default threads
            contenders["fallback"] = (pool_threads, torch_threads, lambda: call_fallback(chunk, direction))
        samples = time_interleaved(contenders, chunk.nbytes, c)
        lmcache_ascend.set_num_threads(pool_threads)
        torch.set_num_threads(torch_threads)
        cs = Case(layout, bs, direction[0], samples, note)
        cases.append(cs)
        print(f"  {layout.label:10s} bs={bs:<4d} {direction[0]:24s} "
              + "  ".join(f"{n}={v:6.2f}" for n, v in cs.gbps.items()) + " GB/s", flush=True)
    return cases


# ---------------------------------------------------------------------------------------------
# Report: markdown section + plot
# ---------------------------------------------------------------------------------------------

def machine_info() -> dict:
    info = common.machine_info()
    info["torch"] = f"{torch.__version__} (intra-op threads: {torch.get_num_threads()})"
    return info


class BackgroundLoad:
    """CPU time other processes (and the hypervisor, as steal) took from this machine meanwhile:
    on a shared host it says how much the numbers are disturbed."""

    def __init__(self):
        self.start = self._sample()

    @staticmethod
    def _sample():
        try:
            fields = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        except (OSError, ValueError):
            return None
        busy = sum(fields[:8]) - fields[3] - fields[4]  # all but idle and iowait (includes steal)
        mine = os.times().user + os.times().system
        return time.monotonic(), busy / os.sysconf("SC_CLK_TCK"), mine

    def share(self) -> float | None:
        """Fraction of all cores' time used by others since construction."""
        end = self._sample()
        if not self.start or not end:
            return None
        wall = (end[0] - self.start[0]) * (os.cpu_count() or 1)
        others = (end[1] - self.start[1]) - (end[2] - self.start[2])
        return max(0.0, others / wall)


def fmt_gbps(v) -> str:
    return "n/a" if v is None else f"{v:.2f}"


def fmt_ratio(r) -> str:
    return "n/a" if r is None else f"{r:.2f}x"


def target_lines(cases: list[Case]) -> list[str]:
    """One line per target and direction: met, or missed by how much at the worst case."""
    lines = []
    for label, key, target in [("contiguous copy", "copy", TARGET_VS_COPY),
                               ("LMCache fallback", "fallback", TARGET_VS_FALLBACK)]:
        for direction, *_ in DIRECTIONS:
            rows = [(cs.ratio(key), cs) for cs in cases if cs.direction == direction and key in cs.samples]
            head = f"- ours >= {target:g}x {label}, {direction}:"
            if not rows:
                lines.append(f"{head} no case to compare (fallback unsupported everywhere)")
                continue
            worst, cs = min(rows, key=lambda r: r[0])
            where = f"{cs.layout.label} bs={cs.block_size}"
            if worst >= target:
                lines.append(f"{head} **met** (worst case {worst:.2f}x, {where})")
            else:
                short = target - worst
                below = ", ".join(f"{cs.layout.label} bs={cs.block_size} {r:.3f}x" for r, cs in rows if r < target)
                lines.append(f"{head} **missed by {short:.2f}x** ({short / target:.0%} below target) at the "
                             f"worst case, {where} ({worst:.2f}x); {sum(r < target for r, _ in rows)} of "
                             f"{len(rows)} cases below target: {below}")
    return lines


def markdown(cases: list[Case], c: Config, quick: bool, pool_threads: int, torch_threads: int,
             background: float | None, png_name: str | None) -> str:
    chunk_bytes = 2 * c.num_layers * c.num_tokens * c.num_heads * c.head_size * c.dtype.itemsize
    out = [BEGIN, "## KV-cache transfer (`multi_layer_kv_transfer`)", ""]
    if quick:
        out += ["> **Quick mode (smoke test)**: reduced sizes and rounds; not representative.", ""]
    out += [
        "Moves one LMCache chunk of every layer between the paged KV cache and an LMCache memory "
        "object: **gather** (D2H, store: paged -> LMCache) and **scatter** (H2D, retrieve: "
        "LMCache -> paged). Compared with:",
        "",
        "- **copy**: `dst.copy_(src)` of two contiguous tensors of the same size: what moving these "
        "bytes costs with no indexing at all. Timed with torch's default intra-op threads and with "
        "one thread; *ours / copy* divides by the faster of the two (on a busy host the threaded copy "
        "can stall waiting for a preempted thread, and a crippled reference would flatter us).",
        "- **LMCache fallback**: LMCache's torch fallback `lmcache.v1.platform.torch_ops.mem_kernels."
        "multi_layer_kv_transfer` (what LMCache runs where it has no native kernel), with the same "
        "arguments.",
        "",
        f"Shape: {c.num_layers} layers, {c.num_tokens} tokens, {c.num_heads} KV heads x {c.head_size} "
        f"head size, {str(c.dtype).replace('torch.', '')}; paged cache of {c.slots_per_layer} slots per "
        "layer, slot mapping = the chunk's blocks in random order, tokens consecutive within a block "
        "(as vLLM allocates). Layouts: flash-attn = `NL_X_TWO_NB_BS_NH_HS` (per layer "
        "[2, NB, BS, NH, HS]); vLLM-CPU = `NL_X_NB_NH_BS_CS` (vLLM's CPU platform, per layer "
        "[NB, NH, BS, 2*HS], K/V packed, moved as one plane).",
        "",
        f"GB/s = bytes of the LMCache memory object ({chunk_bytes / 2**20:.0f} MiB = {chunk_bytes} bytes) "
        f"/ time, 1 GB = 1e9 bytes. Each figure is the median of {c.rounds} rounds; in every round each "
        f"contender runs once (repeating the call for >= {c.min_sample_s * 1e3:g} ms), in rotating order, "
        f"after {c.warmup} warm-up call(s). The ratio columns are medians of the per-round ratios "
        "(contenders of one round run within a fraction of a second, so a load change on the host "
        "cancels out); they can differ slightly from the ratio of the two medians shown. Before timing, the script checks that our gather equals "
        "plain torch indexing, that our scatter writes exactly the mapped slots, that a scatter after "
        "a gather round-trips, and that ours and the fallback produce identical bytes in both "
        "directions wherever the fallback supports the layout.",
        "",
        "Reproduce (from the repository root):",
        "",
        "```",
        "nox -s bench",
        "# or, in an environment with lmcache_ascend, lmcache 0.5.6, torch and matplotlib installed:",
        "python benchmarks/bench_transfer.py --out docs/benchmarks.md",
        "```",
        "",
        "Machine:",
        "",
    ]
    out += [f"- {k}: {v}" for k, v in machine_info().items()]
    out += [f"- our thread pool: {pool_threads} thread(s) (default = usable cores); the "
            "\"ours, 1 thread\" column is the same kernel after `lmcache_ascend.set_num_threads(1)`",
            f"- measured {datetime.date.today().isoformat()}"
            + ("" if background is None else
               f"; other processes used {background:.0%} of the machine's CPU time during the run (a "
               "shared host: the threaded contenders, ours and torch's copy, suffer most when a core is "
               "taken)"), ""]

    out += [
        f"| layout | block size | direction | ours GB/s ({pool_threads} thr) | ours, 1 thread GB/s "
        f"| copy GB/s ({torch_threads} thr) | copy, 1 thread GB/s | LMCache fallback GB/s "
        "| ours / copy | ours / fallback |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for cs in cases:
        g = cs.gbps
        out.append(f"| {cs.layout.label} | {cs.block_size} | {cs.direction} | {fmt_gbps(g['ours'])} "
                   f"| {fmt_gbps(g['ours_1t'])} | {fmt_gbps(g['copy'])} | {fmt_gbps(g['copy_1t'])} "
                   f"| {fmt_gbps(g.get('fallback'))} "
                   f"| {fmt_ratio(cs.ratio('copy'))} | {fmt_ratio(cs.ratio('fallback'))} |")
    spreads = [(v, n, cs) for cs in cases for n, v in cs.spread.items()]
    worst, name, cs = max(spreads, key=lambda x: x[0])
    out += ["", f"Noise (interquartile range / median of a cell's {c.rounds} samples): "
            f"{statistics.median(x[0] for x in spreads):.0%} for the median cell, at most {worst:.0%} "
            f"({name}, {cs.layout.label} bs={cs.block_size} {cs.direction})."]
    notes = sorted({(cs.layout.label, cs.fallback_note) for cs in cases if cs.fallback_note})
    for label, note in notes:
        out += ["", f"n/a for {label}: not supported by LMCache's fallback: {note}."]
    out += ["", f"Targets (ours = {pool_threads}-thread pool):", ""] + target_lines(cases)
    if png_name:
        out += ["", f"![Transfer throughput per case]({png_name})"]
    out += [END]
    return "\n".join(out) + "\n"


def plot(cases: list[Case], path: Path, pool_threads: int, torch_threads: int) -> None:
    import matplotlib
    matplotlib.use("Agg")  # no display on CI / servers
    import matplotlib.pyplot as plt

    series = [("ours", f"ours ({pool_threads} threads)", "tab:blue"), ("ours_1t", "ours (1 thread)", "lightskyblue"),
              ("copy", f"contiguous copy ({torch_threads} threads)", "dimgray"),
              ("copy_1t", "contiguous copy (1 thread)", "silver"), ("fallback", "LMCache 0.5.6 fallback", "tab:orange")]
    fig, axes = plt.subplots(1, len(DIRECTIONS), figsize=(13, 5), sharey=True)
    width = 0.16
    for ax, (direction, *_) in zip(axes, DIRECTIONS):
        rows = [cs for cs in cases if cs.direction == direction]
        for k, (key, label, color) in enumerate(series):
            for i, cs in enumerate(rows):
                x = i + (k - (len(series) - 1) / 2) * width
                v = cs.gbps.get(key)
                if v is None:
                    ax.text(x, 0.1, "n/a", ha="center", va="bottom", rotation=90, fontsize=8)
                    continue
                ax.bar(x, v, width, color=color, label=label if i == 0 else None)
                ax.text(x, v, f"{v:.1f}" if v >= 1 else f"{v:.2f}", ha="center", va="bottom", fontsize=7)
        ax.set_xticks(range(len(rows)), [f"{cs.layout.label}\nbs={cs.block_size}" for cs in rows])
        ax.set_title(direction)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("GB/s (higher is better)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=len(series), frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke test: fewer layers, slots and rounds")
    ap.add_argument("--out", type=Path, help="markdown file whose transfer section to (re)write, "
                    "e.g. docs/benchmarks.md; the plot goes next to it")
    args = ap.parse_args()
    c = QUICK if args.quick else Config()
    pool_threads, torch_threads = lmcache_ascend.get_num_threads(), torch.get_num_threads()
    print(f"lmcache_ascend threads: {pool_threads}; torch threads: {torch.get_num_threads()}; "
          f"{'quick' if args.quick else 'full'} mode", flush=True)

    background = BackgroundLoad()
    gen = torch.Generator().manual_seed(0)
    cases = []
    for layout in LAYOUTS:
        for bs in c.block_sizes:
            cases += run_layout(layout, bs, c, pool_threads, torch_threads, gen)

    png_name = None
    if args.out:
        png = args.out.parent / "benchmarks_transfer.png"
        png.parent.mkdir(parents=True, exist_ok=True)
        plot(cases, png, pool_threads, torch_threads)
        png_name = png.name  # the md sits in the same folder
    section = markdown(cases, c, args.quick, pool_threads, torch_threads, background.share(), png_name)
    print()
    print(section)
    if args.out:
        common.write_section(args.out, section, "transfer")
        print(f"wrote {args.out} and {args.out.parent / png_name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
