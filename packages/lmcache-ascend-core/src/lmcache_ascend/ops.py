"""LMCache >= 0.5 device-ops surface: the names and signatures of `lmcache.cuda_ops`.

LMCache 0.5.6's `NpuDeviceOps.ensure_native` imports this module and `DeviceOps.bind_native`
binds every public callable and class in it, so only the ops themselves are public here;
helpers are imported under leading-underscore names.

Direction values are LMCache's `TransferDirection`: H2D = 0 (LMCache -> paged, retrieve),
D2H = 1 (paged -> LMCache, store). Format values are `EngineKVFormat` members or their ints.
"""

import ctypes as _ctypes
import logging as _logging
import math as _math
from typing import TYPE_CHECKING as _TYPE_CHECKING
from typing import Any as _Any

if _TYPE_CHECKING:  # the block op's annotation names torch.Tensor (LMCache's worker reads it)
    import torch

from lmcache_ascend import completions as _completions
from lmcache_ascend import memory as _memory
from lmcache_ascend import transfer as _transfer
from lmcache_ascend._tensors import address_view as _address_view
from lmcache_ascend._tensors import as_view as _as_view
from lmcache_ascend._tensors import dtype_name as _dtype_name
from lmcache_ascend.engine_formats import FORMAT_VALUES as _FORMAT_VALUES
from lmcache_ascend.engine_formats import PagedGeometry as _PagedGeometry
from lmcache_ascend.engine_formats import engine_format as _engine_format
from lmcache_ascend.engine_formats import engine_views as _engine_views
from lmcache_ascend.engine_formats import paged_from_format as _paged_from_format
from lmcache_ascend.layouts import describe_chunk as _describe_chunk
from lmcache_ascend.layouts import describe_paged as _describe_paged

_H2D, _D2H = 0, 1
_logger = _logging.getLogger(__name__)
_announced: set = set()  # (op, format, direction) already logged in this process
_SEPARATE_KV = _FORMAT_VALUES["NL_X_TWO_X_NB_BS_NH_HS"]

# LMCache's own types, re-exported (the identical objects) where LMCache is installed: its parity
# suite and callers build them as `ops.PageBufferShapeDesc()` / `ops.TransferDirection.H2D`, and
# LMCache's DeviceOps takes them from the module it binds. Resolved on first access, not at import:
# importing LMCache here would make LMCache bind this module while it is half imported (LMCache
# binds its device module while `import lmcache` runs) and so bind none of our kernels.
_LMCACHE_TYPES = ("EngineKVFormat", "PageBufferShapeDesc", "TransferDirection")


def _lmcache_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("lmcache") is not None


def __getattr__(name: str) -> _Any:
    if name in _LMCACHE_TYPES and _lmcache_installed():
        from lmcache import lmcache_native

        return getattr(lmcache_native, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list:
    return sorted([*globals(), *(_LMCACHE_TYPES if _lmcache_installed() else ())])


def _kernel_direction(direction: _Any) -> int:
    try:
        value = int(direction)
    except (TypeError, ValueError):
        value = None
    if value == _D2H:
        return _transfer.GATHER
    if value == _H2D:
        return _transfer.SCATTER
    raise ValueError(f"direction={direction!r} must be TransferDirection.H2D (0, LMCache -> paged) "
                     "or TransferDirection.D2H (1, paged -> LMCache)")


def _device_type(device: _Any) -> str:
    return getattr(device, "type", None) or str(device).split(":")[0]


def _layer_bases(key_value_ptrs: _Any, tensors_per_layer: int, num_layers: int):
    """(addresses, extent, dtype, device, numel) of the paged tensors named by key_value_ptrs; all but
    the addresses are None when only raw addresses are given."""
    if isinstance(key_value_ptrs, (list, tuple)) and all(isinstance(p, int) for p in key_value_ptrs):
        addresses = list(key_value_ptrs)
    elif isinstance(key_value_ptrs, (list, tuple)):
        entries = list(key_value_ptrs)
        if tensors_per_layer == 2 and all(isinstance(e, (list, tuple)) for e in entries):
            entries = [t for pair in entries for t in pair]
        views = [_as_view(t, f"key_value_ptrs[{i}]", writable=True) for i, t in enumerate(entries)]
        if len(views) != num_layers * tensors_per_layer:
            raise ValueError(f"key_value_ptrs has {len(views)} tensors; key_value has {num_layers} layers "
                             f"and this format takes {tensors_per_layer} tensor(s) per layer")
        for i, v in enumerate(views):
            if not v.is_contiguous():
                raise ValueError(f"key_value_ptrs[{i}]: paged KV tensors must be contiguous, got {v.describe()}")
            if v.dtype != views[0].dtype or v.device != views[0].device or v.numel() != views[0].numel():
                raise ValueError(f"key_value_ptrs[{i}]: {v.describe()} differs from key_value_ptrs[0]: "
                                 f"{views[0].describe()}")
        return ([v.address for v in views], min(v.extent_from(v.address) for v in views),
                views[0].dtype, views[0].device, views[0].numel())
    else:
        # An int64 tensor of addresses: the kernel can only trust page_buffer_size for the extent.
        ptrs = _as_view(key_value_ptrs, "key_value_ptrs")
        if ptrs.dtype not in ("int64", "uint64") or ptrs.ndim != 1:
            raise TypeError(f"key_value_ptrs: expected a list of tensors or a 1-D int64 tensor of addresses, "
                            f"got {ptrs.describe()}")
        addresses = key_value_ptrs.tolist() if hasattr(key_value_ptrs, "tolist") else list(key_value_ptrs)
    if any(a == 0 for a in addresses):
        raise ValueError("key_value_ptrs holds a null address; pass one KV-cache data pointer per layer")
    return addresses, None, None, None, None


def _plane_groups(key_value_ptrs: _Any, fmt, num_layers: int, page_buffer_size: int):
    """PlaneGroups of a format whose layers are tuples of planes of different widths: read from the
    tensors themselves (addresses alone do not tell the widths)."""
    entries = list(key_value_ptrs) if isinstance(key_value_ptrs, (list, tuple)) else None
    if entries is None or any(isinstance(e, int) for e in entries):
        raise ValueError(
            f"key_value_ptrs: engine_kv_format {fmt.name} needs the per-layer plane tensors, not their addresses "
            "(the planes' widths differ and cannot be read from pointers); pass a list with one (latent, rope"
            "[, indexer key]) tuple of tensors per layer")
    if entries and not isinstance(entries[0], (list, tuple)):
        # LMCache's flat pointer order: every plane of layer 0, then of layer 1, ...
        if num_layers < 1 or len(entries) % num_layers:
            raise ValueError(f"key_value_ptrs has {len(entries)} tensors, not a multiple of the {num_layers} "
                             "layers of key_value; pass one tuple of plane tensors per layer")
        per_layer = len(entries) // num_layers
        entries = [tuple(entries[i:i + per_layer]) for i in range(0, len(entries), per_layer)]
    if len(entries) != num_layers:
        raise ValueError(f"key_value_ptrs has {len(entries)} layers; key_value has {num_layers}")
    paged = _describe_paged(entries, fmt.layout, "key_value_ptrs")
    slots_per_plane = paged.members[0].num_slots
    if page_buffer_size != slots_per_plane:
        raise ValueError(f"page_buffer_size={page_buffer_size} but the planes in key_value_ptrs hold "
                         f"{paged.members[0].num_blocks} blocks x {paged.members[0].block_size} = {slots_per_plane} "
                         "slots; pass num_blocks * block_size of the KV cache")
    return paged


def _require_no_extra_slots(slot_mapping, num_tokens: int) -> None:
    """More slots than the chunk has tokens is a caller's bug: moving only a prefix of them would drop
    tokens silently (fewer slots than tokens is refused by the transfer's own range check)."""
    n = _transfer.slot_view(slot_mapping).shape[0]
    if n > num_tokens:
        raise ValueError(f"slot_mapping: has {n} slots but key_value holds {num_tokens} tokens; pass exactly one "
                         "slot per token of the chunk (slot_mapping[start:end] for tokens [start, end))")


def multi_layer_kv_transfer(
    key_value, key_value_ptrs, slot_mapping, paged_memory_device, page_buffer_size: int, direction,
    engine_kv_format, block_size: int = 0, head_size: int = 0, skip_prefix_n_tokens: int = 0,
    block_stride_elems: int = 0,
) -> None:
    """Move all layers of one chunk between the paged KV cache and an LMCache memory object.

    key_value: [2, L, T, D] (KV_2LTD), or [1, L, T, D] for MLA and K/V-packed formats.
    key_value_ptrs: per-layer paged tensors, or an int64 tensor of their addresses; for
    NL_X_NP_X_NB_BS_ONE_HS one tuple of plane tensors per layer (D = the sum of their widths).
    slot_mapping[t] is the slot of token t (t < T; negative = skip); tokens t <
    skip_prefix_n_tokens are left alone. Validated in full before any byte moves.
    """
    fmt = _engine_format(engine_kv_format)
    if fmt.cross_layer:
        # LMCache's per-slot op addresses a cross-layer cache through one pointer per layer, each
        # [2, page_buffer_size, hidden] (its CUDA kernel and torch baseline alike).
        fmt = _engine_format(_FORMAT_VALUES["NL_X_TWO_NB_NH_BS_HS" if fmt.hnd else "NL_X_TWO_NB_BS_NH_HS"])
    kind = _kernel_direction(direction)
    chunk = _describe_chunk(key_value, "KV_2LTD" if fmt.planes == 2 else "KV_MLA_FMT", "key_value",
                            writable=kind == _transfer.GATHER)
    _require_no_extra_slots(slot_mapping, chunk.num_tokens)
    if fmt.plane_groups:
        groups = _plane_groups(key_value_ptrs, fmt, chunk.num_layers, page_buffer_size)
        if groups.device != _device_type(paged_memory_device):
            raise ValueError(f"paged_memory_device={paged_memory_device} but the KV-cache tensors are on "
                             f"{groups.device}")
        _transfer.transfer_kv(groups, [(chunk, 0, chunk.num_tokens)], slot_mapping, kind, skip_prefix_n_tokens)
        return
    addresses, extent, dtype, device, numel = _layer_bases(key_value_ptrs, fmt.tensors_per_layer, chunk.num_layers)
    if device is not None and device != _device_type(paged_memory_device):
        raise ValueError(f"paged_memory_device={paged_memory_device} but the KV-cache tensors are on {device}")
    paged = _paged_from_format(
        fmt, addresses, num_layers=chunk.num_layers, page_buffer_size=page_buffer_size, block_size=block_size,
        head_size=head_size, hidden=chunk.hidden, block_stride_elems=block_stride_elems,
        itemsize=chunk.view.itemsize, dtype=dtype or chunk.view.dtype,
        device=device or _device_type(paged_memory_device), extent_elems=extent, tensor_numel=numel,
    )
    _transfer.transfer_kv(paged, [(chunk, 0, chunk.num_tokens)], slot_mapping, kind, skip_prefix_n_tokens)


def _block_slots(block_ids: _Any, block_size: int, num_blocks: int):
    """Slot mapping of whole blocks: block_ids[j] * block_size + t for t < block_size (int64, host)."""
    try:
        import torch
    except ImportError:  # the core works without torch: plain ints then
        torch = None
    if torch is not None and isinstance(block_ids, torch.Tensor):
        if block_ids.ndim != 1 or block_ids.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"block_ids: expected a 1-D int32/int64 tensor or a list of ints, got shape "
                            f"{list(block_ids.shape)} dtype {block_ids.dtype}")
        ids = block_ids.to("cpu", torch.int64)
    else:
        ids = list(block_ids)
        if not all(isinstance(b, int) for b in ids):
            raise TypeError("block_ids: expected a 1-D int tensor or a list of ints")
        ids = torch.tensor(ids, dtype=torch.int64) if torch is not None else ids
    n = len(ids)
    if n:
        lo, hi = (int(ids.min()), int(ids.max())) if torch is not None else (min(ids), max(ids))
        if lo < 0 or hi >= num_blocks:
            raise IndexError(f"block_ids: holds block {lo if lo < 0 else hi}, outside the KV cache's {num_blocks} "
                             "blocks; pass the engine's block ids for this request")
    if torch is not None:
        return (ids[:, None] * block_size + torch.arange(block_size, dtype=torch.int64)).reshape(-1), n
    import array

    return array.array("q", [b * block_size + t for b in ids for t in range(block_size)]), n


def multi_layer_block_kv_transfer(
    paged_buffer_ptrs_tensor, lmcache_objects_ptrs: "list[int] | list[torch.Tensor]", block_ids, device, direction,
    shape_desc,
    lmcache_chunk_size: int, engine_kv_format, skip_prefix_n_blocks: int,
) -> None:
    """Move whole blocks of every layer between the paged KV cache and LMCache memory objects
    (LMCache's multiprocess mode).

    block_ids[j] is the engine block holding tokens [j * bs, (j + 1) * bs) of the request; memory
    object i holds lmcache_chunk_size tokens, i.e. blocks [i * k, (i + 1) * k) with k =
    lmcache_chunk_size / bs. The first skip_prefix_n_blocks blocks are left alone.
    paged_buffer_ptrs_tensor: the engine's tensors as `engine_kv_format` has them, or their
    addresses (a 1-D int64 tensor; shape_desc gives the geometry). lmcache_objects_ptrs: memory
    objects ([2, L, T, D], or [L, T, D] for single-plane formats) or their host addresses.
    Validated in full before any byte moves.
    """
    _plan_block_transfer(paged_buffer_ptrs_tensor, lmcache_objects_ptrs, block_ids, device, direction, shape_desc,
                         lmcache_chunk_size, engine_kv_format, skip_prefix_n_blocks)()


def _plan_block_transfer(paged_buffer_ptrs_tensor, lmcache_objects_ptrs, block_ids, device, direction, shape_desc,
                         lmcache_chunk_size, engine_kv_format, skip_prefix_n_blocks, *, objects_device: str = "cpu"):
    """multi_layer_block_kv_transfer checked in full but not run: returns the callable that moves the
    bytes, so a plan of several transfers is refused before any of them writes.
    objects_device: where memory objects given as addresses live (host memory for LMCache's memory
    objects, the KV cache's device for the object-group plan's staging buffers)."""
    fmt = _engine_format(engine_kv_format)
    kind = _kernel_direction(direction)
    bs, chunk_size, skip = int(shape_desc.bs), int(lmcache_chunk_size), int(skip_prefix_n_blocks)
    if bs <= 0 or chunk_size <= 0 or chunk_size % bs:
        raise ValueError(f"lmcache_chunk_size={chunk_size} must be a positive multiple of shape_desc.bs={bs}")
    if skip < 0:
        raise ValueError(f"skip_prefix_n_blocks={skip} must be >= 0")
    objects = list(lmcache_objects_ptrs)
    object_views = [None if isinstance(o, int) else _as_view(o, f"lmcache_objects_ptrs[{i}]")
                    for i, o in enumerate(objects)]
    desc_dtype = getattr(shape_desc, "dtype", None)
    dtype = ((None if desc_dtype is None else _dtype_name(desc_dtype))
             or next((v.dtype for v in object_views if v is not None), None))
    itemsize = int(shape_desc.element_size) or next((v.itemsize for v in object_views if v is not None), 0)
    geometry = _PagedGeometry(num_layers=int(shape_desc.nl), num_blocks=int(shape_desc.nb), block_size=bs,
                              num_heads=int(shape_desc.nh), head_size=int(shape_desc.hs), itemsize=itemsize,
                              dtype=dtype or f"{8 * itemsize}-bit", device=_device_type(device),
                              block_stride=int(getattr(shape_desc, "block_stride_elems", 0) or 0))
    entries = _engine_views(fmt, paged_buffer_ptrs_tensor, block_size=bs, geometry=geometry,
                            arg="paged_buffer_ptrs_tensor")
    paged = _describe_paged(entries, fmt.layout, "paged_buffer_ptrs_tensor")
    if paged.device != geometry.device:
        raise ValueError(f"device={device} but the KV cache is on {paged.device}")
    if paged.block_size != bs:
        raise ValueError(f"shape_desc.bs={bs} but the KV cache's blocks hold {paged.block_size} tokens")
    slots, n_blocks = _block_slots(block_ids, bs, paged.num_blocks)
    blocks_per_object = chunk_size // bs
    needed = -(-n_blocks // blocks_per_object)
    if len(objects) < needed:
        raise ValueError(f"lmcache_objects_ptrs: {len(objects)} memory objects for {n_blocks} blocks; with "
                         f"lmcache_chunk_size={chunk_size} ({blocks_per_object} blocks each) they need {needed}")
    chunks = []
    for i in range(needed):
        if (i + 1) * blocks_per_object <= skip:
            continue  # wholly inside the skipped prefix
        view = object_views[i]
        if view is None:  # a host address: LMCache's layout of one memory object
            shape = ((2,) if paged.num_planes == 2 else ()) + (paged.num_layers, chunk_size, paged.hidden)
            view = _address_view(objects[i], shape, paged.itemsize, paged.dtype, objects_device,
                                 f"lmcache_objects_ptrs[{i}]")
        # single-plane objects are [L, T, D], or [1, L, T, D] as the in-process engine allocates them
        chunk_fmt = "KV_2LTD" if paged.num_planes == 2 else ("KV_MLA_FMT" if view.ndim == 4 else "ONE_LTD")
        chunk = _describe_chunk(view, chunk_fmt, f"lmcache_objects_ptrs[{i}]", writable=kind == _transfer.GATHER)
        begin = i * chunk_size
        chunks.append((chunk, begin, min(begin + chunk_size, n_blocks * bs)))
    move = _transfer.prepare_transfer(paged, chunks, slots, kind, skip * bs)

    def run() -> None:
        move()
        _announce("multi_layer_block_kv_transfer", fmt.name, kind)

    return run


def _announce(op: str, fmt_name: str, kind: int) -> None:
    """Say once per process which of our kernels LMCache drives (operators check it in the logs)."""
    key = (op, fmt_name, kind)
    if key not in _announced:
        _announced.add(key)
        _logger.info("lmcache-ascend: %s runs natively (%s, %s)", op, fmt_name,
                     "store" if kind == _transfer.GATHER else "retrieve")


def multi_layer_kv_transfer_unilateral(
    key_value, key_value_ptrs, slot_mapping, paged_memory_device, page_buffer_size: int, direction,
    engine_kv_format,
) -> None:
    """SGLang MHA: key_value_ptrs holds every layer's K buffer, then every layer's V buffer, each
    [page_buffer_size, hidden]. MLA formats fall back to multi_layer_kv_transfer."""
    fmt = _engine_format(engine_kv_format)
    if fmt.planes == 1:
        multi_layer_kv_transfer(key_value, key_value_ptrs, slot_mapping, paged_memory_device, page_buffer_size,
                                direction, engine_kv_format)
        return
    items = list(key_value_ptrs) if isinstance(key_value_ptrs, (list, tuple)) else key_value_ptrs.tolist()
    if len(items) % 2:
        raise ValueError(f"key_value_ptrs has {len(items)} entries; expected the K layers then the V layers")
    half = len(items) // 2
    pairs = [x for layer in range(half) for x in (items[layer], items[half + layer])]
    # Separate K/V with one block spanning the whole buffer is exactly [page_buffer_size, hidden].
    multi_layer_kv_transfer(key_value, pairs, slot_mapping, paged_memory_device, page_buffer_size, direction,
                            _SEPARATE_KV, block_size=page_buffer_size)


def single_layer_kv_transfer(
    lmc_key_value_cache, vllm_key_value_cache, slot_mapping, direction, engine_kv_format,
    token_major: bool = False,
) -> None:
    """Move one layer (layerwise pipelining) between vLLM's paged layer and an LMCache buffer.

    lmc_key_value_cache: [T, 2, D] if token_major else [2, T, D]; [T, D] for MLA / K/V-packed.
    vllm_key_value_cache: one layer in `engine_kv_format`'s shape (a tuple of plane tensors for
    NL_X_NP_X_NB_BS_ONE_HS).
    """
    fmt = _engine_format(engine_kv_format)
    if fmt.tensors_per_layer != 1:
        raise ValueError(f"engine_kv_format {fmt.name} has no single-tensor layer; single_layer_kv_transfer "
                         "takes one paged tensor per layer")
    kind = _kernel_direction(direction)
    # A cross-layer cache hands over one layer as its [NB, 2, ...] slice, already in the layout's axes.
    entries = [vllm_key_value_cache] if fmt.cross_layer else _engine_views(fmt, [vllm_key_value_cache],
                                                                           arg="vllm_key_value_cache")
    paged = _describe_paged(entries, fmt.layout, "vllm_key_value_cache")
    lmc = _as_view(lmc_key_value_cache, "lmc_key_value_cache", writable=kind == _transfer.GATHER)
    if fmt.planes == 1:
        if lmc.ndim != 2:
            raise ValueError(f"lmc_key_value_cache: expected [num_tokens, hidden] for {fmt.name}, got {lmc.describe()}")
        chunk = _describe_chunk(lmc, "MLA_TD", "lmc_key_value_cache")
    else:
        chunk = _describe_chunk(lmc, "KV_T2D" if token_major else "KV_2TD", "lmc_key_value_cache")
    _transfer.transfer_kv(paged, [(chunk, 0, chunk.num_tokens)], slot_mapping, kind)


def _flash(key_value, key_cache, value_cache, slot_mapping, layer_idx: int, kind: int) -> None:
    paged = _describe_paged([(key_cache, value_cache)], "separate_kv", "key_cache/value_cache")
    chunk = _describe_chunk(key_value, "KV_2LTD", "key_value", writable=kind == _transfer.GATHER)
    layer = chunk.layer(int(layer_idx))
    slots = _transfer.slot_view(slot_mapping)
    _transfer.transfer_kv(paged, [(layer, 0, slots.shape[0])], slots, kind)


def single_layer_kv_transfer_sgl(
    lmc_key_value_cache, sgl_key_cache, sgl_value_cache, slot_mapping, direction, token_major: bool = False,
) -> None:
    """One SGLang layer: K and V caches [NB, BS, NH, HS] each <-> lmc [T, 2, D] if token_major else [2, T, D]."""
    kind = _kernel_direction(direction)
    paged = _describe_paged([(sgl_key_cache, sgl_value_cache)], "separate_kv", "sgl_key_cache/sgl_value_cache")
    chunk = _describe_chunk(lmc_key_value_cache, "KV_T2D" if token_major else "KV_2TD", "lmc_key_value_cache",
                            writable=kind == _transfer.GATHER)
    _transfer.transfer_kv(paged, [(chunk, 0, chunk.num_tokens)], slot_mapping, kind)


def load_and_reshape_flash(key_value, key_cache, value_cache, slot_mapping, layer_idx: int) -> None:
    """Gather one layer: key_cache / value_cache [NB, BS, NH, HS] -> key_value[:, layer_idx]
    of a [2, L, T, NH*HS] memory object. Negative slots are skipped."""
    _flash(key_value, key_cache, value_cache, slot_mapping, layer_idx, _transfer.GATHER)


def reshape_and_cache_back_flash(key_value, key_cache, value_cache, slot_mapping, layer_idx: int) -> None:
    """Scatter one layer: key_value[:, layer_idx] -> key_cache / value_cache [NB, BS, NH, HS]."""
    _flash(key_value, key_cache, value_cache, slot_mapping, layer_idx, _transfer.SCATTER)


# Pinned host memory, with the signatures LMCache calls (alloc_fn(size, 0), free_fn(ptr, ...)).
alloc_pinned_ptr = _memory.alloc_pinned_ptr
free_pinned_ptr = _memory.free_pinned_ptr
alloc_pinned_numa_ptr = _memory.alloc_pinned_numa_ptr
free_pinned_numa_ptr = _memory.free_pinned_numa_ptr


# Stream-ordered records of LMCache's multiprocess mode (lmcache_ascend.completions).
record_completion_on_stream = _completions.record_completion_on_stream
drain_recorded_completions = _completions.drain_recorded_completions
record_event_on_stream = _completions.record_event_on_stream
drain_recorded_events = _completions.drain_recorded_events

# The rest of LMCache's host-memory family over the native mappings (lmcache_ascend.memory).
alloc_numa_ptr = _memory.alloc_numa_ptr
free_numa_ptr = _memory.free_numa_ptr
alloc_hugepage_pinned_ptr = _memory.alloc_hugepage_pinned_ptr
free_hugepage_pinned_ptr = _memory.free_hugepage_pinned_ptr
alloc_hugepage_pinned_numa_ptr = _memory.alloc_hugepage_pinned_numa_ptr
free_hugepage_pinned_numa_ptr = _memory.free_hugepage_pinned_numa_ptr
alloc_shm_pinned_ptr = _memory.alloc_shm_pinned_ptr
free_shm_pinned_ptr = _memory.free_shm_pinned_ptr

# CacheGen's codec and CacheBlend's K rotation (lmcache_ascend.codec says which path runs where).
from lmcache_ascend.codec import (  # noqa: E402, F401 (re-exported: LMCache binds them by name)
    calculate_cdf,
    decode_fast_new,
    decode_fast_prefsum,
    encode_fast_new,
    rotary_embedding_k_fused,
    rotary_embedding_k_fused_strided,
)


def tensor_from_ptr(ptr: int, shape: tuple, dtype: _Any, device: _Any):
    """A tensor viewing `ptr` without copying (the caller keeps the memory alive): host memory on
    the CPU, device memory on an NPU."""
    import torch

    if not isinstance(ptr, int) or ptr <= 0:
        raise ValueError(f"ptr={ptr!r} must be a non-null address")
    shape = tuple(int(n) for n in shape)
    if any(n < 0 for n in shape):
        raise ValueError(f"shape={shape} has a negative dimension")
    nbytes = _math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    device = torch.device(device)
    if device.type == "cpu":
        if nbytes == 0:
            return torch.empty(shape, dtype=dtype)
        return torch.frombuffer((_ctypes.c_uint8 * nbytes).from_address(ptr), dtype=dtype).view(shape)
    if device.type == "npu":
        storage = torch._C._construct_storage_from_data_pointer(ptr, device, nbytes)
        return torch.empty(0, dtype=dtype, device=device).set_(storage, 0, shape)
    raise ValueError(f"device={device}: lmcache_ascend views host memory (cpu) and Ascend NPU memory (npu)")


def batched_memcpy(src_ptrs, dst_ptrs, sizes) -> None:
    """Copy sizes[i] bytes from src_ptrs[i] to dst_ptrs[i] (host memory), in order."""
    src, dst, n = list(src_ptrs), list(dst_ptrs), list(sizes)
    if not len(src) == len(dst) == len(n):
        raise ValueError(f"batched_memcpy: {len(src)} sources, {len(dst)} destinations and {len(n)} sizes; "
                         "pass one of each per copy")
    for i, (s, d, size) in enumerate(zip(src, dst, n)):
        if size < 0 or (size and (s <= 0 or d <= 0)):
            raise ValueError(f"batched_memcpy: copy {i} has size {size}, source {s:#x}, destination {d:#x}")
    for s, d, size in zip(src, dst, n):
        if size:
            _ctypes.memmove(d, s, size)


def lmcache_memcpy_async(dest, src, nbytes: int, direction, host_buffer_offset: int = 0,
                         host_buffer_alignments: int = 1) -> None:
    """Copy `nbytes` between LMCache buffers: tensors (their first nbytes, flattened) or addresses.

    host_buffer_offset / host_buffer_alignments: where the host buffer sits inside its registered
    allocation and that allocation's registration granularity (a power of two); the copy needs no
    split on the CPU or through torch_npu, so they are validated only. Addresses: both in host
    memory on a CPU host; on an NPU host the device side (dest for H2D, src for D2H) is NPU memory.
    Returns once the bytes have moved.
    """
    _kernel_direction(direction)
    alignment = int(host_buffer_alignments)
    if alignment <= 0 or alignment & (alignment - 1):
        raise ValueError(f"host_buffer_alignments={host_buffer_alignments} must be a power of two")
    nbytes = int(nbytes)
    if nbytes < 0:
        raise ValueError(f"nbytes={nbytes} must be >= 0")
    if isinstance(dest, int) != isinstance(src, int):
        raise TypeError("dest and src must both be addresses (int) or both tensors")
    if not isinstance(dest, int):
        for arg, t in (("dest", dest), ("src", src)):
            if t.numel() * t.element_size() < nbytes:
                raise ValueError(f"{arg}: holds {t.numel() * t.element_size()} bytes, fewer than nbytes={nbytes}")
        if dest.element_size() != src.element_size() or nbytes % dest.element_size():
            raise ValueError(f"dest and src element sizes ({dest.element_size()}, {src.element_size()}) must match "
                             f"and divide nbytes={nbytes}")
        count = nbytes // dest.element_size()
        dest.reshape(-1)[:count].copy_(src.reshape(-1)[:count])
        return
    if nbytes == 0:
        return
    if dest <= 0 or src <= 0:
        raise ValueError(f"lmcache_memcpy_async: null address (dest {dest:#x}, src {src:#x})")
    npu = _npu_ready()
    host_dest = int(direction) == _D2H
    if npu is None:
        _ctypes.memmove(dest, src, nbytes)
        return
    import torch

    d = tensor_from_ptr(dest, (nbytes,), torch.uint8, "cpu" if host_dest else npu)
    s = tensor_from_ptr(src, (nbytes,), torch.uint8, npu if host_dest else "cpu")
    d.copy_(s)
    if host_dest:
        torch.npu.current_stream().synchronize()


def _npu_ready():
    """The current NPU (torch device) where torch_npu is loaded and an NPU is present, else None."""
    import sys

    torch = sys.modules.get("torch")
    npu = getattr(torch, "npu", None) if torch is not None else None
    if npu is None or not npu.is_available():
        return None
    return torch.device("npu", npu.current_device())


# ---- LMCache MP mode's object-group fast paths ------------------------------------------------
# LMCache's server (lmcache/v1/multiprocess/object_group_transfer.py) uses these when the bound
# device module has them (hasattr): one call per object group instead of one per copy and launch.
# Plan types: the constructors and argument names of LMCache's (csrc/cuda/pybind.cpp,
# csrc/lmcache_native/pybind.cpp); DeviceOps.bind_native puts ours in place of its own, whose
# fields Python cannot read.

def _nonneg(value: _Any, arg: str) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = None
    if number is None or number < 0 or isinstance(value, bool):
        raise ValueError(f"{arg}={value!r} must be an integer >= 0")
    return number


def _address(value: _Any, arg: str) -> int:
    address = _nonneg(value, arg)
    if address == 0:
        raise ValueError(f"{arg}=0 is a null address; pass the buffer's data pointer")
    return address


# The fast paths' plan types are ours, not LMCache's (its KernelGroupSpec hides its fields from
# Python); binding this module hands them to LMCache's plan builder.
_PLAN_TYPES = ("StagingCopy", "LaunchVar", "BatchStep", "KernelGroupSpec", "DirectCopyGroupSpec", "DirectCopyObject")


class StagingCopy:
    """One copy of a staged plan: nbytes from src to dest, one side host memory at host_offset inside
    LMCache's pinned allocation (the source for H2D, the destination for D2H)."""

    __slots__ = ("dest", "src", "nbytes", "host_offset")

    def __init__(self, dest: int, src: int, nbytes: int, host_offset: int) -> None:
        self.nbytes = _nonneg(nbytes, "StagingCopy.nbytes")
        self.dest = _address(dest, "StagingCopy.dest") if self.nbytes else _nonneg(dest, "StagingCopy.dest")
        self.src = _address(src, "StagingCopy.src") if self.nbytes else _nonneg(src, "StagingCopy.src")
        self.host_offset = _nonneg(host_offset, "StagingCopy.host_offset")


class LaunchVar:
    """One block transfer of a batch: kernel_group_specs[group_idx], its block ids
    [block_ids_offset, block_ids_offset + total_blocks), its first num_objects staging buffers."""

    __slots__ = ("group_idx", "block_ids_offset", "total_blocks", "num_objects", "skip_prefix_n_blocks")

    def __init__(self, group_idx: int, block_ids_offset: int, total_blocks: int, num_objects: int,
                 skip_prefix_n_blocks: int) -> None:
        self.group_idx = _nonneg(group_idx, "LaunchVar.group_idx")
        self.block_ids_offset = _nonneg(block_ids_offset, "LaunchVar.block_ids_offset")
        self.total_blocks = _nonneg(total_blocks, "LaunchVar.total_blocks")
        self.num_objects = _nonneg(num_objects, "LaunchVar.num_objects")
        self.skip_prefix_n_blocks = _nonneg(skip_prefix_n_blocks, "LaunchVar.skip_prefix_n_blocks")


class BatchStep:
    """One batch: its staging copies (before the launches for H2D, after them for D2H)."""

    __slots__ = ("staging", "launches")

    def __init__(self, staging, launches) -> None:
        self.staging = _typed_list(staging, StagingCopy, "BatchStep.staging")
        self.launches = _typed_list(launches, LaunchVar, "BatchStep.launches")


class KernelGroupSpec:
    """What stays fixed for one kernel group across a plan: the address of its int64 array of paged
    KV pointers (LMCache's order for engine_kv_format), the addresses of its staging buffers (one per
    batch slot, on the KV cache's device), and the address and length of its int64 block ids."""

    __slots__ = ("paged_buffer_ptrs", "lmcache_objects_ptrs", "shape_desc", "lmcache_chunk_size",
                 "engine_kv_format", "block_ids_base", "block_ids_capacity")

    def __init__(self, paged_buffer_ptrs: int, lmcache_objects_ptrs, shape_desc, lmcache_chunk_size: int,
                 engine_kv_format: int, block_ids_base: int, block_ids_capacity: int) -> None:
        self.paged_buffer_ptrs = _address(paged_buffer_ptrs, "KernelGroupSpec.paged_buffer_ptrs")
        self.lmcache_objects_ptrs = [_address(p, f"KernelGroupSpec.lmcache_objects_ptrs[{i}]")
                                     for i, p in enumerate(lmcache_objects_ptrs)]
        self.shape_desc = shape_desc
        self.lmcache_chunk_size = _nonneg(lmcache_chunk_size, "KernelGroupSpec.lmcache_chunk_size")
        self.engine_kv_format = _engine_format(engine_kv_format, "KernelGroupSpec.engine_kv_format").value
        self.block_ids_capacity = _nonneg(block_ids_capacity, "KernelGroupSpec.block_ids_capacity")
        self.block_ids_base = (_address(block_ids_base, "KernelGroupSpec.block_ids_base") if self.block_ids_capacity
                               else _nonneg(block_ids_base, "KernelGroupSpec.block_ids_base"))


class DirectCopyGroupSpec:
    """One kernel group of a direct copy: its paged KV pointers (host list, LMCache's order), where
    its [kv_size, nl, slots_per_chunk, nh * hs] region starts in each memory object, and its block ids
    (slots_per_chunk / bs per chunk)."""

    __slots__ = ("paged_layer_ptrs", "shape_desc", "engine_kv_format", "slots_per_chunk", "byte_offset_in_object",
                 "block_ids")

    def __init__(self, paged_layer_ptrs, shape_desc, engine_kv_format: int, slots_per_chunk: int,
                 byte_offset_in_object: int, block_ids) -> None:
        self.paged_layer_ptrs = [_address(p, f"DirectCopyGroupSpec.paged_layer_ptrs[{i}]")
                                 for i, p in enumerate(paged_layer_ptrs)]
        self.shape_desc = shape_desc
        self.engine_kv_format = _engine_format(engine_kv_format, "DirectCopyGroupSpec.engine_kv_format").value
        self.slots_per_chunk = _nonneg(slots_per_chunk, "DirectCopyGroupSpec.slots_per_chunk")
        self.byte_offset_in_object = _nonneg(byte_offset_in_object, "DirectCopyGroupSpec.byte_offset_in_object")
        self.block_ids = [int(b) for b in block_ids]


class DirectCopyObject:
    """One memory object (chunk chunk_idx) of a direct copy: host_ptr, its nbytes, its offset inside
    LMCache's pinned allocation, and the blocks to leave alone at its start, per group spec."""

    __slots__ = ("host_ptr", "host_offset", "nbytes", "chunk_idx", "skip_prefix_n_blocks")

    def __init__(self, host_ptr: int, host_offset: int, nbytes: int, chunk_idx: int, skip_prefix_n_blocks) -> None:
        self.host_ptr = _address(host_ptr, "DirectCopyObject.host_ptr")
        self.host_offset = _nonneg(host_offset, "DirectCopyObject.host_offset")
        self.nbytes = _nonneg(nbytes, "DirectCopyObject.nbytes")
        self.chunk_idx = _nonneg(chunk_idx, "DirectCopyObject.chunk_idx")
        self.skip_prefix_n_blocks = [_nonneg(n, f"DirectCopyObject.skip_prefix_n_blocks[{i}]")
                                     for i, n in enumerate(skip_prefix_n_blocks)]


def _typed_list(items, cls: type, arg: str) -> list:
    items = list(items)
    for i, item in enumerate(items):
        if not isinstance(item, cls):
            raise TypeError(f"{arg}[{i}]: is {type(item).__module__}.{type(item).__qualname__}; build it as "
                            f"lmcache_ascend.ops.{cls.__name__} (LMCache's device_ops.{cls.__name__} once "
                            "lmcache_ascend.ops is bound), whose fields this module can read")
    return items


def _check_alignment(host_buffer_alignment: _Any) -> int:
    alignment = _nonneg(host_buffer_alignment, "host_buffer_alignment")
    if alignment == 0 or alignment & (alignment - 1):
        raise ValueError(f"host_buffer_alignment={host_buffer_alignment} must be a power of two (LMCache's "
                         "LazyMemoryAllocator.PIN_CHUNK_SIZE)")
    return alignment


def _in_plan(where: str, plan, *args, **kwargs):
    """plan(*args, **kwargs), its errors prefixed with the plan entry they come from (the block
    transfer's messages name its own arguments)."""
    try:
        return plan(*args, **kwargs)
    except (ValueError, TypeError, IndexError) as exc:
        raise type(exc)(f"{where}: {exc}") from exc


def execute_object_group_transfer(direction, device, host_buffer_alignment: int, kernel_group_specs, batch_steps,
                                  phase_timing_enabled: bool = False, session_id: str = "") -> None:
    """Run one object group's staged plan: for each batch step, its staging copies
    (lmcache_memcpy_async between memory objects and staging buffers) and its launches
    (multi_layer_block_kv_transfer between staging buffers and the paged KV cache), copies before
    launches for H2D and after them for D2H, steps in order (staging buffers are reused).

    The whole plan is checked before its first byte moves. phase_timing_enabled / session_id are
    accepted for LMCache's signature; this module exports no pop_completed_phase_timings, so LMCache
    never asks for timing samples.
    """
    import torch

    kind = _kernel_direction(direction)
    alignment = _check_alignment(host_buffer_alignment)
    specs = _typed_list(kernel_group_specs, KernelGroupSpec, "kernel_group_specs")
    steps = _typed_list(batch_steps, BatchStep, "batch_steps")
    device_type = _device_type(device)
    plan = []  # (staging copies, launch runners) per step
    group_ptrs = {}  # group_idx -> its paged-pointer array
    for s, step in enumerate(steps):
        runners = []
        for j, launch in enumerate(step.launches):
            arg = f"batch_steps[{s}].launches[{j}]"
            if launch.group_idx >= len(specs):
                raise ValueError(f"{arg}.group_idx={launch.group_idx} is out of range: the plan has {len(specs)} "
                                 "kernel_group_specs")
            spec = specs[launch.group_idx]
            if not 1 <= launch.num_objects <= len(spec.lmcache_objects_ptrs):
                raise ValueError(f"{arg}.num_objects={launch.num_objects} must be in [1, "
                                 f"{len(spec.lmcache_objects_ptrs)}] (the staging buffers of kernel_group_specs"
                                 f"[{launch.group_idx}])")
            end = launch.block_ids_offset + launch.total_blocks
            if end > spec.block_ids_capacity:
                raise ValueError(f"{arg}: block ids [{launch.block_ids_offset}, {end}) exceed block_ids_capacity="
                                 f"{spec.block_ids_capacity} of kernel_group_specs[{launch.group_idx}]")
            if launch.group_idx not in group_ptrs:  # one view of a group's pointer array for all its launches
                count = _engine_format(spec.engine_kv_format).address_count(int(spec.shape_desc.nl))
                group_ptrs[launch.group_idx] = tensor_from_ptr(spec.paged_buffer_ptrs, (count,), torch.int64, device)
            ptrs = group_ptrs[launch.group_idx]
            ids = (tensor_from_ptr(spec.block_ids_base + 8 * launch.block_ids_offset, (launch.total_blocks,),
                                   torch.int64, device) if launch.total_blocks else [])
            runners.append(_in_plan(f"{arg} (kernel_group_specs[{launch.group_idx}])", _plan_block_transfer,
                                    ptrs, spec.lmcache_objects_ptrs[:launch.num_objects], ids, device, direction,
                                    spec.shape_desc, spec.lmcache_chunk_size, spec.engine_kv_format,
                                    launch.skip_prefix_n_blocks, objects_device=device_type))
        plan.append((step.staging, runners))
    for staging, runners in plan:
        if kind == _transfer.GATHER:
            for run in runners:
                run()
        for copy in staging:
            lmcache_memcpy_async(copy.dest, copy.src, copy.nbytes, direction, copy.host_offset, alignment)
        if kind == _transfer.SCATTER:
            for run in runners:
                run()
    for spec in specs:
        _announce("execute_object_group_transfer", _engine_format(spec.engine_kv_format).name, kind)


def batch_memcpy_supported() -> bool:
    """Whether execute_direct_copy_transfer runs in this process: always (it moves blocks with this
    module's block transfer, not with cudaMemcpyBatchAsync)."""
    return True


def direct_copy_format_supported(engine_kv_format) -> bool:
    """Whether execute_direct_copy_transfer can address engine_kv_format's blocks from raw pointers:
    every format the block transfer knows except the plane-tuple one (NL_X_NP_X_NB_BS_ONE_HS, whose
    planes' widths pointers cannot tell). Wider than LMCache's CUDA table (token-major formats only,
    a limit of its copy engine): the block transfer also gathers HND blocks, so vLLM's CPU layout
    moves once, not through a staging buffer."""
    try:
        fmt = _engine_format(engine_kv_format)
    except ValueError:
        return False
    return not fmt.plane_groups


def execute_direct_copy_transfer(direction, device, host_buffer_alignment: int, group_specs, objects) -> None:
    """Move each memory object straight between its host memory and the paged KV cache: for object
    o and group spec g, the blocks g.block_ids[o.chunk_idx * k + b] for o.skip_prefix_n_blocks[g] <=
    b < k (k = g.slots_per_chunk / bs) of every layer and K/V plane, against the object's
    [kv_size, nl, slots_per_chunk, nh * hs] region at g.byte_offset_in_object. Bytes as LMCache's
    staged path (multi_layer_block_kv_transfer through a staging buffer) leaves them; skipped blocks
    are not touched. Objects in order; every object and group checked before the first byte moves.
    host_buffer_alignment (LMCache's pin-chunk size) is checked only: this module's copies need no
    split at registration boundaries.
    """
    kind = _kernel_direction(direction)
    _check_alignment(host_buffer_alignment)
    specs = _typed_list(group_specs, DirectCopyGroupSpec, "group_specs")
    objs = _typed_list(objects, DirectCopyObject, "objects")
    groups = []  # (pointers, blocks per chunk, region bytes) per spec
    for g, spec in enumerate(specs):
        fmt = _engine_format(spec.engine_kv_format)
        if not direct_copy_format_supported(fmt.value):
            raise ValueError(f"group_specs[{g}].engine_kv_format={fmt.name} is not eligible for the direct copy "
                             "path (direct_copy_format_supported); move it with execute_object_group_transfer")
        sd = spec.shape_desc
        bs = int(sd.bs)
        if bs <= 0 or spec.slots_per_chunk <= 0 or spec.slots_per_chunk % bs:
            raise ValueError(f"group_specs[{g}].slots_per_chunk={spec.slots_per_chunk} must be a positive multiple "
                             f"of shape_desc.bs={bs}")
        needed = fmt.address_count(int(sd.nl))
        if len(spec.paged_layer_ptrs) < needed:
            raise ValueError(f"group_specs[{g}].paged_layer_ptrs has {len(spec.paged_layer_ptrs)} pointers; "
                             f"{fmt.name} with shape_desc.nl={int(sd.nl)} needs {needed}")
        region = (int(sd.kv_size) * int(sd.nl) * spec.slots_per_chunk * int(sd.nh) * int(sd.hs)
                  * int(sd.element_size))
        groups.append((spec.paged_layer_ptrs[:needed], spec.slots_per_chunk // bs, region))
    runners = []
    for o, obj in enumerate(objs):
        if len(obj.skip_prefix_n_blocks) != len(specs):
            raise ValueError(f"objects[{o}].skip_prefix_n_blocks has {len(obj.skip_prefix_n_blocks)} entries; pass "
                             f"one per group spec ({len(specs)})")
        for g, (spec, (ptrs, per_chunk, region)) in enumerate(zip(specs, groups)):
            skip = obj.skip_prefix_n_blocks[g]
            if skip > per_chunk:
                raise ValueError(f"objects[{o}].skip_prefix_n_blocks[{g}]={skip} exceeds the {per_chunk} blocks of "
                                 "a chunk of that group")
            first = obj.chunk_idx * per_chunk
            if first + per_chunk > len(spec.block_ids):
                raise ValueError(f"objects[{o}].chunk_idx={obj.chunk_idx} needs block ids [{first}, "
                                 f"{first + per_chunk}) but group_specs[{g}].block_ids has {len(spec.block_ids)}")
            end = spec.byte_offset_in_object + region
            if end > obj.nbytes:
                raise ValueError(f"objects[{o}]: group_specs[{g}]'s region ends at byte {end}, past the object size "
                                 f"nbytes={obj.nbytes}; pass the memory object's size and its groups' offsets")
            runners.append(_in_plan(f"objects[{o}] x group_specs[{g}]", _plan_block_transfer,
                                    ptrs, [obj.host_ptr + spec.byte_offset_in_object],
                                    spec.block_ids[first:first + per_chunk], device, direction, spec.shape_desc,
                                    spec.slots_per_chunk, spec.engine_kv_format, skip))
    for run in runners:
        run()
    for spec in specs:
        _announce("execute_direct_copy_transfer", _engine_format(spec.engine_kv_format).name, kind)
