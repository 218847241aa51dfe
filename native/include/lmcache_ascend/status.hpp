// Result of a native call. Native code never throws across the binding boundary: it returns a
// Status whose message names the argument, the value and the fix, and the binding maps the code
// to a Python exception type.
#pragma once

#include <string>
#include <utility>

namespace lmcache_ascend {

enum class StatusCode : int {
  kOk = 0,
  kInvalidArgument = 1,  // -> ValueError
  kOutOfRange = 2,       // -> IndexError
  kOutOfMemory = 3,      // -> MemoryError
  kRuntimeError = 4,     // -> RuntimeError
};

struct Status {
  StatusCode code = StatusCode::kOk;
  std::string message;

  bool ok() const { return code == StatusCode::kOk; }
  static Status Ok() { return {}; }
  static Status Error(StatusCode c, std::string msg) { return {c, std::move(msg)}; }
};

}  // namespace lmcache_ascend
