"""Python entry to the native KV transfer kernel family.

`ops` (LMCache >= 0.5) and `c_ops` (LMCache 0.3.x) are thin adapters over `transfer_kv` here:
all checks that need tensor metadata (dtype, device, shapes across both sides) live here, the
per-slot checks live in native code, and both run before the first byte moves.
"""
from __future__ import annotations

from typing import Any, Sequence

from lmcache_ascend._native import transfer as _native
from lmcache_ascend._tensors import TensorView, as_view
from lmcache_ascend.layouts import ChunkView, PagedKV

GATHER = _native.GATHER    # paged -> LMCache (store)
SCATTER = _native.SCATTER  # LMCache -> paged (retrieve)


def slot_view(slot_mapping: Any, arg: str = "slot_mapping") -> TensorView:
    """A 1-D int32/int64 view of the slot mapping on the host."""
    view = as_view(slot_mapping, arg)
    if view.dtype not in ("int32", "int64"):
        raise TypeError(f"{arg}: dtype {view.dtype} is not supported; pass int32 or int64 slots")
    if view.ndim != 1:
        raise ValueError(f"{arg}: expected a 1-D tensor of slots, got {view.describe()}")
    if view.device != "cpu":
        raise ValueError(f"{arg}: is on device {view.device}, but the CPU backend reads slots from host "
                         "memory; pass slot_mapping.cpu()")
    if view.strides and view.strides[0] != 1 and view.shape[0] > 1:
        contiguous = getattr(view.owner, "contiguous", None)
        if contiguous is None:
            raise ValueError(f"{arg}: must be contiguous, got {view.describe()}")
        return slot_view(contiguous(), arg)
    return view


def _check_device(device: str, arg: str) -> None:
    if device != "cpu":
        raise ValueError(
            f"{arg}: is on device '{device}', which this build of lmcache-ascend-core cannot reach "
            "(it has the CPU backend only; the Ascend backend is built where the CANN toolkit is found). "
            "Keep the KV cache and memory objects in host memory, or install the wheel built on an Ascend host.")


def transfer_kv(
    paged: PagedKV,
    chunks: Sequence[tuple[ChunkView, int, int]],
    slot_mapping: Any,
    direction: int,
    skip_prefix_n_tokens: int = 0,
) -> None:
    """Move KV between `paged` and LMCache memory objects.

    chunks: (memory object, token_begin, token_end) per object; the object holds tokens
    [token_begin, token_end) of `slot_mapping`. GIL released while bytes move.
    """
    slots = slot_view(slot_mapping)
    _check_device(paged.device, "kv_caches")
    native_chunks = []
    for i, (chunk, begin, end) in enumerate(chunks):
        arg = "memory object" if len(chunks) == 1 else f"memory object {i}"
        _check_device(chunk.view.device, arg)
        if chunk.view.dtype != paged.dtype:
            raise TypeError(f"{arg}: dtype {chunk.view.dtype} differs from the KV cache dtype {paged.dtype}; "
                            "allocate LMCache memory objects with the engine's KV dtype")
        if chunk.hidden != paged.hidden:
            raise ValueError(f"{arg}: hidden size {chunk.hidden} differs from the KV cache's "
                             f"{paged.num_heads} heads x {paged.head_size} = {paged.hidden}")
        if chunk.num_planes != paged.num_planes:
            raise ValueError(f"{arg}: has {chunk.num_planes} K/V plane(s) but the KV cache has "
                             f"{paged.num_planes}; use the MLA format for MLA caches and a KV format otherwise")
        if chunk.num_layers < paged.num_layers:
            raise ValueError(f"{arg}: holds {chunk.num_layers} layers but {paged.num_layers} are transferred")
        if not 0 <= begin <= end <= slots.shape[0]:
            raise IndexError(f"{arg}: token range [{begin}, {end}) is outside slot_mapping of "
                             f"{slots.shape[0]} tokens")
        if end - begin > chunk.num_tokens:
            raise ValueError(f"{arg}: has room for {chunk.num_tokens} tokens but {end - begin} "
                             f"(slot_mapping[{begin}:{end}]) were asked for")
        native_chunks.append((chunk.view.address, begin, end, chunk.view.end_address - chunk.view.address,
                              chunk.plane_stride, chunk.layer_stride, chunk.token_stride))
    if not native_chunks:
        return
    _native.transfer_kv(
        paged.plane_bases, paged.itemsize, paged.num_layers, paged.num_planes,
        paged.num_blocks, paged.block_size, paged.num_heads, paged.head_size,
        paged.block_stride, paged.head_stride, paged.token_stride, paged.extent_elems,
        native_chunks, slots.address, slots.shape[0], slots.itemsize,
        skip_prefix_n_tokens, direction,
    )
