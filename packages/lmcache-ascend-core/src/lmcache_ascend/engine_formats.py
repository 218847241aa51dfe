"""LMCache's EngineKVFormat values (lmcache.lmcache_native, 0.5.x) as layout descriptors.

LMCache's kernels address the paged cache from one base pointer per layer plus the format's
arithmetic (page_buffer_size = num_blocks * block_size, block_size, head_size, hidden). This
module turns exactly that arithmetic into a PagedKV descriptor, so the LMCache-facing surfaces
keep LMCache's semantics while the moving is done by the one native kernel family.
"""
from __future__ import annotations

from dataclasses import dataclass

from lmcache_ascend.layouts import PagedKV


@dataclass(frozen=True)
class EngineFormat:
    value: int
    name: str
    planes: int             # K/V planes moved separately: 1 for MLA and K/V-packed formats
    tensors_per_layer: int  # 2 when K and V are separate tensors
    two_major: bool         # K/V axis ahead of the block axis: V plane starts page_buffer_size tokens in
    hnd: bool               # heads ahead of tokens inside a block
    packed: bool            # K and V packed per head in the last axis (content = 2 * head_size)
    layout: str | None      # lmcache_ascend.layouts.ENGINE_LAYOUTS name of one layer's tensor
    # A layer is a tuple of planes of different widths (lmcache_ascend.layouts.PLANE_GROUP_LAYOUTS),
    # each filling its own columns of the MLA memory object: only describable from the tensors.
    plane_groups: bool = False


_FORMATS = [
    EngineFormat(1, "NL_X_TWO_NB_BS_NH_HS", 2, 1, True, False, False, "flash_attn"),
    EngineFormat(2, "NL_X_NB_TWO_BS_NH_HS", 2, 1, False, False, False, "flashinfer"),
    EngineFormat(3, "NL_X_NB_BS_HS", 1, 1, False, False, False, "mla"),
    EngineFormat(5, "NL_X_NBBS_ONE_HS", 1, 1, False, False, False, None),
    EngineFormat(6, "NL_X_TWO_NB_NH_BS_HS", 2, 1, True, True, False, "hnd"),
    EngineFormat(7, "NL_X_NB_TWO_NH_BS_HS", 2, 1, False, True, False, "flashinfer_hnd"),
    EngineFormat(10, "NL_X_NB_NH_BS_TWO_HS", 1, 1, False, True, True, "packed_hnd"),
    EngineFormat(11, "NL_X_NB_BS_NH_TWO_HS", 1, 1, False, False, True, "packed_nhd"),
    EngineFormat(12, "NL_X_NB_NH_BS_CS", 1, 1, False, True, True, "packed_hnd"),
    EngineFormat(13, "NL_X_NB_BS_NH_CS", 1, 1, False, False, True, "packed_nhd"),
    EngineFormat(16, "NL_X_TWO_X_NB_BS_NH_HS", 2, 2, False, False, False, "separate_kv"),
    # vllm-ascend MLA (latent, rope) / DSA (latent, rope, indexer key) tuples of [NB, BS, 1, W_i].
    EngineFormat(17, "NL_X_NP_X_NB_BS_ONE_HS", 1, 1, False, False, False, "mla_planes", plane_groups=True),
]
ENGINE_FORMATS = {f.value: f for f in _FORMATS}


def engine_format(value, arg: str = "engine_kv_format") -> EngineFormat:
    """Look up an EngineKVFormat member (or its int value)."""
    try:
        fmt = ENGINE_FORMATS.get(int(value))
    except (TypeError, ValueError):
        fmt = None
    if fmt is None:
        known = ", ".join(f"{f.name}={f.value}" for f in _FORMATS)
        raise ValueError(f"{arg}={value!r} is not supported by lmcache-ascend's kernels; supported: {known}")
    return fmt


def paged_from_format(
    fmt: EngineFormat, plane_bases: list[int], *, num_layers: int, page_buffer_size: int, block_size: int,
    head_size: int, hidden: int, block_stride_elems: int, itemsize: int, dtype: str, device: str,
    extent_elems: int | None, tensor_numel: int | None = None,
) -> PagedKV:
    """Descriptor of a paged cache given per-layer base pointers and LMCache's format arithmetic.

    plane_bases: one address per layer, or per layer and plane for separate K/V tensors.
    hidden: elements per token and plane in the LMCache memory object. extent_elems: elements
    addressable from each given base (None: the format's own footprint, for raw pointers).
    tensor_numel: elements of each given per-layer tensor, checked against the format's arithmetic.
    """
    if page_buffer_size <= 0:
        raise ValueError(f"page_buffer_size={page_buffer_size} must be num_blocks * block_size > 0")
    mla = fmt.planes == 1 and not fmt.packed
    if mla and block_size <= 0:
        block_size = page_buffer_size  # MLA addressing needs no block split
    if block_size <= 0:
        raise ValueError(f"block_size={block_size} is required (> 0) for engine_kv_format {fmt.name}")
    if page_buffer_size % block_size:
        raise ValueError(f"page_buffer_size={page_buffer_size} is not a multiple of block_size={block_size}")
    if fmt.hnd and head_size <= 0:
        raise ValueError(f"head_size={head_size} is required (> 0) for HND engine_kv_format {fmt.name}")
    # Heads are only addressed separately in HND formats; elsewhere a token's row is contiguous.
    head = (2 * head_size if fmt.packed else head_size) if fmt.hnd else hidden
    if hidden % head:
        raise ValueError(f"hidden size {hidden} of key_value is not a multiple of the per-head width {head} "
                         f"(head_size={head_size}, engine_kv_format {fmt.name})")
    heads = hidden // head
    block_elems = block_size * hidden  # one block of one plane
    if fmt.two_major:
        plane_offset, block_stride = page_buffer_size * hidden, block_elems
    elif fmt.planes == 2 and fmt.tensors_per_layer == 1:  # K and V interleaved per block
        plane_offset, block_stride = block_elems, 2 * block_elems
    else:
        plane_offset, block_stride = 0, block_elems
    if block_stride_elems > 0:
        if fmt.planes == 2 and fmt.tensors_per_layer == 1:
            raise ValueError(f"block_stride_elems={block_stride_elems} is only meaningful for single-plane "
                             f"blocks-first formats, not {fmt.name}; pass 0")
        block_stride = block_stride_elems
    token_stride, head_stride = (head, block_size * head) if fmt.hnd else (hidden, head)

    footprint = (page_buffer_size // block_size - 1) * block_stride + block_elems  # of one plane
    bases: list[int] = []
    if fmt.planes == 2 and fmt.tensors_per_layer == 1:
        for b in plane_bases:
            bases += [b, b + plane_offset * itemsize]
        per_tensor = plane_offset + footprint
    else:
        bases = list(plane_bases)
        per_tensor = footprint
    if tensor_numel is not None and (tensor_numel < per_tensor or (tensor_numel != per_tensor and not block_stride_elems)):
        raise ValueError(
            f"key_value_ptrs: each paged tensor holds {tensor_numel} elements but {fmt.name} with "
            f"page_buffer_size={page_buffer_size}, block_size={block_size} and hidden size {hidden} (from "
            f"key_value) needs {per_tensor}: key_value's last dimension or page_buffer_size does not match the KV cache")
    if extent_elems is not None and plane_offset and fmt.tensors_per_layer == 1:
        extent_elems -= plane_offset  # the V plane starts plane_offset elements into the layer
    expected = num_layers * fmt.planes
    if len(bases) != expected:
        raise ValueError(f"key_value_ptrs: {len(plane_bases)} pointers for {num_layers} layers; format {fmt.name} "
                         f"needs {num_layers * fmt.tensors_per_layer}")
    return PagedKV(
        plane_bases=tuple(bases), num_layers=num_layers, num_planes=fmt.planes,
        num_blocks=page_buffer_size // block_size, block_size=block_size, num_heads=heads, head_size=head,
        block_stride=block_stride, head_stride=head_stride, token_stride=token_stride,
        extent_elems=footprint if extent_elems is None else extent_elems,
        itemsize=itemsize, dtype=dtype, device=device,
    )
