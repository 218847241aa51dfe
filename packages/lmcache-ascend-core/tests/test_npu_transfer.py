"""The Ascend backend on a real NPU, bit-exact against the CPU backend.

Run by the npu-* nox sessions on Ascend hosts; skipped elsewhere with what is missing (failed
instead when LMCACHE_ASCEND_REQUIRE_NPU=1). Every case builds the paged cache on the NPU and the
same content on the CPU, moves it with the NPU path and with the CPU backend, and compares the
bytes: every engine layout of the CPU tests (plus NZ and plane groups), fp16 / bf16 / int8,
int32 / int64 slots with -1 holes given on the host or on the NPU, several memory objects with a
partial last one, skip_prefix_n_tokens, and memory objects on the NPU, in registered host memory
(zero-copy) and in plain host memory (staged). Also: the LMCache surfaces (ops for LMCache >= 0.5,
c_ops for 0.3), ordering on the current stream without explicit syncs, and bad input refused
before anything is written.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os

import pytest


def _why_no_npu() -> str | None:
    """What this host lacks for the NPU tests, or None. torch_npu is imported only when it is
    installed: torch-npu without CANN breaks even `import torch`."""
    if importlib.util.find_spec("torch_npu") is None:
        return "torch_npu is not installed (these tests need torch_npu, a CANN toolkit and an Ascend NPU)"
    try:
        import torch_npu  # noqa: F401  (registers torch.npu)
    except Exception as exc:  # ImportError / OSError when CANN's libraries are missing
        return (f"torch_npu is installed but cannot be imported ({type(exc).__name__}: {exc}); install CANN and "
                "source its set_env.sh")
    import torch

    try:
        available = torch.npu.is_available()
    except Exception as exc:  # a broken driver may raise instead of answering
        return f"torch.npu.is_available() raised {type(exc).__name__}: {exc}"
    if not available:
        return ("torch_npu imports but torch.npu.is_available() is False: no Ascend NPU is visible (check "
                "`npu-smi info` and ASCEND_RT_VISIBLE_DEVICES)")
    return None


# The npu-* sessions set this, so a host where the NPU path cannot run fails instead of skipping.
REQUIRE_NPU = os.environ.get("LMCACHE_ASCEND_REQUIRE_NPU") == "1"


def skip_or_fail(reason: str, *, module: bool = False) -> None:
    if REQUIRE_NPU:
        pytest.fail(f"{reason} (LMCACHE_ASCEND_REQUIRE_NPU=1: the NPU tests must run here)", pytrace=False)
    pytest.skip(reason, allow_module_level=module)


_NO_NPU = _why_no_npu()
if _NO_NPU is not None:
    skip_or_fail(_NO_NPU, module=True)

import torch  # noqa: E402
import torch_npu  # noqa: E402  (registers torch.npu; npu_format_cast)

import lmcache_ascend.c_ops as c_ops  # noqa: E402
import lmcache_ascend.ops as ops  # noqa: E402
import ops_cases  # noqa: E402
from kvref import (GROUP_LAYOUTS, LAYOUTS, NZ_LAYOUTS, PLANE_WIDTHS, hidden, make_layer, make_planes,  # noqa: E402
                   planes, random_slots, random_tensor, ref_gather, same, to_canonical)
from lmcache_ascend.layouts import describe_chunk, describe_paged  # noqa: E402
from lmcache_ascend.memory import HostPool, device_registration_status, enable_device_registration  # noqa: E402
from lmcache_ascend.transfer import GATHER, SCATTER, transfer_kv  # noqa: E402

torch.npu.set_device(torch.npu.current_device())  # registration maps host pages for the current device
SOC = torch.npu.get_device_name()
IS_310P = "310P" in SOC
NPU = torch.device("npu", torch.npu.current_device())
DTYPES = [torch.float16, torch.bfloat16, torch.int8]

ALL_LAYOUTS = [*LAYOUTS, *NZ_LAYOUTS, *GROUP_LAYOUTS]
NL, NB, BS, NH, HS, NT = 2, 6, 16, 2, 32, 70
CHUNK_TOKENS = 32
BOUNDS = [(0, 32), (32, 64), (64, 70)]  # LMCache's chunks; the last object has room for 32 but holds 6
# id -> (slot dtype, where the slots live, skip_prefix_n_tokens); 40 skips all of chunk 0.
SLOT_CASES = {"i32-host": (torch.int32, "cpu", 0), "i64-host-skip7": (torch.int64, "cpu", 7),
              "i32-npu-skip40": (torch.int32, "npu", 40), "i64-npu": (torch.int64, "npu", 0)}
H2D, D2H = 0, 1  # LMCache's TransferDirection
NOT_REGISTERED = r"memory object 0 .*(no device registrar is installed|is not registered with the NPU).*fused=True"


def dtype_id(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def skip_unsupported_dtype(dtype: torch.dtype) -> None:
    if IS_310P and dtype == torch.bfloat16:
        pytest.skip(f"{SOC}: Ascend 310P has no bf16")


def refused_on_310p(layout: str, dtype: torch.dtype) -> bool:
    """310P has no DataCopyPad: a token piece that is not a multiple of 32 bytes is refused. The
    heads here are 32 elements (>= 32 bytes for every dtype), so only narrow plane groups hit it."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    return IS_310P and layout in GROUP_LAYOUTS and any(w * itemsize % 32 for w in PLANE_WIDTHS[layout])


# ---- building blocks ----

def to_device(layer, device):
    return tuple(t.to(device) for t in layer) if isinstance(layer, tuple) else layer.to(device)


def host_copy(x):
    """A CPU copy of a tensor or tuple of tensors (reading NPU memory waits for the stream)."""
    if isinstance(x, tuple):
        return tuple(host_copy(t) for t in x)
    return x.cpu() if x.device.type == "npu" else x.clone()


def zeros_like_layer(layer):
    return tuple(torch.zeros_like(t) for t in layer) if isinstance(layer, tuple) else torch.zeros_like(layer)


def make_cache(layout: str, dtype: torch.dtype, gen: torch.Generator):
    """(CPU layers, the memory object's hidden) of an NL-layer cache in `layout`."""
    if layout in GROUP_LAYOUTS:
        return [make_planes(NB, BS, PLANE_WIDTHS[layout], dtype, gen) for _ in range(NL)], sum(PLANE_WIDTHS[layout])
    return [make_layer(layout, NB, BS, NH, HS, dtype, gen) for _ in range(NL)], hidden(layout, NH, HS)


def chunk_refs(chunks, layout: str, direction: int):
    """transfer_kv's (memory object, token_begin, token_end) list over BOUNDS."""
    fmt = "KV_MLA_FMT" if planes(layout) == 1 else "KV_2LTD"
    return [(describe_chunk(c, fmt, writable=direction == GATHER), begin, end) for c, (begin, end) in zip(chunks, BOUNDS)]


@pytest.fixture(scope="module")
def registered_pool():
    """A host pool registered with the NPU (what LMCache's local CPU backend allocates from)."""
    try:
        enable_device_registration()
    except RuntimeError as exc:
        skip_or_fail(f"registered host memory is unavailable here: {exc}")
    name, how = device_registration_status()
    pool = HostPool(16 << 20, register=True)
    assert pool.registered, f"HostPool(register=True) is not registered although registration is on ({name}: {how})"
    yield pool
    pool.close()


@pytest.fixture
def place(request):
    """place(tensors, where) -> copies of CPU `tensors` on the NPU ("npu"), in registered host memory
    ("registered") or in plain pageable host memory ("host"); pool memory is freed after the test."""
    taken: list[tuple[HostPool, int]] = []

    def put(tensors, where: str):
        if where == "npu":
            return [t.to(NPU) for t in tensors]
        if where == "host":
            return [t.clone() for t in tensors]
        pool = request.getfixturevalue("registered_pool")
        out = []
        for t in tensors:
            nbytes = t.numel() * t.element_size()
            address = pool.allocate(nbytes)
            assert address is not None, f"the registered test pool cannot fit {nbytes} bytes"
            taken.append((pool, address))
            out.append(pool.tensor(address, nbytes, t.dtype, tuple(t.shape)).copy_(t))
        return out

    yield put
    for pool, address in taken:
        pool.free(address)


def moved_slots(slots: torch.Tensor, skip: int) -> torch.Tensor:
    """Mask of the cache slots a transfer touches (not -1, not in the skipped prefix)."""
    keep = torch.zeros(slots.numel(), dtype=torch.bool)
    keep[skip:] = slots[skip:] >= 0
    mask = torch.zeros(NB * BS, dtype=torch.bool)
    mask[slots[keep].long()] = True
    return mask


# ---- every layout x dtype x where the memory objects live x slots ----

@pytest.mark.parametrize("slot_case", list(SLOT_CASES))
@pytest.mark.parametrize("chunks_on", ["npu", "registered", "host"])
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("layout", ALL_LAYOUTS)
def test_gather_and_scatter_match_the_cpu_backend(layout, dtype, chunks_on, slot_case, place):
    """Gather from the NPU cache into memory objects, then scatter them into a zeroed NPU cache;
    both bit-exact with the CPU backend on a CPU copy. "registered" runs zero-copy (fused=False)
    and forced staging (fused=True); "host" runs auto (fused=None, stages) and forced staging, and
    fused=False must refuse the unregistered memory before moving anything."""
    skip_unsupported_dtype(dtype)
    gen = torch.Generator().manual_seed(ALL_LAYOUTS.index(layout) * 100 + DTYPES.index(dtype))
    cpu_layers, width = make_cache(layout, dtype, gen)
    npu_layers = [to_device(layer, NPU) for layer in cpu_layers]
    slot_dtype, slot_device, skip = SLOT_CASES[slot_case]
    slots = random_slots(NT, NB * BS, gen, slot_dtype)
    npu_slots = slots.to(slot_device)
    # Pre-filled memory objects: tokens with slot -1 or in the skipped prefix must keep these bytes.
    sentinels = [random_tensor((planes(layout), NL, CHUNK_TOKENS, width), dtype, gen) for _ in BOUNDS]
    paged = describe_paged(npu_layers, layout)

    if refused_on_310p(layout, dtype):
        chunks = place(sentinels, chunks_on)
        with pytest.raises(ValueError, match="has no DataCopyPad"):
            transfer_kv(paged, chunk_refs(chunks, layout, GATHER), npu_slots, GATHER, skip)
        assert all(same(host_copy(c), s) for c, s in zip(chunks, sentinels)), "a refused gather wrote"
        with pytest.raises(ValueError, match="has no DataCopyPad"):
            transfer_kv(paged, chunk_refs(chunks, layout, SCATTER), npu_slots, SCATTER, skip)
        assert all(same(host_copy(a), b) for a, b in zip(npu_layers, cpu_layers)), "a refused scatter wrote"
        return

    want_chunks = [s.clone() for s in sentinels]
    transfer_kv(describe_paged(cpu_layers, layout), chunk_refs(want_chunks, layout, GATHER), slots, GATHER, skip)
    want_layers = [zeros_like_layer(layer) for layer in cpu_layers]
    transfer_kv(describe_paged(want_layers, layout), chunk_refs(want_chunks, layout, SCATTER), slots, SCATTER, skip)
    untouched = ~moved_slots(slots, skip)

    runs = {"npu": [None], "registered": [False, True], "host": [None, True]}[chunks_on]
    for fused in runs:
        what = f"{chunks_on} memory objects, fused={fused}"
        chunks = place(sentinels, chunks_on)
        transfer_kv(paged, chunk_refs(chunks, layout, GATHER), npu_slots, GATHER, skip, fused=fused)
        for i, (got, want) in enumerate(zip(chunks, want_chunks)):
            assert same(host_copy(got), want), f"gather ({what}): memory object {i} differs from the CPU backend"

        target = [zeros_like_layer(layer) for layer in npu_layers]
        transfer_kv(describe_paged(target, layout), chunk_refs(chunks, layout, SCATTER), npu_slots, SCATTER, skip,
                    fused=fused)
        for i, (got, want) in enumerate(zip(target, want_layers)):
            got = host_copy(got)
            canon = to_canonical(layout, got)
            assert same(canon[:, untouched], torch.zeros_like(canon[:, untouched])), \
                f"scatter ({what}): layer {i} has writes in slots the slot mapping does not name"
            assert same(got, want), f"scatter ({what}): layer {i} differs from the CPU backend"

    if chunks_on == "host":
        chunks = place(sentinels, "host")
        with pytest.raises(ValueError, match=NOT_REGISTERED):
            transfer_kv(paged, chunk_refs(chunks, layout, GATHER), npu_slots, GATHER, skip, fused=False)
        assert all(same(c, s) for c, s in zip(chunks, sentinels)), "a refused gather wrote into the memory objects"
        target = [zeros_like_layer(layer) for layer in npu_layers]
        with pytest.raises(ValueError, match=NOT_REGISTERED):
            transfer_kv(describe_paged(target, layout), chunk_refs(chunks, layout, SCATTER), npu_slots, SCATTER, skip,
                        fused=False)
        assert all(same(host_copy(t), z) for t, z in zip(target, map(zeros_like_layer, cpu_layers))), \
            "a refused scatter wrote into the NPU cache"


def test_nz_cache_cast_by_torch_npu_moves_like_its_shape_says():
    """vllm-ascend's 310P caches are npu_format_cast to FRACTAL_NZ (format 29): with the last
    dimension one 32-byte fractal and block_size a multiple of 16, their storage is the row-major
    order of the NZ shape, which is what the descriptor assumes."""
    if not hasattr(torch_npu, "npu_format_cast"):
        pytest.skip("this torch_npu has no npu_format_cast")
    gen = torch.Generator().manual_seed(29)
    cpu_layers = [make_layer("nz", NB, BS, NH, HS, torch.float16, gen) for _ in range(NL)]
    cast = [tuple(torch_npu.npu_format_cast(t.to(NPU), 29) for t in layer) for layer in cpu_layers]
    slots = random_slots(NT, NB * BS, gen, torch.int64)
    sentinels = [random_tensor((2, NL, CHUNK_TOKENS, NH * HS), torch.float16, gen) for _ in BOUNDS]
    want = [s.clone() for s in sentinels]
    transfer_kv(describe_paged(cpu_layers, "nz"), chunk_refs(want, "nz", GATHER), slots, GATHER)
    got = [s.to(NPU) for s in sentinels]
    transfer_kv(describe_paged(cast, "nz"), chunk_refs(got, "nz", GATHER), slots.to(NPU), GATHER)
    assert all(same(g.cpu(), w) for g, w in zip(got, want))


# ---- ordering on the stream ----

def queue_busy_work() -> torch.Tensor:
    """Tens of milliseconds of matmuls queued on the current stream, so work that is not ordered
    after them races visibly. The matrix is its own square (every entry 1/n), so nothing overflows."""
    n = 4096
    a = torch.full((n, n), 1.0 / n, dtype=torch.float16, device=NPU)
    for _ in range(16):
        a = a @ a
    return a


@pytest.mark.parametrize("stream", ["default", "side"])
def test_transfers_are_ordered_on_the_current_stream(stream):
    """NPU op writes the cache -> gather -> scatter -> NPU op reads the cache, with no sync in
    between: each step sees the one before, and all is correct once the current stream is
    synchronized. Then the cache is overwritten again and gathered into host memory: that call
    returns only when the host holds the new data."""
    gen = torch.Generator().manual_seed(7)
    first = [make_layer("flash_attn", NB, BS, NH, HS, torch.float16, gen) for _ in range(NL)]
    second = [make_layer("flash_attn", NB, BS, NH, HS, torch.float16, gen) for _ in range(NL)]
    slots = random_slots(NT, NB * BS, gen, torch.int64)
    first_npu, second_npu = [t.to(NPU) for t in first], [t.to(NPU) for t in second]
    cache = [torch.zeros_like(t) for t in first_npu]
    target = [torch.zeros_like(t) for t in first_npu]
    empty = [torch.zeros(2, NL, CHUNK_TOKENS, NH * HS, dtype=torch.float16) for _ in BOUNDS]
    chunks = [c.to(NPU) for c in empty]
    host_chunks = [c.clone() for c in empty]
    npu_slots = slots.to(NPU)
    want_first, want_second = [c.clone() for c in empty], [c.clone() for c in empty]
    transfer_kv(describe_paged(first, "flash_attn"), chunk_refs(want_first, "flash_attn", GATHER), slots, GATHER)
    transfer_kv(describe_paged(second, "flash_attn"), chunk_refs(want_second, "flash_attn", GATHER), slots, GATHER)
    torch.npu.synchronize()  # from here on, only the work below is in flight

    paged = describe_paged(cache, "flash_attn")
    with torch.npu.stream(torch.npu.Stream() if stream == "side" else torch.npu.current_stream()):
        queue_busy_work()
        for dst, src in zip(cache, first_npu):
            dst.copy_(src)
        transfer_kv(paged, chunk_refs(chunks, "flash_attn", GATHER), npu_slots, GATHER)
        transfer_kv(describe_paged(target, "flash_attn"), chunk_refs(chunks, "flash_attn", SCATTER), npu_slots,
                    SCATTER)
        read_back = [t.clone() for t in target]  # an NPU op after the scatter
        queue_busy_work()
        for dst, src in zip(cache, second_npu):
            dst.copy_(src)
        transfer_kv(paged, chunk_refs(host_chunks, "flash_attn", GATHER), npu_slots, GATHER)
        for i, (got, want) in enumerate(zip(host_chunks, want_second)):  # no sync: the call waited for the host
            assert same(got, want), f"gather into host memory returned before the data arrived (memory object {i})"
        torch.npu.current_stream().synchronize()

    for i, (got, want) in enumerate(zip(chunks, want_first)):
        assert same(got.cpu(), want), f"the gather did not see the queued copy_ into the cache (memory object {i})"
    moved = moved_slots(slots, 0)
    for i, (got, src) in enumerate(zip(read_back, first)):
        canon, full = to_canonical("flash_attn", got.cpu()), to_canonical("flash_attn", src)
        assert same(canon[:, moved], full[:, moved]), f"layer {i}: the scatter did not see the gather's output"
        assert same(canon[:, ~moved], torch.zeros_like(canon[:, ~moved])), f"layer {i}: the scatter wrote elsewhere"


# ---- bad input on the NPU ----

@pytest.mark.parametrize("slots_on", ["cpu", "npu"])
@pytest.mark.parametrize("chunks_on", ["npu", "host"])
def test_out_of_range_slot_is_refused_before_any_write(chunks_on, slots_on, place):
    gen = torch.Generator().manual_seed(13)
    cpu_layers = [make_layer("flash_attn", NB, BS, NH, HS, torch.float16, gen) for _ in range(NL)]
    npu_layers = [t.to(NPU) for t in cpu_layers]
    slots = random_slots(NT, NB * BS, gen, torch.int64)
    slots[40] = NB * BS
    sentinels = [random_tensor((2, NL, CHUNK_TOKENS, NH * HS), torch.float16, gen) for _ in BOUNDS]
    chunks = place(sentinels, chunks_on)
    message = rf"slot_mapping\[40\] = {NB * BS} is out of range: the paged KV cache has {NB * BS} slots"
    paged = describe_paged(npu_layers, "flash_attn")
    with pytest.raises(IndexError, match=message):
        transfer_kv(paged, chunk_refs(chunks, "flash_attn", GATHER), slots.to(slots_on), GATHER)
    assert all(same(host_copy(c), s) for c, s in zip(chunks, sentinels)), "a refused gather wrote"
    with pytest.raises(IndexError, match=message):
        transfer_kv(paged, chunk_refs(chunks, "flash_attn", SCATTER), slots.to(slots_on), SCATTER)
    assert all(same(t.cpu(), c) for t, c in zip(npu_layers, cpu_layers)), "a refused scatter wrote"


def test_mixed_devices_are_refused_by_name():
    gen = torch.Generator().manual_seed(17)
    cpu_layers = [make_layer("flash_attn", NB, BS, NH, HS, torch.float16, gen) for _ in range(NL)]
    npu_layers = [t.to(NPU) for t in cpu_layers]
    slots = random_slots(NT, NB * BS, gen, torch.int64)
    host = [torch.zeros(2, NL, CHUNK_TOKENS, NH * HS, dtype=torch.float16) for _ in BOUNDS]
    mixed = [host[0], host[1].to(NPU), host[2]]
    with pytest.raises(ValueError, match=r"memory objects: mixes devices \['cpu', 'npu'\]"):
        transfer_kv(describe_paged(npu_layers, "flash_attn"), chunk_refs(mixed, "flash_attn", GATHER), slots, GATHER)
    with pytest.raises(ValueError, match="memory object 1: is on device 'npu' but the KV cache"):
        transfer_kv(describe_paged(cpu_layers, "flash_attn"), chunk_refs(mixed, "flash_attn", GATHER), slots, GATHER)
    with pytest.raises(ValueError, match=r"pass slot_mapping\.cpu\(\)"):
        transfer_kv(describe_paged(cpu_layers, "flash_attn"), chunk_refs(host, "flash_attn", GATHER), slots.to(NPU),
                    GATHER)
    key_value = torch.zeros(2, NL, NT, NH * HS, dtype=torch.float16)
    with pytest.raises(ValueError, match="paged_memory_device=cpu but the KV-cache tensors are on npu"):
        ops.multi_layer_kv_transfer(key_value, npu_layers, slots, "cpu", NB * BS, D2H, 1, block_size=BS)
    assert all(not c.any() for c in host) and not mixed[1].any() and not key_value.any()


def test_a_cache_on_another_npu_than_the_current_one_is_refused():
    if torch.npu.device_count() < 2:
        pytest.skip("needs two NPUs")
    gen = torch.Generator().manual_seed(18)
    other = (torch.npu.current_device() + 1) % torch.npu.device_count()
    layers = [make_layer("flash_attn", NB, BS, NH, HS, torch.float16, gen).to(f"npu:{other}") for _ in range(NL)]
    host = [torch.zeros(2, NL, CHUNK_TOKENS, NH * HS, dtype=torch.float16) for _ in BOUNDS]
    slots = random_slots(NT, NB * BS, gen, torch.int64)
    with pytest.raises(ValueError, match=rf"kv_caches: are on npu:{other} but the current NPU is .*set_device\({other}\)"):
        transfer_kv(describe_paged(layers, "flash_attn"), chunk_refs(host, "flash_attn", GATHER), slots, GATHER)
    assert all(not c.any() for c in host)


# ---- the LMCache surfaces ----

def _lmcache_version() -> tuple[int, int] | None:
    try:
        major, minor = importlib.metadata.version("lmcache").split(".")[:2]
        return int(major), int(minor)
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return None


LMCACHE = _lmcache_version()
needs_lmcache_05 = pytest.mark.skipif(LMCACHE is None or LMCACHE < (0, 5),
                                      reason=f"lmcache_ascend.ops is LMCache >= 0.5's surface; installed: {LMCACHE}")
needs_lmcache_03 = pytest.mark.skipif(LMCACHE != (0, 3),
                                      reason=f"lmcache_ascend.c_ops is LMCache 0.3's surface; installed: {LMCACHE}")


def format_id(fmt: int) -> str:
    return f"fmt{fmt}-{ops_cases.FORMAT_LAYOUTS[fmt]}"


def ops_world(fmt: int, seed: int = 0):
    """ops_cases' cache for `fmt` (fp16: every chip has it) and its copy on the NPU."""
    layout, layers, slots, kv = ops_cases.ops_case(fmt, torch.float16, seed)
    return layout, layers, [to_device(layer, NPU) for layer in layers], slots, kv


def npu_pointers(fmt: int, npu_layers, mode: str):
    """key_value_ptrs as LMCache passes them on the NPU: tensors, or an int64 tensor of addresses."""
    ptrs = ops_cases.paged_arg(fmt, npu_layers, mode)
    return ptrs.to(NPU) if mode == "addresses" else ptrs


@needs_lmcache_05
@pytest.mark.parametrize("kv_on", ["npu", "host"])
@pytest.mark.parametrize("mode", ["tensors", "addresses"])
@pytest.mark.parametrize("fmt", sorted(ops_cases.FORMAT_LAYOUTS), ids=format_id)
def test_ops_multi_layer_kv_transfer(fmt, mode, kv_on):
    layout, layers, npu_layers, slots, kv = ops_world(fmt)
    nb, bs, hs = ops_cases.NB, ops_cases.BS, ops_cases.HS
    want = kv.clone()
    ops.multi_layer_kv_transfer(want, ops_cases.paged_arg(fmt, layers, mode), slots, "cpu", nb * bs, D2H, fmt,
                                block_size=bs, head_size=hs, skip_prefix_n_tokens=3)
    got = kv.to(NPU) if kv_on == "npu" else kv.clone()
    ops.multi_layer_kv_transfer(got, npu_pointers(fmt, npu_layers, mode), slots.to(NPU), NPU, nb * bs, D2H, fmt,
                                block_size=bs, head_size=hs, skip_prefix_n_tokens=3)
    assert same(host_copy(got), want)

    cpu_target = [zeros_like_layer(layer) for layer in layers]
    ops.multi_layer_kv_transfer(want, ops_cases.paged_arg(fmt, cpu_target, mode), slots, "cpu", nb * bs, H2D, fmt,
                                block_size=bs, head_size=hs)
    npu_target = [zeros_like_layer(layer) for layer in npu_layers]
    ops.multi_layer_kv_transfer(got, npu_pointers(fmt, npu_target, mode), slots, NPU, nb * bs, H2D, fmt,
                                block_size=bs, head_size=hs)
    assert all(same(host_copy(a), b) for a, b in zip(npu_target, cpu_target))


@needs_lmcache_05
@pytest.mark.parametrize("lmc_on", ["npu", "host"])
@pytest.mark.parametrize("token_major", [False, True], ids=["2TD", "T2D"])
@pytest.mark.parametrize("fmt", [1, 2, 3, 6, 7, 12, 13], ids=format_id)
def test_ops_single_layer_kv_transfer(fmt, token_major, lmc_on):
    layout, layers, npu_layers, slots, _ = ops_world(fmt)
    d = hidden(layout, ops_cases.NH, ops_cases.HS)
    nt = slots.numel()
    shape = (nt, d) if planes(layout) == 1 else (nt, 2, d) if token_major else (2, nt, d)
    layer = 1  # layerwise: one layer of the cache at a time
    want = torch.zeros(shape, dtype=torch.float16)
    ops.single_layer_kv_transfer(want, layers[layer], slots, D2H, fmt, token_major)
    got = want.new_zeros(shape).to(NPU if lmc_on == "npu" else "cpu")
    ops.single_layer_kv_transfer(got, npu_layers[layer], slots.int().to(NPU), D2H, fmt, token_major)
    assert same(host_copy(got), want)

    cpu_target, npu_target = zeros_like_layer(layers[layer]), zeros_like_layer(npu_layers[layer])
    ops.single_layer_kv_transfer(want, cpu_target, slots, H2D, fmt, token_major)
    ops.single_layer_kv_transfer(got, npu_target, slots.int(), H2D, fmt, token_major)
    assert same(host_copy(npu_target), cpu_target)


@needs_lmcache_05
@pytest.mark.parametrize("kv_on", ["npu", "host"])
def test_ops_flash_layer_ops(kv_on):
    _, layers, npu_layers, slots, kv = ops_world(16)
    want = kv.clone()
    got = kv.to(NPU) if kv_on == "npu" else kv.clone()
    for i, ((k, v), (nk, nv)) in enumerate(zip(layers, npu_layers)):
        ops.load_and_reshape_flash(want, k, v, slots, i)
        ops.load_and_reshape_flash(got, nk, nv, slots.to(NPU), i)
    assert same(host_copy(got), want)
    cpu_target = [zeros_like_layer(layer) for layer in layers]
    npu_target = [zeros_like_layer(layer) for layer in npu_layers]
    for i, ((k, v), (nk, nv)) in enumerate(zip(cpu_target, npu_target)):
        ops.reshape_and_cache_back_flash(want, k, v, slots, i)
        ops.reshape_and_cache_back_flash(got, nk, nv, slots, i)
    assert all(same(host_copy(a), b) for a, b in zip(npu_target, cpu_target))


@needs_lmcache_05
@pytest.mark.parametrize("layout", ["mla_rope", "dsa"])
def test_ops_plane_tuples(layout):
    gen = torch.Generator().manual_seed(3)
    layers = [make_planes(NB, BS, PLANE_WIDTHS[layout], torch.float16, gen) for _ in range(NL)]
    npu_layers = [to_device(layer, NPU) for layer in layers]
    slots = random_slots(NT, NB * BS, gen, torch.int64)
    sentinel = random_tensor((1, NL, NT, sum(PLANE_WIDTHS[layout])), torch.float16, gen)
    got = sentinel.to(NPU)
    ops.multi_layer_kv_transfer(got, npu_layers, slots.to(NPU), NPU, NB * BS, D2H, 17)
    assert same(got.cpu(), ref_gather(layout, layers, slots, sentinel))
    target = [zeros_like_layer(layer) for layer in npu_layers]
    ops.multi_layer_kv_transfer(got, target, slots, NPU, NB * BS, H2D, 17)
    want = [zeros_like_layer(layer) for layer in layers]
    ops.multi_layer_kv_transfer(got.cpu(), want, slots, "cpu", NB * BS, H2D, 17)
    assert all(same(host_copy(a), b) for a, b in zip(target, want))


@needs_lmcache_03
@pytest.mark.parametrize("use_mla", [False, True], ids=["flash_attn", "mla"])
def test_c_ops_multi_layer_kv_transfer(use_mla):
    fmt = 3 if use_mla else 1
    _, layers, npu_layers, slots, kv = ops_world(fmt)
    nb, bs = ops_cases.NB, ops_cases.BS
    want = kv.clone()
    c_ops.multi_layer_kv_transfer(want, layers, slots, "cpu", nb * bs, True, use_mla)
    got = kv.to(NPU)
    ptrs = torch.tensor([t.data_ptr() for t in npu_layers], dtype=torch.int64, device=NPU)
    c_ops.multi_layer_kv_transfer(got, ptrs, slots.to(NPU), NPU, nb * bs, True, use_mla)
    assert same(got.cpu(), want)
    cpu_target = [torch.zeros_like(t) for t in layers]
    npu_target = [torch.zeros_like(t) for t in npu_layers]
    c_ops.multi_layer_kv_transfer(want, cpu_target, slots, "cpu", nb * bs, False, use_mla)
    c_ops.multi_layer_kv_transfer(got, npu_target, slots, NPU, nb * bs, False, use_mla)
    assert all(same(a.cpu(), b) for a, b in zip(npu_target, cpu_target))


@needs_lmcache_03
def test_c_ops_unilateral_takes_k_layers_then_v_layers():
    _, layers, npu_layers, slots, kv = ops_world(16)
    nb, bs = ops_cases.NB, ops_cases.BS
    # SGLang's buffers: every layer's K as [page_buffer_size, hidden], then every layer's V.
    flat = [k.view(nb * bs, -1) for k, _ in npu_layers] + [v.view(nb * bs, -1) for _, v in npu_layers]
    ptrs = torch.tensor([t.data_ptr() for t in flat], dtype=torch.int64, device=NPU)
    got = kv.to(NPU)
    c_ops.multi_layer_kv_transfer_unilateral(got, ptrs, slots.to(NPU), NPU, nb * bs, True, False)
    want = kv.clone()
    for i, (k, v) in enumerate(layers):
        ops.load_and_reshape_flash(want, k, v, slots, i)
    assert same(got.cpu(), want)


@needs_lmcache_03
@pytest.mark.parametrize("two_major", [False, True], ids=["flashinfer", "flash_attn"])
@pytest.mark.parametrize("token_major", [False, True], ids=["2TD", "T2D"])
def test_c_ops_single_layer_kv_transfer(token_major, two_major):
    _, layers, npu_layers, slots, _ = ops_world(1 if two_major else 2)
    nt, d = slots.numel(), ops_cases.NH * ops_cases.HS
    shape = (nt, 2, d) if token_major else (2, nt, d)
    want = torch.zeros(shape, dtype=torch.float16)
    c_ops.single_layer_kv_transfer(want, layers[0], slots, True, token_major, two_major)
    got = torch.zeros(shape, dtype=torch.float16, device=NPU)
    c_ops.single_layer_kv_transfer(got, npu_layers[0], slots.to(NPU), True, token_major, two_major)
    assert same(got.cpu(), want)
    cpu_target, npu_target = torch.zeros_like(layers[0]), torch.zeros_like(npu_layers[0])
    c_ops.single_layer_kv_transfer(want, cpu_target, slots, False, token_major, two_major)
    c_ops.single_layer_kv_transfer(got, npu_target, slots, False, token_major, two_major)
    assert same(npu_target.cpu(), cpu_target)
