"""Time to first token, cold vs warm, through vLLM on the CPU with LMCacheAscendConnectorV1Dynamic.

    python benchmarks/bench_ttft.py [--quick] [--out docs/benchmarks.md]

On the demo model (built locally), for 1k, 2k and 4k-token prompts: cold (computed and stored) vs
warm (same prompt again, prefix loaded from LMCache's local CPU tier), several prompts per length;
and across processes through a real Redis: process A stores, process B (empty local tier) loads.
Greedy outputs are compared with an engine that has no connector at all. vLLM's own prefix cache
is off everywhere, so all reuse is LMCache's. Target: warm <= 0.25x cold at 2k tokens.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import machine_info, write_section

LOCAL = {"chunk_size": 256, "local_cpu": True, "max_local_cpu_size": 1.0}


def engine(model: str, lmcache, prompts: list, *, mp: dict | None = None, env: dict | None = None) -> list[dict]:
    """One vLLM engine process serving `prompts` ([tokens, seed]) in order; returns the answers.
    mp: LMCache's multiprocess mode ({"port": ...}) instead of our connector."""
    spec = json.dumps({"model": model, "lmcache": lmcache, "prompts": prompts, "mp": mp})
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "2", "LMCACHE_DISABLE_BANNER": "1", **(env or {})}
    out = subprocess.run([sys.executable, __file__, "--engine", spec], capture_output=True, text=True, env=env,
                         timeout=1200)
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    if out.returncode != 0 or not lines:
        sys.stderr.write(out.stdout[-3000:] + out.stderr[-5000:])
        raise SystemExit(f"engine run failed ({out.returncode})")
    return json.loads(lines[-1][7:])


def run_engine_mode(spec: dict) -> None:
    from lmcache_ascend.integration.vllm import demo_model, serving

    llm = serving.start_llm(spec["model"], spec["lmcache"], mp=spec.get("mp"))
    serving.ask(llm, demo_model.prompt(300, seed=10_000), max_tokens=2)  # warm-up: one-time costs
    answers = []
    for tokens, seed in spec["prompts"]:
        a = serving.ask(llm, demo_model.prompt(tokens, seed=seed))
        answers.append({"tokens": tokens, "ttft_s": a.ttft_s, "token_ids": a.token_ids, "top_logprobs": a.top_logprobs,
                        "cached": a.cached_tokens})
    print("RESULT " + json.dumps(answers), flush=True)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [r["label"] for r in rows]
    x = range(len(rows))
    fig, ax = plt.subplots(figsize=(7, 3.6))
    ax.bar([i - 0.2 for i in x], [r["cold"] * 1000 for r in rows], 0.4, label="cold (computed)")
    ax.bar([i + 0.2 for i in x], [r["warm"] * 1000 for r in rows], 0.4, label="warm (from LMCache)")
    ax.set_xticks(list(x), labels)
    ax.set_ylabel("time to first token (ms)")
    ax.set_title("vLLM CPU + LMCacheAscendConnectorV1Dynamic, demo model")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one prompt per length, 1k and 2k only")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--engine", help=argparse.SUPPRESS)  # internal: run one engine process
    args = parser.parse_args()
    if args.engine:
        run_engine_mode(json.loads(args.engine))
        return 0

    from lmcache_ascend.integration.vllm import demo_model

    model = str(demo_model.build(Path(tempfile.gettempdir()) / "lmcache-ascend-demo-model"))
    lengths = [1000, 2000] if args.quick else [1000, 2000, 4000]
    reps = 1 if args.quick else 3
    prompts = [[n, 100 * n + r] for n in lengths for r in range(reps)]
    print(f"[bench] local tier: {len(prompts)} prompts cold then warm ...", flush=True)
    local = engine(model, LOCAL, [p for pair in zip(prompts, prompts) for p in pair])
    print("[bench] reference engine without the connector ...", flush=True)
    plain = engine(model, None, prompts)

    from lmcache_ascend.integration.vllm.serving import greedy_difference

    rows, identical = [], True
    for n in lengths:
        cold = [a for i, a in enumerate(local[0::2]) if prompts[i][0] == n]
        warm = [a for i, a in enumerate(local[1::2]) if prompts[i][0] == n]
        ref = [a for i, a in enumerate(plain) if prompts[i][0] == n]
        same = all(greedy_difference(c, w) is None for c, w in zip(cold, warm))  # cache on vs off
        identical &= same
        plain_same = sum(greedy_difference(c, r) is None for c, r in zip(cold, ref))
        c, w = statistics.median(a["ttft_s"] for a in cold), statistics.median(a["ttft_s"] for a in warm)
        rows.append({"label": f"{n // 1000}k local CPU", "tokens": n, "cold": c, "warm": w,
                     "cached": min(a["cached"] for a in warm), "same": same,
                     "plain_same": f"{plain_same} of {len(ref)}",
                     "plain": statistics.median(a["ttft_s"] for a in ref)})

    print("[bench] Redis across processes: A stores, B loads ...", flush=True)
    from lmcache_ascend.integration.vllm.serving import local_redis

    with local_redis() as (url, _):
        remote = {**LOCAL, "remote_url": url, "remote_serde": "naive"}
        a = engine(model, remote, [[2000, 7]])[0]
        b = engine(model, remote, [[2000, 8], [2000, 7]])  # B: a cold prompt of its own, then A's
    same = greedy_difference(a, b[1]) is None
    identical &= same
    rows.append({"label": "2k Redis, 2 processes", "tokens": 2000, "cold": b[0]["ttft_s"], "warm": b[1]["ttft_s"],
                 "cached": b[1]["cached"], "plain": None, "same": same, "plain_same": "-"})

    table = ["| case | prompt tokens | cold TTFT ms | warm TTFT ms | warm / cold | tokens from cache | "
             "greedy output warm = cold | no-connector engine: TTFT ms | same output as ours |",
             "|---|---:|---:|---:|---:|---:|---|---:|---|"]
    for r in rows:
        plain_ms = f"{r['plain'] * 1000:.0f}" if r["plain"] is not None else "-"
        table.append(f"| {r['label']} | {r['tokens']} | {r['cold'] * 1000:.0f} | {r['warm'] * 1000:.0f} | "
                     f"{r['warm'] / r['cold']:.2f}x | {r['cached']} | {'yes' if r['same'] else 'NO'} | {plain_ms} | "
                     f"{r['plain_same']} |")
    two_k = next(r for r in rows if r["tokens"] == 2000)
    ratio = two_k["warm"] / two_k["cold"]
    verdict = "**met**" if ratio <= 0.25 else f"**missed** ({ratio:.2f}x)"
    info = "\n".join(f"- {k}: {v}" for k, v in machine_info().items())
    png = None
    if args.out:
        png = args.out.with_name("benchmarks_ttft.png")
        plot(rows, png)
    section = f"""<!-- ttft:begin -->
## Time to first token through vLLM (`LMCacheAscendConnectorV1Dynamic`)

vLLM (vllm-cpu) on this machine's CPU serving the demo model (8 layers, hidden 512, 4 KV heads of
64, bf16; built locally by `lmcache_ascend.integration.vllm.demo_model`). vLLM's prefix cache is
off, so everything reused comes from LMCache. Cold = a new prompt (computed, then stored); warm =
the same prompt again. TTFT is vLLM's own first-token latency; medians of {reps} prompt(s) per
length, after a warm-up request. "Tokens from cache" is vLLM's count of prompt tokens it did not
compute (LMCache stores whole 256-token chunks, so the tail of each prompt is recomputed). The
Redis row: process A stores a 2k prompt; a new process B (empty local tier) first serves a cold
prompt of its own, then A's prompt from Redis.

Reproduce: `nox -s bench_serving` (or, with the vLLM stack installed,
`python benchmarks/bench_ttft.py --out docs/benchmarks.md`).

{info}

{chr(10).join(table)}

Greedy outputs the same with the cache on (warm, and process B through Redis) and off (cold, the
same engine computing everything): **{'yes' if identical else 'NO'}**. "The same" is
`serving.greedy_difference`: token by token equal with logprobs within 0.25 nats, up to a bf16
rounding tie where both runs' top two are that close. The last column compares, by the same rule,
with a separately started engine that has no KV connector at all (vLLM with any KV connector rounds
differently even with nothing loaded; docs/vllm.md).

Target warm <= 0.25x cold at 2k tokens: {verdict} (local CPU tier: {ratio:.2f}x).
{f'![TTFT cold vs warm]({png.name})' if png else ''}
<!-- ttft:end -->
"""
    print(section)
    if args.out:
        write_section(args.out, section, "ttft")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
