"""The demo: a long prompt sent cold, then warm, through vLLM on this host (CPU, or an Ascend NPU with
vllm-ascend) with LMCache.

    python -m lmcache_ascend.integration.vllm.demo [--tokens 2000] [--model-dir DIR]

Builds a small model locally (nothing is downloaded), starts vLLM with LMCacheAscendConnectorV1Dynamic
(LMCache's local CPU tier; no NPU, no server), and prints cold vs warm time to first token, the
prompt tokens served from the cache, and whether the outputs are identical.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path


def step(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=2000, help="prompt length in tokens (default 2000)")
    parser.add_argument("--model-dir", type=Path, default=Path(tempfile.gettempdir()) / "lmcache-ascend-demo-model")
    parser.add_argument("--verbose", action="store_true", help="show vLLM's and LMCache's logs")
    args = parser.parse_args()
    if not args.verbose:  # the demo's own lines are the story; engine logs stay available with --verbose
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        os.environ.setdefault("LMCACHE_LOG_LEVEL", "WARNING")
        os.environ.setdefault("LMCACHE_DISABLE_BANNER", "1")

    from lmcache_ascend.integration.vllm import demo_model, serving

    t0 = time.time()
    step(f"building the demo model in {args.model_dir} (random weights, local tokenizer) ...")
    model = demo_model.build(args.model_dir)
    step(f"model ready ({time.time() - t0:.1f} s); starting vLLM with LMCacheAscendConnectorV1Dynamic "
         "(takes ~30 s) ...")
    t1 = time.time()
    llm = serving.start_llm(str(model), {"chunk_size": 256, "local_cpu": True, "max_local_cpu_size": 1.0})
    step(f"vLLM ready ({time.time() - t1:.1f} s); warming up with an unrelated prompt ...")
    serving.ask(llm, demo_model.prompt(300, seed=99), max_tokens=2)

    prompt = demo_model.prompt(args.tokens, seed=1)
    step(f"sending a {args.tokens}-token prompt cold (computed, then stored by LMCache) ...")
    cold = serving.ask(llm, prompt)
    step("sending the same prompt again (warm: its KV cache is loaded from LMCache) ...")
    warm = serving.ask(llm, prompt)

    same = serving.greedy_difference(cold, warm) is None
    print()
    print(f"  prompt tokens                 {args.tokens}")
    print(f"  time to first token, cold     {cold.ttft_s * 1000:8.1f} ms")
    print(f"  time to first token, warm     {warm.ttft_s * 1000:8.1f} ms   ({warm.ttft_s / cold.ttft_s:.2f}x cold)")
    print(f"  tokens served from cache      {warm.cached_tokens} (cold: {cold.cached_tokens})")
    print(f"  same greedy output            {'yes' if same else 'NO'} (up to a bf16 rounding tie)")
    print()
    ok = same and warm.cached_tokens > 0
    step("done" if ok else "FAILED: the warm request was not served from the cache with the same output")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
