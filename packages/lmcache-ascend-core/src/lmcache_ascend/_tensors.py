"""A torch-free view of any tensor-like object: address, shape, element strides, dtype, device.

Accepts torch tensors (duck-typed, so torch is never imported here), DLPack producers and
buffer-protocol objects (NumPy arrays, memoryviews, bytearrays). Everything below this module
works on TensorView only.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lmcache_ascend._native.transfer import buffer_info

# struct-module formats of the buffer protocol -> dtype names (torch's spelling).
_BUFFER_DTYPES = {
    "b": "int8", "B": "uint8", "h": "int16", "H": "uint16", "i": "int32", "I": "uint32",
    "l": "int64", "L": "uint64", "q": "int64", "Q": "uint64", "e": "float16", "f": "float32",
    "d": "float64", "?": "bool", "c": "uint8",
}


@dataclass(frozen=True)
class TensorView:
    address: int
    shape: tuple[int, ...]
    strides: tuple[int, ...]  # in elements
    itemsize: int
    dtype: str                # "float16", "bfloat16", "int8", ...
    device: str               # "cpu", "npu", ...
    end_address: int          # first byte past the memory the object owns (bounds checks)
    owner: Any                # keeps the memory alive while the view is used

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    def is_contiguous(self) -> bool:
        expected = 1
        for size, stride in zip(reversed(self.shape), reversed(self.strides)):
            if size != 1 and stride != expected:
                return False
            expected *= size
        return True

    def extent_from(self, address: int) -> int:
        """Whole elements addressable from `address` up to the end of the owned memory."""
        return max(0, (self.end_address - address) // self.itemsize)

    def describe(self) -> str:
        return f"shape {list(self.shape)}, strides {list(self.strides)}, dtype {self.dtype}, device {self.device}"


def address_view(address: int, shape: tuple[int, ...], itemsize: int, dtype: str, device: str,
                 arg: str = "address") -> TensorView:
    """A contiguous view of raw memory at `address` (LMCache hands some buffers over as pointers)."""
    if address <= 0:
        raise ValueError(f"{arg}: address {address:#x} is null or negative; pass the buffer's data pointer")
    strides, step = [], 1
    for n in reversed(shape):
        strides.append(step)
        step *= n
    return TensorView(address=address, shape=tuple(shape), strides=tuple(reversed(strides)), itemsize=itemsize,
                      dtype=dtype, device=device, end_address=address + step * itemsize, owner=None)


def dtype_name(dtype: Any) -> str:
    """A torch dtype's name as TensorView spells it ("bfloat16", "int64", ...)."""
    return str(dtype).removeprefix("torch.")


def _is_torch_tensor(obj: Any) -> bool:
    return all(hasattr(obj, a) for a in ("data_ptr", "stride", "element_size", "untyped_storage"))


def _from_torch(t: Any) -> TensorView:
    storage = t.untyped_storage()
    dtype = dtype_name(t.dtype)
    return TensorView(
        address=t.data_ptr(), shape=tuple(t.shape), strides=tuple(t.stride()), itemsize=t.element_size(),
        dtype=dtype, device=t.device.type, end_address=storage.data_ptr() + storage.nbytes(), owner=t,
    )


def _from_buffer(obj: Any, writable: bool) -> TensorView:
    address, nbytes, shape, strides, itemsize, fmt = buffer_info(obj, writable)
    fmt = fmt.lstrip("@=<>!")
    if any(s % itemsize for s in strides):
        raise ValueError(f"buffer strides {list(strides)} are not multiples of its item size {itemsize}")
    elem_strides = tuple(s // itemsize for s in strides)
    if any(s < 0 for s in elem_strides):
        raise ValueError(f"negative buffer strides {list(strides)} are not supported; pass a copy")
    last = sum((n - 1) * s for n, s in zip(shape, elem_strides)) + 1 if all(shape) else 0
    return TensorView(
        address=address, shape=tuple(shape), strides=elem_strides, itemsize=itemsize,
        dtype=_BUFFER_DTYPES.get(fmt, f"bytes{itemsize}"), device="cpu",
        end_address=address + last * itemsize, owner=obj,
    )


def _from_dlpack(obj: Any) -> Any:
    try:
        import torch

        return torch.from_dlpack(obj)
    except ImportError:
        import numpy

        return numpy.from_dlpack(obj)


def current_npu_stream(device_index: int | None = None) -> int:
    """The aclrtStream of torch_npu's current stream, as an int, for kernels launched on the NPU.

    device_index: the NPU the KV cache is on; kernels run on the current NPU, so another one is an
    error (a launch there would address the cache through the wrong device).

    Looked up only when a transfer involves npu tensors, so torch_npu is never needed otherwise.
    Reading `npu_stream` goes through torch_npu's NPUStream::stream(), which first submits the ops
    still waiting in torch_npu's task queue, so a kernel launched on it runs after them.
    """
    try:
        import torch

        npu = getattr(torch, "npu", None)
        if npu is None:
            import torch_npu  # noqa: F401  (registers torch.npu)

            npu = torch.npu
    except ImportError as exc:
        raise RuntimeError(
            f"tensors are on an npu device but torch_npu cannot be imported ({exc}); install torch_npu "
            "matching your torch and CANN, and import it before using lmcache_ascend") from exc
    if device_index is not None and device_index != npu.current_device():
        raise ValueError(f"kv_caches: are on npu:{device_index} but the current NPU is npu:{npu.current_device()}; "
                         f"KV transfers run on the current NPU's stream: call torch.npu.set_device({device_index}) "
                         "in this thread first")
    return int(npu.current_stream().npu_stream)


def as_view(obj: Any, name: str, *, writable: bool = False) -> TensorView:
    """View `obj` (argument `name`, used in errors) as a TensorView."""
    if isinstance(obj, TensorView):
        return obj
    if _is_torch_tensor(obj):
        return _from_torch(obj)
    if hasattr(obj, "__dlpack__") and not hasattr(obj, "__array_interface__"):
        return as_view(_from_dlpack(obj), name, writable=writable)
    try:
        return _from_buffer(obj, writable)
    except TypeError as exc:
        raise TypeError(
            f"{name}: expected a torch tensor, a DLPack producer or a buffer-protocol object, "
            f"got {type(obj).__name__}") from exc
