"""LMCache "GPU connectors" for paged KV caches that live in host memory (vLLM's CPU platform) or on
an Ascend NPU: they move KV between vLLM's paged cache and LMCache memory objects with
lmcache_ascend's kernels. They work with LMCache 0.5.x and 0.3.x (the differences: the docstring of
lmcache_ascend.integration.vllm.lmcache_compat; the layout recogniser: lmcache_ascend.lmcache_compat).

The layout is found from the tensors vLLM registered (LMCache 0.5's own format detection, or their
shapes under 0.3), so the backend follows the tensors, never import order. LMCache's memory
objects keep their standard K-then-V formats (KV_2LTD, KV_T2D per layer), whatever the engine
layout: chunks stored by a CPU engine are readable by any other engine sharing the store.
"""
from __future__ import annotations

import logging
from typing import Any, Optional

import torch

from lmcache_ascend import lmcache_compat as compat
from lmcache_ascend.integration.vllm.lmcache_compat import gpu_connector_bases
from lmcache_ascend.layouts import PagedKV, describe_chunk, describe_paged
from lmcache_ascend.transfer import GATHER, SCATTER, slot_view, transfer_kv

logger = logging.getLogger(__name__)

GPUConnectorInterface, VLLMPagedMemLayerwiseGPUConnector = gpu_connector_bases()
MemoryFormat = compat.MemoryFormat


class PagedLayout:
    """The descriptor of vLLM's registered KV caches, found once and reused while they stay put."""

    def __init__(self, layout_hints: Optional[dict], hidden: int, use_mla: bool) -> None:
        self.layout_hints, self.hidden, self.use_mla = layout_hints, hidden, use_mla
        self._key: Optional[tuple] = None
        self._paged: Optional[PagedKV] = None

    def of(self, kvcaches: Any) -> PagedKV:
        first = compat.first_tensor(kvcaches)
        key = (len(kvcaches), first.data_ptr(), tuple(first.shape))
        if key != self._key:
            layout, normalized, found = compat.discover_kv_layout(kvcaches, hidden=self.hidden, use_mla=self.use_mla,
                                                                  layout_hints=self.layout_hints)
            self._paged = describe_paged(normalized, layout, "kvcaches")
            self._key = key
            logger.info("lmcache-ascend: KV cache layout %s (%s), %d layers, %d blocks of %d tokens, on %s",
                        layout, found, self._paged.num_layers, self._paged.num_blocks, self._paged.block_size,
                        self._paged.device)
        assert self._paged is not None
        return self._paged


def _init_state(conn: Any, hidden_dim_size: int, num_layers: int, kwargs: dict, kv_format: Any) -> None:
    """What both connectors keep: LMCache's metadata and the layout of vLLM's caches."""
    conn.hidden_dim_size, conn.num_layers = hidden_dim_size, num_layers
    conn.use_mla = kwargs.get("use_mla", False)
    conn.chunk_size, conn.dtype, conn.device = kwargs.get("chunk_size"), kwargs.get("dtype"), kwargs.get("device")
    conn.kvcaches = None
    conn.layout = PagedLayout(kwargs.get("layout_hints"), hidden_dim_size, conn.use_mla)
    conn.memory_format = MemoryFormat.KV_MLA_FMT if conn.use_mla else kv_format


class PagedKVConnector(GPUConnectorInterface):
    """Whole-chunk transfers: every layer of every chunk of a request in one native call."""

    def __init__(self, hidden_dim_size: int, num_layers: int, use_gpu: bool = False, **kwargs: Any) -> None:
        _init_state(self, hidden_dim_size, num_layers, kwargs, MemoryFormat.KV_2LTD)

    @classmethod
    def from_metadata(cls, metadata: Any, use_gpu: bool = False, device: Any = None,
                      layout_hints: Optional[dict] = None) -> "PagedKVConnector":
        shape = metadata.kv_shape  # (layers, 2 or 1, chunk_size, kv heads, head_size) in every generation
        return cls(shape[3] * shape[4], shape[0], use_gpu, chunk_size=shape[2], dtype=metadata.kv_dtype,
                   device=device, use_mla=metadata.use_mla, layout_hints=layout_hints)

    def get_shape(self, num_tokens: int) -> torch.Size:
        return torch.Size([1 if self.use_mla else 2, self.num_layers, num_tokens, self.hidden_dim_size])

    def _transfer(self, memory_objs: list, starts: list, ends: list, direction: int, **kwargs: Any) -> None:
        self.initialize_kvcaches_ptr(**kwargs)
        if self.kvcaches is None or "slot_mapping" not in kwargs:
            raise ValueError("lmcache-ascend: 'kvcaches' and 'slot_mapping' are required")
        paged = self.layout.of(self.kvcaches)
        fmt = "KV_MLA_FMT" if self.use_mla else "KV_2LTD"
        chunks = [(describe_chunk(obj.tensor, fmt, "memory object", writable=direction == GATHER), start, end)
                  for obj, start, end in zip(memory_objs, starts, ends)]
        # Retrieve leaves alone what vLLM already computed (its prefix cache hit).
        skip = kwargs.get("vllm_cached_tokens", 0) if direction == SCATTER else 0
        transfer_kv(paged, chunks, kwargs["slot_mapping"], direction, skip)
        if direction == GATHER:
            for obj in memory_objs:
                obj.metadata.fmt = self.memory_format

    def to_gpu(self, memory_obj: Any, start: int, end: int, **kwargs: Any) -> None:
        self._transfer([memory_obj], [start], [end], SCATTER, **kwargs)

    def from_gpu(self, memory_obj: Any, start: int, end: int, **kwargs: Any) -> None:
        self._transfer([memory_obj], [start], [end], GATHER, **kwargs)

    def batched_to_gpu(self, memory_objs: Any = None, starts: Any = None, ends: Any = None, **kwargs: Any) -> None:
        self._transfer(list(memory_objs), list(starts), list(ends), SCATTER, **kwargs)

    def batched_from_gpu(self, memory_objs: Any, starts: list, ends: list, **kwargs: Any) -> None:
        self._transfer(list(memory_objs), list(starts), list(ends), GATHER, **kwargs)


class PagedKVLayerwiseConnector(VLLMPagedMemLayerwiseGPUConnector):
    """Layer-by-layer transfers, driven by LMCache's store_layer / retrieve_layer generators.

    Subclasses LMCache's layerwise connector only so LMCache's engine accepts it as one; none of its
    CUDA-stream machinery is used. The generators keep the upstream yield protocol: retrieve yields
    num_layers + 2 times, store num_layers + 1 times.
    """

    def __init__(self, hidden_dim_size: int, num_layers: int, use_gpu: bool = False, **kwargs: Any) -> None:
        # Deliberately no super().__init__(): it creates CUDA streams.
        _init_state(self, hidden_dim_size, num_layers, kwargs, MemoryFormat.KV_T2D)
        self.use_gpu = False
        self.gpu_buffer_allocator = None

    from_metadata = classmethod(PagedKVConnector.from_metadata.__func__)

    def get_shape(self, num_tokens: int) -> torch.Size:
        if self.use_mla:
            return torch.Size([num_tokens, self.hidden_dim_size])
        return torch.Size([num_tokens, 2, self.hidden_dim_size])

    def _layer_chunks(self, memory_objs: list, starts: list, ends: list, writable: bool) -> list:
        fmt = "MLA_TD" if self.use_mla else "KV_T2D"
        return [(describe_chunk(obj.tensor, fmt, "memory object", writable=writable), start, end)
                for obj, start, end in zip(memory_objs, starts, ends)]

    def _prepare(self, kwargs: dict) -> tuple[PagedKV, Any]:
        self.initialize_kvcaches_ptr(**kwargs)
        if self.kvcaches is None or "slot_mapping" not in kwargs:
            raise ValueError("lmcache-ascend: 'kvcaches' and 'slot_mapping' are required")
        return self.layout.of(self.kvcaches), slot_view(kwargs["slot_mapping"])

    def batched_to_gpu(self, starts: list, ends: list, **kwargs: Any):
        paged, slots = self._prepare(kwargs)
        skip = kwargs.get("vllm_cached_tokens", 0)
        for layer in range(self.num_layers):
            memory_objs_layer = yield
            transfer_kv(paged.layer(layer), self._layer_chunks(memory_objs_layer, starts, ends, False), slots,
                        SCATTER, skip)
        yield  # the upstream protocol: one more step after the last layer ...
        yield  # ... and a final one once everything has landed (synchronous here)

    def batched_from_gpu(self, memory_objs: list, starts: list, ends: list, **kwargs: Any):
        paged, slots = self._prepare(kwargs)
        for layer in range(self.num_layers):
            transfer_kv(paged.layer(layer), self._layer_chunks(memory_objs[layer], starts, ends, True), slots, GATHER)
            for obj in memory_objs[layer]:
                obj.metadata.fmt = self.memory_format
            yield
        yield

