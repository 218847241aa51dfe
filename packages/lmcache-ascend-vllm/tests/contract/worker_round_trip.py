"""Worker side of LMCacheAscendConnectorV1Dynamic under the installed vLLM and LMCache releases, in
one process (run by test_contract_vllm_connector.py, which reads the last "ROUND TRIP" line).

vLLM's KVConnectorFactory builds the connector for a worker as that release's engine does (vLLM's
distributed state on gloo, world size 1); LMCache's engine comes up through our patches with our
connector and pool; it stores every layer of a vLLM-CPU-shaped paged cache and puts it back. Under
an LMCache 0.3.x whose worker side is CUDA-only (0.3.3), our patch must refuse with the fix instead.
With the argument LMCacheAscendConnector (vllm-ascend's name for LMCache on the NPU), the connector
is asked for by that name after vLLM's plugins and vllm-ascend's registration ran, as in a
vllm-ascend process.
Ends with os._exit: LMCache leaves threads running that its own shutdown cannot stop cleanly.
"""
from __future__ import annotations

import os
import socket
import sys
import traceback
from pathlib import Path

os.environ.setdefault("LMCACHE_TRACK_USAGE", "false")  # no usage reports to LMCache's server
sys.path.insert(0, str(Path(__file__).parent))

LAYOUT_HEADS = 2  # tiny_model_dir's num_key_value_heads


def round_trip(connector_name: str | None) -> str:
    import torch
    from vllm.config import set_current_vllm_config
    from vllm.distributed.parallel_state import init_distributed_environment, initialize_model_parallel

    from lmcache_ascend.integration.vllm.kv_connectors import PagedKVConnector
    from vllm_release import (build_vllm_config, create_connector, import_vllm, register_vllm_ascend_name,
                              resolve_kv_cache_layout)

    api, error = import_vllm()
    if api is None:
        raise RuntimeError(f"vLLM does not import: {error}")
    if connector_name:
        register_vllm_ascend_name()
        config, _ = build_vllm_config(api, connector_name, None)
    else:
        config, _ = build_vllm_config(api)
    resolve_kv_cache_layout(config)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with set_current_vllm_config(config):
        init_distributed_environment(1, 0, f"tcp://127.0.0.1:{port}", 0, "gloo")
        initialize_model_parallel(1, 1)
        connector = create_connector(api, config, api.KVConnectorRole.WORKER)
    if type(connector).__name__ != "LMCacheAscendConnectorV1Dynamic":
        raise RuntimeError(f"{config.kv_transfer_config.kv_connector} built {type(connector)}, not our connector")
    impl = connector._lmcache_engine
    engine = getattr(impl, "lmcache_engine", None)
    if engine is None:
        raise RuntimeError("LMCache built no engine for the worker (see its log above)")
    if type(engine.gpu_connector) is not PagedKVConnector:
        raise RuntimeError(f"LMCache's engine uses {type(engine.gpu_connector)}, not our PagedKVConnector")

    model = config.model_config
    layers, head_size = model.get_num_layers(config.parallel_config), model.get_head_size()
    chunk, block = engine.metadata.kv_shape[2], 16
    gen = torch.Generator().manual_seed(5)
    # vLLM's CPU platform: [num_blocks, kv_heads, block_size, 2 * head_size] per layer, registered
    # with the connector as vLLM's worker does (LMCache 0.5 finishes its engine set-up there).
    kvcaches = [torch.randn(2 * chunk // block, LAYOUT_HEADS, block, 2 * head_size, generator=gen)
                for _ in range(layers)]
    connector.register_kv_caches({f"model.layers.{i}.self_attn.attn": t for i, t in enumerate(kvcaches)})
    expected = [t.clone() for t in kvcaches]
    tokens = torch.arange(chunk)
    slots = torch.randperm(2 * chunk, generator=gen)[:chunk]
    engine.store(tokens, kvcaches=kvcaches, slot_mapping=slots)
    for t in kvcaches:
        t.zero_()
    found = engine.retrieve(tokens, kvcaches=kvcaches, slot_mapping=slots)
    if int(found.sum()) != chunk:
        raise RuntimeError(f"retrieved {int(found.sum())} of {chunk} tokens")
    for layer, (got, want) in enumerate(zip(kvcaches, expected)):
        # token rows: slot = block * block_size + offset -> [slots, heads, 2 * head_size]
        got_rows = got.transpose(1, 2).reshape(-1, LAYOUT_HEADS, 2 * head_size)
        want_rows = want.transpose(1, 2).reshape(-1, LAYOUT_HEADS, 2 * head_size)
        if not torch.equal(got_rows[slots], want_rows[slots]):
            raise RuntimeError(f"layer {layer} differs after the round trip")
        outside = torch.ones(got_rows.shape[0], dtype=torch.bool)
        outside[slots] = False
        if got_rows[outside].any():
            raise RuntimeError(f"layer {layer}: slots outside slot_mapping were written")
    backend = getattr(engine.storage_manager, "allocator_backend", None)
    pool = type(getattr(backend, "memory_allocator", None)).__name__
    return f"{layers} layers x {chunk} tokens through {type(engine.gpu_connector).__name__}, LMCache pool {pool}"


if __name__ == "__main__":
    try:
        print(f"ROUND TRIP ok: {round_trip(sys.argv[1] if len(sys.argv) > 1 else None)}", flush=True)
        code = 0
    except BaseException as exc:  # every outcome leaves through os._exit: LMCache's threads are not daemons
        traceback.print_exc()
        if isinstance(exc, RuntimeError) and "install lmcache==0.3.7" in str(exc):
            print(f"ROUND TRIP refused: {exc}", flush=True)  # our refusal of a CUDA-only LMCache 0.3.x
            code = 0
        else:
            print(f"ROUND TRIP failed: {type(exc).__name__}: {exc}", flush=True)
            code = 1
    sys.stderr.flush()
    os._exit(code)
