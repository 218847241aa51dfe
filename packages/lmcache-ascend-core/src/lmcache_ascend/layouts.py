"""Layout descriptors derived from tensors' own shapes and strides.

Every engine layout is named by its axes, so adding a layout is one line:
  P = K/V plane, B = block, T = token in block, H = kv head, D = head dim (must be contiguous),
  PD = one axis of 2*head_size holding K then V (vLLM CPU platform).
LMCache-side formats use P = K/V plane (size 2; 1 for MLA), L = layer, T = token,
X = hidden = heads * head_size (contiguous).

Engines whose one layer is several tensors of different widths (vllm-ascend DeepSeek MLA with a
separate rope cache, DSA with an indexer key cache too) are described as plane groups
(PLANE_GROUP_LAYOUTS): one PagedKV per tensor, each owning a column range of the chunk's hidden.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Sequence

from lmcache_ascend._tensors import TensorView, as_view

# name -> (axes of one per-layer tensor, tensors per layer). Planes moved: 2 when there is a
# P axis or a (K, V) pair per layer, else 1 (MLA latent, or K/V packed per head and moved as one).
ENGINE_LAYOUTS: dict[str, tuple[tuple[str, ...], int]] = {
    "flash_attn": (("P", "B", "T", "H", "D"), 1),       # [2, NB, BS, NH, HS] vLLM flash-attn
    "flashinfer": (("B", "P", "T", "H", "D"), 1),       # [NB, 2, BS, NH, HS]
    "separate_kv": (("B", "T", "H", "D"), 2),           # (K, V), [NB, BS, NH, HS] each
    "cpu": (("B", "H", "T", "PD"), 1),                  # [NB, NH, BS, 2*HS] vLLM CPU platform
    "cpu_nhd": (("B", "T", "H", "PD"), 1),              # [NB, BS, NH, 2*HS] its token-major variant
    "hnd": (("P", "B", "H", "T", "D"), 1),              # [2, NB, NH, BS, HS]
    "flashinfer_hnd": (("B", "P", "H", "T", "D"), 1),   # [NB, 2, NH, BS, HS]
    "separate_kv_hnd": (("B", "H", "T", "D"), 2),       # (K, V), [NB, NH, BS, HS] each
    "packed_hnd": (("B", "H", "T", "D"), 1),            # [NB, NH, BS, 2*HS] moved as one plane
    "packed_nhd": (("B", "T", "H", "D"), 1),            # [NB, BS, NH, 2*HS] moved as one plane
    "mla": (("B", "T", "D"), 1),                        # [NB, BS, D_latent]
    "mla_nhd": (("B", "T", "H", "D"), 1),               # [NB, BS, 1, D] one plane with a head axis
    # Ascend 310P NZ (fractal) caches: the "head" is one fractal column of 32 bytes (16 fp16
    # elements) holding hidden[c*C0:(c+1)*C0] of every token of the block. Built from the NZ shape
    # the caller names, never from strides (npu_format_cast tensors report row-major strides).
    "nz": (("B", "H", "T", "D"), 2),                    # (K, V), [NB, hidden/C0, BS, C0] each
    "nz_merged": (("P", "B", "H", "T", "D"), 1),        # [2, NB, hidden/C0, BS, C0]
}
NZ_LAYOUTS = ("nz", "nz_merged")
NZ_FRACTAL_BYTES = 32

# name -> what each tensor of one layer holds, in the order their columns follow each other in the
# chunk's hidden dimension (LMCache's MLA format [1, L, T, sum of widths]). Each tensor is
# [NB, BS, W] or [NB, BS, 1, W]; widths may differ. None: any number of planes (1 to
# MAX_PLANE_GROUPS), as LMCache's NL_X_NP_X_NB_BS_ONE_HS hands them over.
PLANE_GROUP_LAYOUTS: dict[str, tuple[str, ...] | None] = {
    "mla_rope": ("latent", "rope"),                 # vllm-ascend DeepSeek V2/V3 MLA
    "dsa": ("latent", "rope", "indexer key"),       # vllm-ascend DeepSeek V3.2 sparse attention
    "mla_planes": None,
}
# The NPU kernel takes at most 4 planes per launch (native ascend_kernel_params.hpp kMaxPlanes).
MAX_PLANE_GROUPS = 4

CHUNK_FORMATS: dict[str, tuple[str, ...]] = {
    "KV_2LTD": ("P", "L", "T", "X"),  # [2, L, T, D]
    "KV_T2D": ("T", "P", "X"),        # [T, 2, D], one layer
    "KV_2TD": ("P", "T", "X"),        # [2, T, D], one layer
    "KV_MLA_FMT": ("P", "L", "T", "X"),  # [1, L, T, D]
    "MLA_TD": ("T", "X"),                # [T, D], one layer (single-layer and layerwise MLA)
    "ONE_LTD": ("L", "T", "X"),          # [L, T, D], one plane (LMCache MP mode's MLA / K|V-packed objects)
}
SINGLE_PLANE_CHUNK_FORMATS = ("KV_MLA_FMT", "MLA_TD", "ONE_LTD")


@dataclass(frozen=True)
class PagedKV:
    """The paged side of a transfer: mirrors native PageLayout."""

    plane_bases: tuple[int, ...]   # layer-major, then plane
    num_layers: int
    num_planes: int
    num_blocks: int
    block_size: int
    num_heads: int
    head_size: int
    block_stride: int
    head_stride: int
    token_stride: int
    extent_elems: int              # elements addressable from every plane base
    itemsize: int
    dtype: str
    device: str
    device_index: int | None = None  # which NPU (torch's device index), None for host memory / unknown

    @property
    def hidden(self) -> int:
        return self.num_heads * self.head_size

    @property
    def num_slots(self) -> int:
        return self.num_blocks * self.block_size

    @property
    def groups(self) -> tuple[tuple["PagedKV", int], ...]:
        """(descriptor, first chunk column) per plane group: this one layout at column 0."""
        return ((self, 0),)

    def layer(self, index: int) -> "PagedKV":
        """The descriptor of one layer (layerwise transfers)."""
        if not 0 <= index < self.num_layers:
            raise IndexError(f"layer {index} is out of range for a KV cache of {self.num_layers} layers")
        planes = self.num_planes
        return replace(self, plane_bases=self.plane_bases[index * planes:(index + 1) * planes], num_layers=1)


def _of_first_member(name: str) -> property:
    return property(lambda self: getattr(self.members[0], name), doc=f"{name} of the first member")


@dataclass(frozen=True)
class PlaneGroups:
    """A paged cache whose layer is several tensors of different widths (MLA latent + rope, DSA).

    Group i is an ordinary PagedKV whose token rows fill the chunk columns
    [columns[i], columns[i] + groups[i].hidden) of every token; the chunk's hidden is the sum.
    """

    members: tuple[PagedKV, ...]
    columns: tuple[int, ...]
    layout: str

    @property
    def groups(self) -> tuple[tuple[PagedKV, int], ...]:
        return tuple(zip(self.members, self.columns))

    @property
    def hidden(self) -> int:
        return sum(m.hidden for m in self.members)

    # Shared by every member (describe_paged checks it), so read from the first. Block geometry is
    # the first plane's (the latent; an indexer plane may have more blocks).
    num_layers = _of_first_member("num_layers")
    num_planes = _of_first_member("num_planes")
    itemsize = _of_first_member("itemsize")
    dtype = _of_first_member("dtype")
    device = _of_first_member("device")
    device_index = _of_first_member("device_index")
    num_blocks = _of_first_member("num_blocks")
    block_size = _of_first_member("block_size")
    num_slots = _of_first_member("num_slots")

    def layer(self, index: int) -> "PlaneGroups":
        """The descriptor of one layer (layerwise transfers)."""
        return replace(self, members=tuple(m.layer(index) for m in self.members))


def _layout_error(arg: str, layout: str, view: TensorView, why: str) -> ValueError:
    axes = " x ".join(ENGINE_LAYOUTS[layout][0])
    return ValueError(f"{arg}: cannot describe a tensor with {view.describe()} as layout '{layout}' "
                      f"({axes}): {why}")


def _nz_view(view: TensorView, layout: str, arg: str) -> TensorView:
    """`view` with the strides of its NZ shape: the last axis must be one 32-byte fractal."""
    fractal = NZ_FRACTAL_BYTES // view.itemsize
    ndim = len(ENGINE_LAYOUTS[layout][0])
    if view.ndim == ndim and view.shape[-1] != fractal:
        lead = "2, " if layout == "nz_merged" else ""
        raise _layout_error(arg, layout, view, f"an NZ cache of {view.dtype} has fractals of {fractal} elements "
                            f"({NZ_FRACTAL_BYTES} bytes): expected shape [{lead}num_blocks, hidden/{fractal}, "
                            f"block_size, {fractal}], got last dimension {view.shape[-1]}")
    if not view.is_contiguous():
        raise _layout_error(arg, layout, view, "an NZ cache must be a whole NZ tensor (as torch_npu allocates it), "
                            "not a strided view; its storage order is taken from the shape")
    strides, step = [], 1
    for size in reversed(view.shape):
        strides.append(step)
        step *= size
    return replace(view, strides=tuple(reversed(strides)))


def _axis_strides(view: TensorView, layout: str, arg: str) -> dict[str, tuple[int, int]]:
    """{axis: (size, element stride)} of one per-layer tensor in `layout`."""
    axes = ENGINE_LAYOUTS[layout][0]
    if view.ndim != len(axes):
        raise _layout_error(arg, layout, view, f"expected {len(axes)} dimensions, got {view.ndim}")
    out: dict[str, tuple[int, int]] = {}
    for axis, size, stride in zip(axes, view.shape, view.strides):
        if axis == "PD":
            if size % 2:
                raise _layout_error(arg, layout, view, f"last dimension {size} is not 2 * head_size")
            out["P"] = (2, (size // 2) * stride)
            out["D"] = (size // 2, stride)
        else:
            out[axis] = (size, stride)
    if out["D"][1] != 1 and out["D"][0] != 1:
        raise _layout_error(arg, layout, view, "head_dim must be contiguous (stride 1); pass .contiguous()")
    if "P" in out and out["P"][0] != 2:
        raise _layout_error(arg, layout, view, f"the K/V axis has size {out['P'][0]}, expected 2")
    return out


def _describe_layers(layers: Sequence[Sequence[tuple[str, Any]]], layout: str) -> PagedKV:
    """Descriptor of per-layer tensors given as [(argument name, tensor), ...] per layer (one
    tensor, or K then V)."""
    bases: list[int] = []
    first: dict[str, tuple[int, int]] | None = None
    ref: TensorView | None = None
    ref_name = ""
    extent: int | None = None
    for tensors in layers:
        for name, t in tensors:
            view = as_view(t, name, writable=True)
            if layout in NZ_LAYOUTS:
                view = _nz_view(view, layout, name)
            axes = _axis_strides(view, layout, name)
            if ref is None:
                ref, first, ref_name = view, axes, name
            elif axes != first or view.dtype != ref.dtype or view.device != ref.device:
                raise ValueError(f"{name}: every layer must have the same shape, strides, dtype and device; "
                                 f"got {view.describe()} but {ref_name} has {ref.describe()}")
            planes = [0, 1] if "P" in axes else [0]
            for p in planes:
                base = view.address + p * axes["P"][1] * view.itemsize if "P" in axes else view.address
                bases.append(base)
                e = view.extent_from(base)
                extent = e if extent is None else min(extent, e)
    assert first is not None and ref is not None and extent is not None
    num_planes = 2 if ("P" in first or len(layers[0]) == 2) else 1
    return PagedKV(
        plane_bases=tuple(bases), num_layers=len(layers), num_planes=num_planes,
        num_blocks=first["B"][0], block_size=first["T"][0],
        num_heads=first["H"][0] if "H" in first else 1, head_size=first["D"][0],
        block_stride=first["B"][1], head_stride=first["H"][1] if "H" in first else first["D"][0],
        token_stride=first["T"][1], extent_elems=extent, itemsize=ref.itemsize, dtype=ref.dtype,
        device=ref.device, device_index=getattr(getattr(ref.owner, "device", None), "index", None),
    )


def _describe_plane_groups(kv_caches: Sequence[Any], layout: str, arg: str) -> PlaneGroups:
    roles = PLANE_GROUP_LAYOUTS[layout]
    first = kv_caches[0]
    count = len(roles) if roles is not None else (len(first) if isinstance(first, (tuple, list)) else 0)
    wanted = (f"a ({', '.join(roles)}) tuple" if roles is not None
              else f"a tuple of 1 to {MAX_PLANE_GROUPS} planes")
    if not 1 <= count <= MAX_PLANE_GROUPS:
        raise ValueError(f"{arg}[0]: layout '{layout}' takes {wanted} of [num_blocks, block_size, (1,) width] "
                         f"tensors per layer, got {type(first).__name__}"
                         + (f" of {len(first)}" if isinstance(first, (tuple, list)) else ""))
    for layer, entry in enumerate(kv_caches):
        if not isinstance(entry, (tuple, list)) or len(entry) != count:
            got = f"{len(entry)} tensors" if isinstance(entry, (tuple, list)) else f"a {type(entry).__name__}"
            like = "" if roles is not None else f", as {arg}[0] has"
            raise ValueError(f"{arg}[{layer}]: layout '{layout}' takes {wanted} per layer "
                             f"({count} tensors{like}), got {got}")
    members: list[PagedKV] = []
    for i in range(count):
        name0 = f"{arg}[0][{i}]"
        view0 = as_view(kv_caches[0][i], name0, writable=True)
        if view0.ndim not in (3, 4) or (view0.ndim == 4 and view0.shape[2] != 1):
            role = f" ({roles[i]})" if roles is not None else ""
            raise ValueError(f"{name0}{role}: layout '{layout}' takes [num_blocks, block_size, width] or "
                             f"[num_blocks, block_size, 1, width] tensors, got {view0.describe()}")
        member_layout = "mla" if view0.ndim == 3 else "mla_nhd"
        members.append(_describe_layers(
            [[(f"{arg}[{layer}][{i}]", entry[i])] for layer, entry in enumerate(kv_caches)], member_layout))
    head = members[0]
    for i, m in enumerate(members[1:], start=1):
        if (m.dtype, m.device, m.block_size) != (head.dtype, head.device, head.block_size):
            raise ValueError(f"{arg}[0][{i}]: every plane of a layer must share dtype, device and block_size "
                             f"with {arg}[0][0] ({head.dtype}, {head.device}, block_size {head.block_size}); got "
                             f"{m.dtype}, {m.device}, block_size {m.block_size}")
    columns, column = [], 0
    for m in members:
        columns.append(column)
        column += m.hidden
    return PlaneGroups(members=tuple(members), columns=tuple(columns), layout=layout)


def describe_paged(kv_caches: Sequence[Any], layout: str, arg: str = "kv_caches") -> PagedKV | PlaneGroups:
    """Descriptor of a paged KV cache given one entry per layer.

    An entry is one tensor, a (K, V) pair for the separate_kv and nz layouts, or a tuple of planes
    for the PLANE_GROUP_LAYOUTS (which give a PlaneGroups).
    """
    if layout not in ENGINE_LAYOUTS and layout not in PLANE_GROUP_LAYOUTS:
        raise ValueError(f"{arg}: unknown engine layout '{layout}'; known: "
                         f"{sorted([*ENGINE_LAYOUTS, *PLANE_GROUP_LAYOUTS])}")
    if len(kv_caches) == 0:
        raise ValueError(f"{arg}: no layers given; pass one KV-cache tensor (or tuple of tensors) per layer")
    if layout in PLANE_GROUP_LAYOUTS:
        return _describe_plane_groups(kv_caches, layout, arg)
    separate = ENGINE_LAYOUTS[layout][1] == 2
    layers = []
    for layer, entry in enumerate(kv_caches):
        if not separate:
            layers.append([(f"{arg}[{layer}]", entry)])
            continue
        tensors = list(entry)
        if len(tensors) != 2:
            raise ValueError(f"{arg}[{layer}]: layout '{layout}' takes a (K, V) pair per layer, "
                             f"got {len(tensors)} tensors")
        layers.append([(f"{arg}[{layer}][{plane}]", t) for plane, t in enumerate(tensors)])
    return _describe_layers(layers, layout)


@dataclass(frozen=True)
class ChunkView:
    """One LMCache memory object: its view, format and element strides."""

    view: TensorView
    num_planes: int
    num_layers: int
    num_tokens: int
    hidden: int
    plane_stride: int
    layer_stride: int
    token_stride: int

    def layer(self, index: int, arg: str = "layer_idx") -> "ChunkView":
        """This memory object restricted to one layer (for the per-layer ops)."""
        if not 0 <= index < self.num_layers:
            raise IndexError(f"{arg}={index} is out of range for a memory object of {self.num_layers} layers")
        start = self.view.address + index * self.layer_stride * self.view.itemsize
        return replace(self, view=replace(self.view, address=start), num_layers=1)


def describe_chunk(obj: Any, fmt: str, arg: str = "memory object", *, writable: bool = False) -> ChunkView:
    if fmt not in CHUNK_FORMATS:
        raise ValueError(f"{arg}: unknown LMCache format '{fmt}'; known: {sorted(CHUNK_FORMATS)}")
    view = as_view(obj, arg, writable=writable)
    axes = CHUNK_FORMATS[fmt]
    if view.ndim != len(axes):
        raise ValueError(f"{arg}: format {fmt} is [{', '.join(axes)}] ({len(axes)} dimensions) "
                         f"but got {view.describe()}")
    dims = {a: (n, s) for a, n, s in zip(axes, view.shape, view.strides)}
    if dims["X"][1] != 1 and dims["X"][0] != 1:
        raise ValueError(f"{arg}: the hidden dimension must be contiguous; got {view.describe()}")
    planes, plane_stride = dims.get("P", (1, 0))
    expected_planes = 1 if fmt in SINGLE_PLANE_CHUNK_FORMATS else 2
    if planes != expected_planes:
        raise ValueError(f"{arg}: format {fmt} has {expected_planes} K/V plane(s) but got {view.describe()}")
    layers, layer_stride = dims.get("L", (1, 0))
    return ChunkView(view, planes, layers, dims["T"][0], dims["X"][0], plane_stride, layer_stride, dims["T"][1])
