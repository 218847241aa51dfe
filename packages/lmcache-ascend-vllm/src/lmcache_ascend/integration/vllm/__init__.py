"""vLLM integration: the LMCacheAscendConnectorV1Dynamic KV connector and what it needs.

vLLM loads `lmcache_ascend.integration.vllm.lmcache_ascend_connector_v1` by its module path.
"""
