"""The core's patches of LMCache, one per file, each with why / how / versions / when to remove.
Applied by lmcache_ascend.lmcache_device (LMCache's device-plugin entry point), never on import."""
