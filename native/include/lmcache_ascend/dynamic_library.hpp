// A shared library opened at run time: the project's one wrapper of dlopen / dlsym / dlinfo, used
// for the CANN runtime (ascend_registrar.cpp) and for liblmcache_ascend_npu.so (npu_backend.cpp),
// which the always-built host library must never link against.
#pragma once

#include <dlfcn.h>
#include <link.h>

#include <string>
#include <utility>

namespace lmcache_ascend {

class DynamicLibrary {
 public:
  DynamicLibrary() = default;
  DynamicLibrary(const DynamicLibrary&) = delete;
  DynamicLibrary& operator=(const DynamicLibrary&) = delete;
  DynamicLibrary(DynamicLibrary&& o) noexcept { *this = std::move(o); }
  DynamicLibrary& operator=(DynamicLibrary&& o) noexcept {
    std::swap(handle_, o.handle_);
    std::swap(path_, o.path_);
    return *this;
  }
  ~DynamicLibrary() {
    if (handle_) dlclose(handle_);
  }

  // dlopen(path, RTLD_NOW | RTLD_LOCAL | extra_flags), e.g. RTLD_NOLOAD to take only a copy already
  // in the process. On failure the result is empty and *error is dlerror's text (it names the path).
  static DynamicLibrary open(const std::string& path, int extra_flags, std::string* error) {
    DynamicLibrary lib;
    dlerror();  // clear a stale message
    lib.handle_ = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL | extra_flags);
    if (lib.handle_ == nullptr) {
      const char* why = dlerror();
      if (error) *error = why ? why : path + ": not loadable";
      return lib;
    }
    link_map* map = nullptr;  // the file the loader actually mapped (symlinks and search paths resolved)
    const bool named = dlinfo(lib.handle_, RTLD_DI_LINKMAP, &map) == 0 && map && map->l_name && map->l_name[0];
    lib.path_ = named ? map->l_name : path;
    return lib;
  }

  explicit operator bool() const { return handle_ != nullptr; }
  const std::string& path() const { return path_; }

  template <typename Fn>
  Fn symbol(const char* name) const {
    return handle_ ? reinterpret_cast<Fn>(dlsym(handle_, name)) : nullptr;
  }

  // Keeps the library mapped for the rest of the process: code from it may still run while static
  // objects are destroyed at exit.
  void keep_loaded() { handle_ = nullptr; }

 private:
  void* handle_ = nullptr;
  std::string path_;
};

}  // namespace lmcache_ascend
