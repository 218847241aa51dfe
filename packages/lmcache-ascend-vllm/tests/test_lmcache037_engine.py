"""LMCache 0.3.x's own LMCacheEngine storing and retrieving through lmcache-ascend's connectors.

The engine is LMCache's (builder, config, chunked token database, local CPU backend); its pool is
our PinnedArenaAllocator (installed by the same patch the vLLM connector applies) and its GPU
connector is ours, over paged KV caches in host memory. Every round trip is compared bit-exact
against plain torch indexing of the original cache. Needs LMCache 0.3.x, not vLLM.
"""
from __future__ import annotations

import importlib.metadata
import itertools

import pytest
import torch
from packaging.version import Version

LMCACHE_VERSION = next((dist.version for dist in importlib.metadata.distributions(name="lmcache")), None)
if LMCACHE_VERSION is None or not Version("0.3.7") <= Version(LMCACHE_VERSION) < Version("0.4"):
    # 0.5.x: covered by test_connector.py and test_e2e_vllm.py. 0.3.3's engine cannot be built on a host
    # without CUDA (it imports its CUDA-linked lmcache.c_ops and asks torch.cuda for the device).
    pytest.skip(f"needs LMCache >= 0.3.7, < 0.4 (installed: {LMCACHE_VERSION})", allow_module_level=True)

from lmcache.config import LMCacheEngineMetadata  # noqa: E402
from lmcache.v1.cache_engine import LMCacheEngineBuilder  # noqa: E402
from lmcache.v1.config import LMCacheEngineConfig  # noqa: E402

from lmcache_ascend.integration.vllm.kv_connectors import PagedKVConnector, PagedKVLayerwiseConnector  # noqa: E402
from lmcache_ascend.integration.vllm.patches import patch_lmcache03_engine, patch_local_cpu_allocator  # noqa: E402
from lmcache_ascend.memory import PinnedArenaAllocator  # noqa: E402

NL, NB, BS, NH, HS, MLA_D = 3, 64, 16, 2, 64, 96
CHUNK = 256
DTYPE = torch.bfloat16
INSTANCE = "lmcache-ascend-037"

# layout -> one layer's cache: a tensor, or a (K, V) pair.
LAYER_SHAPES = {
    "cpu": (NB, NH, BS, 2 * HS),            # vLLM CPU platform
    "cpu_nhd": (NB, BS, NH, 2 * HS),        # its token-major variant
    "flash_attn": (2, NB, BS, NH, HS),      # vLLM flash-attn
    "flash_attn_hnd": (2, NB, NH, BS, HS),  # stored heads-first, seen through vLLM's [2, NB, BS, NH, HS] view
    "flashinfer": (NB, 2, BS, NH, HS),
    "separate_kv": (NB, BS, NH, HS),        # vLLM-Ascend: K and V tensors per layer
    "mla": (NB, BS, MLA_D),
    # vLLM-Ascend DeepSeek MLA: a (latent, rope) tuple per layer, side by side in LMCache's MLA object.
    "mla_rope": ((NB, BS, 1, 64), (NB, BS, 1, MLA_D - 64)),
}
MLA_LAYOUTS = ("mla", "mla_rope")


def make_caches(layout: str, seed: int) -> list:
    g = torch.Generator().manual_seed(seed)

    def rand(shape=LAYER_SHAPES[layout]):
        t = torch.randn(shape, generator=g).to(DTYPE)
        return t.transpose(2, 3) if layout == "flash_attn_hnd" else t

    if layout == "mla_rope":
        return [tuple(rand(shape) for shape in LAYER_SHAPES[layout]) for _ in range(NL)]
    return [(rand(), rand()) if layout == "separate_kv" else rand() for _ in range(NL)]


def token_rows(layout: str, layer) -> torch.Tensor:
    """[planes, NB * BS, hidden]: each slot's K (and V) row, by plain torch indexing."""
    slots = NB * BS
    if layout == "mla":
        return layer.reshape(1, slots, MLA_D)
    if layout == "mla_rope":
        return torch.cat([plane.reshape(slots, -1) for plane in layer], dim=1).reshape(1, slots, MLA_D)
    if layout == "cpu":
        k, v = layer[..., :HS], layer[..., HS:]
        planes = [p.permute(0, 2, 1, 3) for p in (k, v)]
    elif layout == "cpu_nhd":
        planes = [layer[..., :HS], layer[..., HS:]]
    elif layout in ("flash_attn", "flash_attn_hnd"):
        planes = [layer[0], layer[1]]
    elif layout == "flashinfer":
        planes = [layer[:, 0], layer[:, 1]]
    else:  # separate_kv
        planes = list(layer)
    return torch.stack([p.reshape(slots, NH * HS) for p in planes])


def rows_of(layout: str, caches: list, slots: torch.Tensor) -> torch.Tensor:
    """[layers, planes, len(slots), hidden] of the given slots."""
    return torch.stack([token_rows(layout, layer)[:, slots] for layer in caches])


def wipe(caches: list) -> None:
    for layer in caches:
        for t in (layer if isinstance(layer, tuple) else (layer,)):
            t.zero_()


@pytest.fixture(scope="module")
def engines():
    """engine_for(mla, layerwise): LMCache 0.3's engine with our connector and pool, one per kind for
    the module (closing one waits for LMCache's 10 s stats thread)."""
    built = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LMCACHE_TRACK_USAGE", "false")  # no usage reports to stats.lmcache.ai
        patch_local_cpu_allocator.apply()

        def engine_for(mla: bool, layerwise: bool):
            key = f"{INSTANCE}-{'mla' if mla else 'kv'}-{'layerwise' if layerwise else 'chunks'}"
            if key not in built:
                kv_shape = (NL, 1, CHUNK, 1, MLA_D) if mla else (NL, 2, CHUNK, NH, HS)
                metadata = LMCacheEngineMetadata("test-model", 1, 0, "vllm", DTYPE, kv_shape, mla)
                # Layerwise retrieval in 0.3.7 reads its storage manager's async serializer, which only
                # exists with async loading on (what vLLM's adapter then sets up through post_init).
                config = LMCacheEngineConfig.from_defaults(
                    chunk_size=CHUNK, local_cpu=True, max_local_cpu_size=0.05, use_layerwise=layerwise,
                    enable_async_loading=layerwise, remote_url=None, lmcache_instance_id=key)
                if mla:  # as the patched adapter does: LMCache's MLA default would broadcast through CUDA
                    patch_lmcache03_engine.store_on_every_rank(config, "cpu")
                cls = PagedKVLayerwiseConnector if layerwise else PagedKVConnector
                connector = cls.from_metadata(metadata, device="cpu")
                engine = LMCacheEngineBuilder.get_or_create(key, config, metadata, connector, _no_broadcast,
                                                            _no_broadcast)
                assert engine.gpu_connector is connector
                if layerwise:
                    engine.post_init(async_lookup_server=_NoScheduler())
                assert isinstance(engine.storage_manager.allocator_backend.memory_allocator, PinnedArenaAllocator)
                built[key] = engine
            return built[key]

        yield engine_for
        for key, engine in built.items():
            LMCacheEngineBuilder.destroy(key)
            engine.storage_manager.loop.close()  # LMCache stops its event loop but leaves it open


def build(engines, layout: str, layerwise: bool = False):
    return engines(layout in MLA_LAYOUTS, layerwise)


class _NoScheduler:
    """The async lookup server's scheduler side, absent here: nothing in these tests prefetches."""

    def send_response_to_scheduler(self, lookup_id, retrieved_length):
        raise AssertionError(f"unexpected prefetch response for {lookup_id}")


def _no_broadcast(value, rank):
    raise AssertionError(f"a single-worker engine broadcast {type(value).__name__} from rank {rank}")


_requests = itertools.count()


def request(num_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Fresh tokens (no test sees another's chunks: LMCache 0.3.7's clear() keeps evictable chunks)
    and a random slot mapping (distinct slots across all blocks)."""
    g = torch.Generator().manual_seed(next(_requests))
    tokens = torch.randint(0, 32000, (num_tokens,), generator=g)
    slots = torch.randperm(NB * BS, generator=g)[:num_tokens]
    return tokens, slots


@pytest.mark.parametrize("layout", sorted(LAYER_SHAPES))
def test_store_wipe_retrieve_is_bit_exact(engines, layout):
    engine = build(engines, layout)
    caches = make_caches(layout, seed=1)
    tokens, slots = request(2 * CHUNK + 100)  # two full chunks and a partial one
    expected = rows_of(layout, caches, slots)

    engine.store(tokens, kvcaches=caches, slot_mapping=slots)
    assert engine.lookup(tokens) == len(tokens)
    wipe(caches)
    ret = engine.retrieve(tokens, kvcaches=caches, slot_mapping=slots)

    assert ret.all()
    assert torch.equal(rows_of(layout, caches, slots), expected)
    untouched = torch.ones(NB * BS, dtype=torch.bool)
    untouched[slots] = False
    assert not torch.stack([token_rows(layout, layer) for layer in caches])[:, :, untouched].any()


@pytest.mark.parametrize("layout", ["cpu", "flash_attn"])
def test_longer_request_gets_only_the_stored_prefix(engines, layout):
    engine = build(engines, layout)
    caches = make_caches(layout, seed=3)
    tokens, slots = request(3 * CHUNK)
    stored = 2 * CHUNK + 40  # the partial chunk's key covers tokens the longer request does not share
    expected = rows_of(layout, caches, slots)
    engine.store(tokens[:stored], kvcaches=caches, slot_mapping=slots[:stored])

    wipe(caches)
    ret = engine.retrieve(tokens, kvcaches=caches, slot_mapping=slots)

    assert ret[:2 * CHUNK].all() and not ret[2 * CHUNK:].any()
    got = rows_of(layout, caches, slots)
    assert torch.equal(got[:, :, :2 * CHUNK], expected[:, :, :2 * CHUNK])
    assert not got[:, :, 2 * CHUNK:].any()


def test_masked_store_and_masked_retrieve(engines):
    layout = "cpu"
    engine = build(engines, layout)
    caches = make_caches(layout, seed=5)
    tokens, slots = request(3 * CHUNK + 30)
    expected = rows_of(layout, caches, slots)

    # First the prefix, then the rest with the prefix masked out (how vLLM's adapter stores a grown request).
    engine.store(tokens[:CHUNK], kvcaches=caches, slot_mapping=slots[:CHUNK])
    assert engine.lookup(tokens) == CHUNK
    mask = torch.ones(len(tokens), dtype=torch.bool)
    mask[:CHUNK] = False
    engine.store(tokens, mask=mask, kvcaches=caches, slot_mapping=slots)
    assert engine.lookup(tokens) == len(tokens)

    wipe(caches)
    mask = torch.ones(len(tokens), dtype=torch.bool)
    mask[:2 * CHUNK] = False  # e.g. vLLM computed the first two chunks itself
    ret = engine.retrieve(tokens, mask=mask, kvcaches=caches, slot_mapping=slots)

    assert not ret[:2 * CHUNK].any() and ret[2 * CHUNK:].all()
    got = rows_of(layout, caches, slots)
    assert torch.equal(got[:, :, 2 * CHUNK:], expected[:, :, 2 * CHUNK:])
    assert not got[:, :, :2 * CHUNK].any()


@pytest.mark.parametrize("layout", ["cpu", "flash_attn", "separate_kv", "mla", "mla_rope"])
def test_layerwise_store_and_retrieve_generators(engines, layout):
    engine = build(engines, layout, layerwise=True)
    caches = make_caches(layout, seed=7)
    tokens, slots = request(2 * CHUNK + 70)  # layerwise keeps full chunks only
    full = 2 * CHUNK
    expected = rows_of(layout, caches, slots)

    store = engine.store_layer(tokens, kvcaches=caches, slot_mapping=slots, sync=True)
    assert sum(1 for _ in store) == NL + 1  # one step per layer (vLLM's save_kv_layer) + the final wait
    assert engine.lookup(tokens) == full

    wipe(caches)
    steps = list(engine.retrieve_layer(tokens, kvcaches=caches, slot_mapping=slots, sync=True))
    assert len(steps) == NL + 2
    assert int(steps[0]) == full  # the hit count comes with the first layer
    ret = steps[-1]
    assert ret[:full].all() and not ret[full:].any()
    got = rows_of(layout, caches, slots)
    assert torch.equal(got[:, :, :full], expected[:, :, :full])
    assert not got[:, :, full:].any()


def test_layout_the_shapes_cannot_tell_is_refused_and_nothing_is_stored(engines):
    engine = build(engines, "cpu")
    caches = [torch.ones(NB, BS * NH * HS, dtype=DTYPE) for _ in range(NL)]  # no head or K/V axes to read
    tokens, slots = request(CHUNK)
    with pytest.raises(ValueError, match=r"kvcaches: cannot tell the layout .*\[64, 2048\]"):
        engine.store(tokens, kvcaches=caches, slot_mapping=slots)
    assert engine.lookup(tokens) == 0


def test_mla_engine_stores_on_every_rank_unless_the_user_chose_first_rank_only(caplog):
    default = LMCacheEngineConfig.from_defaults(chunk_size=CHUNK, remote_url=None)
    with caplog.at_level("INFO", logger=patch_lmcache03_engine.__name__):
        patch_lmcache03_engine.store_on_every_rank(default, "npu")
    assert default.extra_config["save_only_first_rank"] is False
    assert "save_only_first_rank set to False" in caplog.text

    chosen = LMCacheEngineConfig.from_defaults(chunk_size=CHUNK, remote_url=None,
                                               extra_config={"save_only_first_rank": True})
    with pytest.raises(ValueError, match=r"save_only_first_rank=True .* set extra_config save_only_first_rank: false"):
        patch_lmcache03_engine.store_on_every_rank(chosen, "npu")
