// The checks every backend runs before a KV transfer moves a byte: descriptor, buffer extents and
// every slot that will move. The CPU backend runs them inside transfer_kv; the NPU backend runs
// them on a host copy of the slot mapping before it launches a kernel.
#pragma once

#include <cstdint>

#include "lmcache_ascend/status.hpp"
#include "lmcache_ascend/transfer.hpp"

namespace lmcache_ascend {

// OK when transfer_kv(request) would move bytes without touching anything outside the paged cache
// and the chunks; otherwise the error transfer_kv would return. request.slots must be host memory.
Status validate_transfer_request(const TransferRequest& request);

// Bytes from chunk `c`'s base that a transfer may touch (0 for an empty chunk), computed without
// integer overflow: kOutOfRange naming the field when the shape or strides do not fit in int64.
Status chunk_bytes_touched(const TransferRequest& request, int64_t c, int64_t* bytes);

}  // namespace lmcache_ascend
