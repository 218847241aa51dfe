"""Python entry to the native KV transfer kernel family.

`ops` (LMCache >= 0.5) and `c_ops` (LMCache 0.3.x) are thin adapters over `transfer_kv` here:
all checks that need tensor metadata (dtype, device, shapes across both sides) live here, the
per-slot checks live in native code, and both run before the first byte moves.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

from lmcache_ascend import envs
from lmcache_ascend._native import transfer as _native
from lmcache_ascend._tensors import TensorView, as_view, current_npu_stream
from lmcache_ascend.layouts import ChunkView, PagedKV, PlaneGroups

_native.set_num_threads(envs.num_threads())  # the thread pool every transfer below runs on

GATHER = _native.GATHER    # paged -> LMCache (store)
SCATTER = _native.SCATTER  # LMCache -> paged (retrieve)


def slot_view(slot_mapping: Any, arg: str = "slot_mapping") -> TensorView:
    """A 1-D contiguous int32/int64 view of the slot mapping (host or NPU memory)."""
    view = as_view(slot_mapping, arg)
    if view.dtype not in ("int32", "int64"):
        raise TypeError(f"{arg}: dtype {view.dtype} is not supported; pass int32 or int64 slots")
    if view.ndim != 1:
        raise ValueError(f"{arg}: expected a 1-D tensor of slots, got {view.describe()}")
    if view.strides and view.strides[0] != 1 and view.shape[0] > 1:
        contiguous = getattr(view.owner, "contiguous", None)
        if contiguous is None:
            raise ValueError(f"{arg}: must be contiguous, got {view.describe()}")
        return slot_view(contiguous(), arg)
    return view


CPU, NPU = "cpu", "npu"


def backend_for(kv_device: str, chunk_devices: Sequence[str], slot_device: str) -> str:
    """The backend that runs a transfer: where the KV cache lives decides (never import order).

    kv_device, chunk_devices, slot_device: device types ("cpu", "npu", ...) of the KV cache, of each
    memory object and of the slot mapping. Returns CPU or NPU; raises ValueError naming the
    argument for any device or mix of devices no backend can serve.
    """
    def arg(i: int) -> str:
        return "memory object" if len(chunk_devices) == 1 else f"memory object {i}"

    if kv_device == CPU:
        for i, device in enumerate(chunk_devices):
            if device != CPU:
                raise ValueError(f"{arg(i)}: is on device '{device}' but the KV cache (kv_caches) is in host memory; "
                                 "one call moves KV between caches and memory objects on the CPU: pass memory "
                                 "objects in host memory")
        if slot_device != CPU:
            raise ValueError(f"slot_mapping: is on device {slot_device}, but the CPU backend reads slots from host "
                             "memory; pass slot_mapping.cpu()")
        return CPU
    if kv_device == NPU:
        for i, device in enumerate(chunk_devices):
            if device not in (CPU, NPU):
                raise ValueError(f"{arg(i)}: is on device '{device}'; with the KV cache on the NPU, memory objects "
                                 "must be in host memory (cpu) or NPU memory (npu)")
        if len(set(chunk_devices)) > 1:
            raise ValueError(f"memory objects: mixes devices {sorted(set(chunk_devices))} in one call; pass memory "
                             "objects that are all in host memory or all on the NPU (split the call)")
        if slot_device not in (CPU, NPU):
            raise ValueError(f"slot_mapping: is on device '{slot_device}'; pass it on the NPU or on the CPU")
        return NPU
    raise ValueError(
        f"kv_caches: is on device '{kv_device}', which lmcache-ascend cannot reach (it moves KV for caches "
        "in host memory (cpu) and on Ascend NPUs (npu)); keep the KV cache on one of those devices")


def _check_chunks(paged: PagedKV | PlaneGroups, chunks: Sequence[tuple[ChunkView, int, int]],
                  slots: TensorView) -> None:
    """Checks that need tensor metadata of both sides; raised before anything moves."""
    for i, (chunk, begin, end) in enumerate(chunks):
        arg = "memory object" if len(chunks) == 1 else f"memory object {i}"
        if chunk.view.dtype != paged.dtype:
            raise TypeError(f"{arg}: dtype {chunk.view.dtype} differs from the KV cache dtype {paged.dtype}; "
                            "allocate LMCache memory objects with the engine's KV dtype")
        if chunk.hidden != paged.hidden:
            if isinstance(paged, PlaneGroups):
                widths = " + ".join(str(m.hidden) for m in paged.members)
                raise ValueError(f"{arg}: hidden size {chunk.hidden} differs from the KV cache's planes "
                                 f"({paged.layout}: {widths} = {paged.hidden} columns per token)")
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


def native_request(paged: PagedKV | PlaneGroups, chunks: Sequence[tuple[ChunkView, int, int]]):
    """(pages, chunk lists) for the native bindings: one entry per plane group.

    A group whose rows fill the chunk columns [column, column + width) sees every chunk from its
    column on: base moved `column` elements in, extent shortened by as much; the chunk's own strides
    (token stride = the full hidden) stay.
    """
    pages, chunk_lists = [], []
    for page, column in paged.groups:
        pages.append((page.plane_bases, page.itemsize, page.num_layers, page.num_planes, page.num_blocks,
                      page.block_size, page.num_heads, page.head_size, page.block_stride, page.head_stride,
                      page.token_stride, page.extent_elems))
        offset = column * page.itemsize
        chunk_lists.append([(chunk.view.address + offset, begin, end,
                             chunk.view.end_address - chunk.view.address - offset,
                             chunk.plane_stride, chunk.layer_stride, chunk.token_stride)
                            for chunk, begin, end in chunks])
    return pages, chunk_lists


def transfer_kv(
    paged: PagedKV | PlaneGroups,
    chunks: Sequence[tuple[ChunkView, int, int]],
    slot_mapping: Any,
    direction: int,
    skip_prefix_n_tokens: int = 0,
    fused: bool | None = None,
) -> None:
    """Move KV between `paged` and LMCache memory objects.

    chunks: (memory object, token_begin, token_end) per object; the object holds tokens
    [token_begin, token_end) of `slot_mapping`. GIL released while bytes move.
    paged: one layout, or PlaneGroups (several tensors per layer, each filling its own columns of
    the memory object's hidden): every group is validated before the first byte of any moves.
    The backend follows the KV cache's device (backend_for). For an NPU cache with memory objects in
    host memory, `fused` picks how the NPU reaches them: True stages through device memory with
    one copy per touched range, False requires them registered with the device (zero-copy), None
    (default) zero-copy when every memory object is registered, else stages the whole call. A call whose memory objects are in
    host memory (either direction, zero-copy or staged) returns once the NPU is done with them;
    with memory objects in NPU memory it returns once queued on the current NPU stream. All plane
    groups go in one launch.
    """
    prepare_transfer(paged, chunks, slot_mapping, direction, skip_prefix_n_tokens, fused)()


def prepare_transfer(
    paged: PagedKV | PlaneGroups,
    chunks: Sequence[tuple[ChunkView, int, int]],
    slot_mapping: Any,
    direction: int,
    skip_prefix_n_tokens: int = 0,
    fused: bool | None = None,
) -> Callable[[], None]:
    """transfer_kv with every Python-side check done now and the bytes moved when the returned
    callable runs: callers that queue several transfers prepare them all first, so a bad one is
    refused before any byte of the others moves."""
    slots = slot_view(slot_mapping)
    backend = backend_for(paged.device, [chunk.view.device for chunk, _, _ in chunks], slots.device)
    _check_chunks(paged, chunks, slots)
    if not chunks:
        return lambda: None
    pages, chunk_lists = native_request(paged, chunks)
    args = (pages, chunk_lists, slots.address, slots.shape[0], slots.itemsize, skip_prefix_n_tokens, direction)

    def run() -> None:  # paged, chunks and slots stay referenced here: they own the memory args points at
        if backend == CPU:
            _native.transfer_kv(*args)
        else:
            _native.transfer_kv_npu(*args, current_npu_stream(paged.device_index), slots.device == NPU,
                                    chunks[0][0].view.device == CPU, fused)
    return run
