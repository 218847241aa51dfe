"""LMCache's EngineKVFormat values (lmcache.lmcache_native, 0.5.x) as layout descriptors.

LMCache's kernels address the paged cache from one base pointer per layer plus the format's
arithmetic (page_buffer_size = num_blocks * block_size, block_size, head_size, hidden). This
module turns exactly that arithmetic into a PagedKV descriptor, so the LMCache-facing surfaces
keep LMCache's semantics while the moving is done by the one native kernel family.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from lmcache_ascend._tensors import TensorView, address_view, as_view
from lmcache_ascend.layouts import ENGINE_LAYOUTS, PLANE_GROUP_LAYOUTS, PagedKV


@dataclass(frozen=True)
class EngineFormat:
    """One EngineKVFormat: the layout of one layer's tensor in the one table
    (lmcache_ascend.layouts.ENGINE_LAYOUTS / PLANE_GROUP_LAYOUTS), and how the engine's tensors
    differ from it. Everything else about the format is read off the layout's axes."""

    value: int
    name: str
    layout: str
    # Axes of the tensor(s) as the engine hands them over, where they differ from `layout`'s:
    # L = layer (one tensor holds every layer: cross-layer formats), BT = blocks and tokens fused
    # into one axis, 1 = a singleton axis. engine_views() turns them into `layout`'s axes.
    engine_axes: tuple[str, ...] | None = None
    # SGLang MHA: every layer's K tensor, then every layer's V tensor.
    kv_list: bool = False

    @property
    def plane_groups(self) -> bool:
        """A layer is a tuple of planes of different widths, each filling its own columns of the
        MLA memory object: only describable from the tensors."""
        return self.layout in PLANE_GROUP_LAYOUTS

    @property
    def _axes(self) -> tuple[str, ...]:
        return () if self.plane_groups else ENGINE_LAYOUTS[self.layout][0]

    @property
    def tensors_per_layer(self) -> int:
        """2 when K and V are separate tensors."""
        return 1 if self.plane_groups else ENGINE_LAYOUTS[self.layout][1]

    @property
    def planes(self) -> int:
        """K/V planes moved separately: 1 for MLA and K/V-packed formats."""
        return 2 if "P" in self._axes or self.tensors_per_layer == 2 else 1

    @property
    def two_major(self) -> bool:
        """K/V axis ahead of the block axis: the V plane starts page_buffer_size tokens in."""
        return self._axes[:1] == ("P",)

    @property
    def hnd(self) -> bool:
        """Heads ahead of tokens inside a block."""
        return "H" in self._axes and self._axes.index("H") < self._axes.index("T")

    @property
    def packed(self) -> bool:
        """One plane of whole heads that are not MLA latents (K|V packed per head, or K or V alone)."""
        return self.layout.startswith("packed")

    @property
    def cross_layer(self) -> bool:
        return self.engine_axes is not None and "L" in self.engine_axes

    def address_count(self, num_layers: int) -> int:
        """Paged-KV addresses LMCache hands over for this format: one per tensor."""
        return 1 if self.cross_layer else num_layers * self.tensors_per_layer


_FORMATS = [
    # Cross-layer: one [NB, NL, 2, ...] tensor; layer l is tensor[:, l], a flashinfer block layout.
    EngineFormat(0, "NB_NL_TWO_BS_NH_HS", "flashinfer", engine_axes=("B", "L", "P", "T", "H", "D")),
    EngineFormat(1, "NL_X_TWO_NB_BS_NH_HS", "flash_attn"),
    EngineFormat(2, "NL_X_NB_TWO_BS_NH_HS", "flashinfer"),
    EngineFormat(3, "NL_X_NB_BS_HS", "mla"),
    EngineFormat(4, "TWO_X_NL_X_NBBS_NH_HS", "separate_kv", engine_axes=("BT", "H", "D"), kv_list=True),
    EngineFormat(5, "NL_X_NBBS_ONE_HS", "mla", engine_axes=("BT", "1", "D")),
    EngineFormat(6, "NL_X_TWO_NB_NH_BS_HS", "hnd"),
    EngineFormat(7, "NL_X_NB_TWO_NH_BS_HS", "flashinfer_hnd"),
    EngineFormat(8, "NB_NL_TWO_NH_BS_HS", "flashinfer_hnd", engine_axes=("B", "L", "P", "H", "T", "D")),
    EngineFormat(9, "TWO_X_NL_X_NB_BS_NH_HS", "separate_kv", kv_list=True),
    # K and V packed per head in the last axis (content = 2 * head_size); 10/11 are LMCache's
    # deprecated names of 12/13.
    EngineFormat(10, "NL_X_NB_NH_BS_TWO_HS", "packed_hnd"),
    EngineFormat(11, "NL_X_NB_BS_NH_TWO_HS", "packed_nhd"),
    EngineFormat(12, "NL_X_NB_NH_BS_CS", "packed_hnd"),
    EngineFormat(13, "NL_X_NB_BS_NH_CS", "packed_nhd"),
    # vLLM's DSA indexer cache [NB, BS, W]: moved as an MLA latent.
    EngineFormat(14, "NL_X_NB_BSV_BSS", "mla"),
    # vLLM-RBLN: [2, NB, NH, 1, BS, HS], the bytes of NL_X_TWO_NB_NH_BS_HS.
    EngineFormat(15, "NL_X_TWO_NB_NH_ONE_BS_HS", "hnd", engine_axes=("P", "B", "H", "1", "T", "D")),
    EngineFormat(16, "NL_X_TWO_X_NB_BS_NH_HS", "separate_kv"),
    # vllm-ascend MLA (latent, rope) / DSA (latent, rope, indexer key) tuples of [NB, BS, 1, W_i].
    EngineFormat(17, "NL_X_NP_X_NB_BS_ONE_HS", "mla_planes"),
    # SGLang's single-plane [NB, BS, NH, HS] (K or V alone).
    EngineFormat(18, "NL_X_NB_BS_NH_HS", "packed_nhd"),
    # LMCache 0.5.7: vLLM-RBLN's blocks-first [NB, 2, NH, 1, BS, HS], the bytes of NL_X_NB_TWO_NH_BS_HS.
    EngineFormat(19, "NL_X_NB_TWO_NH_ONE_BS_HS", "flashinfer_hnd", engine_axes=("B", "P", "H", "1", "T", "D")),
]
ENGINE_FORMATS = {f.value: f for f in _FORMATS}
FORMAT_VALUES = {f.name: f.value for f in _FORMATS}  # look formats up by name, never by magic number


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


# ---- The engine's own tensors (or their addresses) as per-layer entries of fmt.layout ----------

@dataclass(frozen=True)
class PagedGeometry:
    """What raw addresses do not tell: LMCache's PageBufferShapeDesc (nl, nb, bs, nh, hs) plus the
    element type and device. hs is the per-head content width (2 * head_size for K|V-packed formats)."""

    num_layers: int
    num_blocks: int
    block_size: int
    num_heads: int
    head_size: int
    itemsize: int
    dtype: str
    device: str
    block_stride: int = 0  # elements between blocks (shape_desc.block_stride_elems); 0: blocks are tight

    def axis_size(self, axis: str) -> int:
        return {"P": 2, "L": self.num_layers, "B": self.num_blocks, "T": self.block_size, "H": self.num_heads,
                "D": self.head_size, "PD": 2 * self.head_size, "BT": self.num_blocks * self.block_size,
                "1": 1}[axis]


def _axes(fmt: EngineFormat) -> tuple[str, ...]:
    return fmt.engine_axes or ENGINE_LAYOUTS[fmt.layout][0]


def _addresses(paged: Any) -> list[int] | None:
    """The addresses in a 1-D int64 tensor or a list of ints, else None (tensors were given)."""
    if isinstance(paged, (list, tuple)):
        if paged and all(isinstance(p, int) for p in paged):
            return list(paged)
        return None
    if isinstance(paged, TensorView) or not hasattr(paged, "tolist"):
        return None
    view = as_view(paged, "paged_buffer_ptrs")
    if view.dtype not in ("int64", "uint64") or view.ndim != 1:
        return None
    return [int(a) for a in paged.tolist()]


def _pointer_view(address: int, fmt: EngineFormat, geometry: PagedGeometry, arg: str) -> TensorView:
    """A contiguous view of the engine tensor at `address`, its shape from the format and geometry."""
    axes = _axes(fmt)
    shape = tuple(geometry.axis_size(a) for a in axes)
    view = address_view(address, shape, geometry.itemsize, geometry.dtype, geometry.device, arg)
    tight = view.strides[0]
    if geometry.block_stride and geometry.block_stride != tight:
        # vLLM's blocks-first pools: blocks further apart than one block's elements
        if axes[0] != "B" or geometry.block_stride < tight:
            raise ValueError(f"{arg}: shape_desc.block_stride_elems={geometry.block_stride} cannot apply to "
                             f"engine_kv_format {fmt.name} (blocks-first formats only, at least {tight})")
        end = address + ((shape[0] - 1) * geometry.block_stride + tight) * geometry.itemsize
        view = replace(view, strides=(geometry.block_stride, *view.strides[1:]), end_address=end)
    return view


def _to_layout_axes(view: TensorView, fmt: EngineFormat, block_size: int, arg: str) -> list[TensorView]:
    """`view` in the engine's axes -> one view per layer in fmt.layout's axes (one unless cross-layer)."""
    axes = _axes(fmt)
    if view.ndim != len(axes):
        raise ValueError(f"{arg}: engine_kv_format {fmt.name} is [{', '.join(axes)}] ({len(axes)} dimensions), "
                         f"got {view.describe()}")
    shape: list[int] = []
    strides: list[int] = []
    layers = [(0, 0)]  # (layer index, element offset)
    for axis, n, s in zip(axes, view.shape, view.strides):
        if axis == "1":
            if n != 1:
                raise ValueError(f"{arg}: engine_kv_format {fmt.name} has a singleton axis where {view.describe()} "
                                 f"has size {n}")
        elif axis == "BT":
            bs = block_size if block_size > 0 else 1  # slots index the fused axis directly
            if n % bs:
                raise ValueError(f"{arg}: the fused blocks x tokens axis of size {n} is not a multiple of "
                                 f"block_size={bs} ({view.describe()})")
            shape += [n // bs, bs]
            strides += [s * bs, s]
        elif axis == "L":
            layers = [(layer, layer * s) for layer in range(n)]
        else:
            shape.append(n)
            strides.append(s)
    return [replace(view, address=view.address + offset * view.itemsize, shape=tuple(shape), strides=tuple(strides))
            for _, offset in layers]


def engine_views(fmt: EngineFormat, paged: Any, *, block_size: int = 0, geometry: PagedGeometry | None = None,
                 arg: str = "paged_buffer_ptrs") -> list:
    """One describe_paged entry per layer (a view, a (K, V) pair or a plane tuple) of the engine's
    KV cache as LMCache hands it over for `fmt`: one tensor (cross-layer formats), a list per layer
    (of tensors, (K, V) pairs or plane tuples), every K then every V (SGLang), or addresses (a 1-D
    int64 tensor or a list of ints; `geometry` then gives the shape)."""
    addresses = _addresses(paged)
    if addresses is not None:
        if fmt.plane_groups:
            raise ValueError(f"{arg}: engine_kv_format {fmt.name} needs the per-layer plane tensors, not their "
                             "addresses (the planes' widths differ and cannot be read from pointers)")
        if geometry is None:
            raise ValueError(f"{arg}: raw addresses need the KV cache's geometry (shape_desc)")
        expected = fmt.address_count(geometry.num_layers)
        if len(addresses) != expected:
            raise ValueError(f"{arg}: {len(addresses)} addresses for {geometry.num_layers} layers; engine_kv_format "
                             f"{fmt.name} takes {expected}")
        tensors: list[Any] = [_pointer_view(a, fmt, geometry, f"{arg}[{i}]") for i, a in enumerate(addresses)]
    elif fmt.cross_layer:
        if isinstance(paged, (list, tuple)):
            if len(paged) != 1:
                raise ValueError(f"{arg}: engine_kv_format {fmt.name} is one tensor holding every layer, "
                                 f"got a list of {len(paged)}")
            paged = paged[0]
        tensors = [paged]
    else:
        tensors = list(paged) if isinstance(paged, (list, tuple)) else [paged]
        if fmt.kv_list and len(tensors) == 2 and all(isinstance(t, (list, tuple)) for t in tensors):
            tensors = [*tensors[0], *tensors[1]]  # [[K layers], [V layers]]
    if fmt.plane_groups or (tensors and all(isinstance(t, (list, tuple)) for t in tensors)):
        return tensors  # a (K, V) pair or a plane tuple per layer, already in the layout's axes
    views: list[TensorView] = []
    for i, t in enumerate(tensors):
        views += _to_layout_axes(as_view(t, f"{arg}[{i}]", writable=True), fmt, block_size, f"{arg}[{i}]")
    if fmt.tensors_per_layer == 1:
        return views
    if len(views) % 2:
        raise ValueError(f"{arg}: {len(views)} tensors; engine_kv_format {fmt.name} takes a K and a V tensor per layer")
    if fmt.kv_list:  # every K, then every V
        half = len(views) // 2
        return [(views[i], views[half + i]) for i in range(half)]
    return [(views[i], views[i + 1]) for i in range(0, len(views), 2)]
