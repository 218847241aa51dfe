"""LMCache 0.3.x surface: the names and signatures of LMCache 0.3.7's `lmcache.c_ops`.

0.3.x passes booleans where 0.5 passes enums: `direction` True = paged -> LMCache (store),
False = LMCache -> paged (retrieve) -- the same integers as 0.5's TransferDirection D2H / H2D;
`use_mla` picks the MLA layout; `vllm_two_major` tells flash-attn ([2, NB, ...]) from flashinfer
([NB, 2, ...]). Every op forwards to `lmcache_ascend.ops`, which owns the semantics.
"""

from lmcache_ascend import memory as _memory
from lmcache_ascend import ops as _ops
from lmcache_ascend.engine_formats import FORMAT_VALUES as _FORMAT

# The EngineKVFormats standing for 0.3.x's layouts.
_FLASH_ATTN, _FLASHINFER = _FORMAT["NL_X_TWO_NB_BS_NH_HS"], _FORMAT["NL_X_NB_TWO_BS_NH_HS"]
_MLA = _FORMAT["NL_X_NB_BS_HS"]
_MLA_PLANES = _FORMAT["NL_X_NP_X_NB_BS_ONE_HS"]  # MLA layers as (latent, rope[, indexer key]) tuples (vllm-ascend DeepSeek)


def _mla_format(key_value_ptrs) -> int:
    """MLA caches come as one [NB, BS, D] tensor per layer, or (vllm-ascend) as a tuple of planes."""
    if isinstance(key_value_ptrs, (list, tuple)) and key_value_ptrs and isinstance(key_value_ptrs[0], (list, tuple)):
        return _MLA_PLANES
    return _MLA


def _direction(direction) -> int:
    if not isinstance(direction, (bool, int)) or int(direction) not in (0, 1):
        raise ValueError(f"direction={direction!r} must be a bool: True = paged -> LMCache, "
                         "False = LMCache -> paged")
    return int(direction)


def multi_layer_kv_transfer(key_value, key_value_ptrs, slot_mapping, paged_memory_device,
                            page_buffer_size: int, direction: bool, use_mla: bool) -> None:
    """All layers of one chunk; paged layers are [2, NB, BS, NH, HS] (or, with use_mla, [NB, BS, D]
    or a (latent, rope[, indexer key]) tuple of [NB, BS, (1,) W_i] filling the columns of key_value
    [1, L, T, sum of W_i] in that order)."""
    _ops.multi_layer_kv_transfer(
        key_value, key_value_ptrs, slot_mapping, paged_memory_device, page_buffer_size,
        _direction(direction), _mla_format(key_value_ptrs) if use_mla else _FLASH_ATTN,
        # 0.3.x addresses a layer as [2, page_buffer_size, hidden]: one block of all slots.
        block_size=page_buffer_size,
    )


def multi_layer_kv_transfer_unilateral(key_value, key_value_ptrs, slot_mapping, paged_memory_device,
                                       page_buffer_size: int, direction: bool, use_mla: bool) -> None:
    """SGLang layout: key_value_ptrs holds the K layers then the V layers, each [page_buffer_size, hidden]."""
    _ops.multi_layer_kv_transfer_unilateral(key_value, key_value_ptrs, slot_mapping, paged_memory_device,
                                            page_buffer_size, _direction(direction), _MLA if use_mla else _FLASH_ATTN)


def single_layer_kv_transfer(lmc_key_value_cache, vllm_key_value_cache, slot_mapping, direction: bool,
                             token_major: bool = False, vllm_two_major: bool = False) -> None:
    """One layer; lmc is [T, 2, D] if token_major else [2, T, D]; vLLM's layer is flash-attn
    [2, NB, BS, NH, HS] if vllm_two_major else flashinfer [NB, 2, BS, NH, HS]."""
    _ops.single_layer_kv_transfer(lmc_key_value_cache, vllm_key_value_cache, slot_mapping,
                                  _direction(direction), _FLASH_ATTN if vllm_two_major else _FLASHINFER,
                                  token_major)


load_and_reshape_flash = _ops.load_and_reshape_flash
reshape_and_cache_back_flash = _ops.reshape_and_cache_back_flash


# Pinned host memory, with the signatures LMCache calls (alloc_fn(size, 0), free_fn(ptr, ...)).
alloc_pinned_ptr = _memory.alloc_pinned_ptr
free_pinned_ptr = _memory.free_pinned_ptr
alloc_pinned_numa_ptr = _memory.alloc_pinned_numa_ptr
free_pinned_numa_ptr = _memory.free_pinned_numa_ptr
