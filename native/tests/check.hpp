// Tiny assertion helpers for the native test programs: each CHECK counts, failures print where and
// why, and main returns finish(): 0 when every check passed, 1 otherwise.
#pragma once

#include <cstdio>
#include <string>

namespace lmcache_ascend_test {

inline int& checks() {
  static int n = 0;
  return n;
}
inline int& failures() {
  static int n = 0;
  return n;
}

inline bool record(bool ok, const char* expr, const char* file, int line, const std::string& detail = {}) {
  ++checks();
  if (!ok) {
    ++failures();
    std::fprintf(stderr, "%s:%d: CHECK failed: %s %s\n", file, line, expr, detail.c_str());
  }
  return ok;
}

inline int finish(const char* program) {
  std::printf("%s: %d checks, %d failed\n", program, checks(), failures());
  return failures() == 0 ? 0 : 1;
}

}  // namespace lmcache_ascend_test

#define CHECK(cond) ::lmcache_ascend_test::record(static_cast<bool>(cond), #cond, __FILE__, __LINE__)
#define CHECK_EQ(a, b)                                                                                  \
  ::lmcache_ascend_test::record((a) == (b), #a " == " #b, __FILE__, __LINE__,                            \
                                "(" + std::to_string(a) + " vs " + std::to_string(b) + ")")
#define CHECK_CONTAINS(text, part)                                                                      \
  ::lmcache_ascend_test::record(std::string(text).find(part) != std::string::npos,                      \
                                "'" #part "' in " #text, __FILE__, __LINE__, "(message: " + std::string(text) + ")")
