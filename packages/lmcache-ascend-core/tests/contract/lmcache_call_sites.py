"""Read an installed LMCache release's own Python sources (ast, nothing imported) for the native ops
it uses: every `lmc_ops.X(...)` / `c_ops.X` of LMCache 0.3.x's compiled `lmcache.c_ops`, and every
`device_ops.X(...)` of LMCache 0.5.x's device-ops layer. LMCache 0.3.x's c_ops is CUDA-linked and
does not import here, so its call sites are the only record of the surface it needs."""
from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

C_OPS_MODULE = "lmcache.c_ops"


@dataclass(frozen=True)
class Use:
    """One use of a native op in LMCache's sources: a call (with its argument shape) or a reference."""

    path: str
    line: int
    name: str
    is_call: bool
    positional: int = 0
    keywords: tuple[str, ...] = ()
    starred: bool = False  # *args / **kwargs at the call: only the name can be checked

    def where(self) -> str:
        return f"lmcache/{self.path}:{self.line}"

    def describe(self) -> str:
        if not self.is_call:
            return f"{self.where()}: reference to {self.name}"
        kw = ", ".join(f"{k}=" for k in self.keywords)
        return f"{self.where()}: {self.name}({self.positional} positional{', ' + kw if kw else ''})"


def lmcache_release() -> tuple[str, Path] | None:
    """(version, package directory) of the installed LMCache, found without importing it."""
    spec = importlib.util.find_spec("lmcache")
    if spec is None or not spec.submodule_search_locations:
        return None
    return importlib.metadata.version("lmcache"), Path(list(spec.submodule_search_locations)[0])


def generation(version: str) -> int:
    major, minor = (int(x) for x in version.split(".")[:2])
    return 3 if (major, minor) < (0, 5) else 5


def _sources(root: Path) -> Iterator[tuple[str, ast.Module]]:
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if "tests" in rel.parts:
            continue
        yield str(rel), ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _call_use(rel: str, node: ast.Call, name: str) -> Use:
    starred = any(isinstance(a, ast.Starred) for a in node.args) or any(k.arg is None for k in node.keywords)
    return Use(rel, node.lineno, name, True, sum(not isinstance(a, ast.Starred) for a in node.args),
               tuple(k.arg for k in node.keywords if k.arg is not None), starred)


def c_ops_uses(root: Path) -> list[Use]:
    """Every use of lmcache.c_ops in LMCache's sources, whatever name it was imported under."""
    uses: list[Use] = []
    for rel, tree in _sources(root):
        module_aliases: set[str] = set()   # import lmcache.c_ops as lmc_ops / from lmcache import c_ops
        function_aliases: dict[str, str] = {}  # from lmcache.c_ops import get_gpu_pci_bus_id [as x]
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                module_aliases.update(a.asname for a in node.names if a.name == C_OPS_MODULE and a.asname)
            elif isinstance(node, ast.ImportFrom) and node.module == "lmcache":
                module_aliases.update(a.asname or a.name for a in node.names if a.name == "c_ops")
            elif isinstance(node, ast.ImportFrom) and node.module == C_OPS_MODULE:
                for a in node.names:
                    function_aliases[a.asname or a.name] = a.name
                    uses.append(Use(rel, node.lineno, a.name, False))
        if not module_aliases and not function_aliases:
            continue
        called: set[int] = set()
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id in module_aliases:
                uses.append(_call_use(rel, node, func.attr))
                called.add(id(func))
            elif isinstance(func, ast.Name) and func.id in function_aliases:
                uses.append(_call_use(rel, node, function_aliases[func.id]))
        for node in ast.walk(tree):  # ops handed over as callables (alloc_fn=lmc_ops.alloc_pinned_ptr)
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in module_aliases and id(node) not in called):
                uses.append(Use(rel, node.lineno, node.attr, False))
    return uses


def device_ops_calls(root: Path) -> list[Use]:
    """Every `device_ops.X(...)` / `<obj>.device_ops.X(...)` call in LMCache 0.5.x's sources."""
    uses = []
    for rel, tree in _sources(root):
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            receiver = node.func.value
            if ((isinstance(receiver, ast.Name) and receiver.id == "device_ops")
                    or (isinstance(receiver, ast.Attribute) and receiver.attr == "device_ops")):
                uses.append(_call_use(rel, node, node.func.attr))
    return uses


def binding_problem(fn: Callable, use: Use) -> str | None:
    """Why LMCache's call `use` would not bind to `fn`'s parameters (None when it binds)."""
    if not use.is_call or use.starred:
        return None
    try:
        inspect.signature(fn).bind(*range(use.positional), **{k: None for k in use.keywords})
    except TypeError as exc:
        return f"{use.describe()} does not fit {use.name}{inspect.signature(fn)}: {exc}"
    return None


def override_problem(ours: Callable, reference: Callable, name: str) -> str | None:
    """Why `ours` cannot stand in for LMCache's `reference` (None when it can): every parameter of
    the reference, in order and by name, with a default where the reference has one; anything extra
    of ours must have a default."""
    ref_all = [p for p in inspect.signature(reference).parameters.values() if p.name != "self"]
    mine_all = [p for p in inspect.signature(ours).parameters.values() if p.name != "self"]
    if any(p.kind == p.VAR_POSITIONAL for p in ref_all):
        return None  # a pass-through (DeviceOps' *args forwarding): the call sites decide (binding_problem)
    if any(p.kind == p.VAR_KEYWORD for p in ref_all) and not any(q.kind == q.VAR_KEYWORD for q in mine_all):
        return f"{name}: upstream {name}{inspect.signature(reference)} takes **kwargs, ours " \
               f"{inspect.signature(ours)} does not"
    ref = [p for p in ref_all if p.kind != p.VAR_KEYWORD]
    mine = [q for q in mine_all if q.kind != q.VAR_KEYWORD]
    for i, p in enumerate(ref):
        if i >= len(mine):
            if any(q.kind == q.VAR_POSITIONAL for q in mine):
                return None
            return f"{name}: upstream {name}{inspect.signature(reference)} has parameter {p.name!r}, ours " \
                   f"{inspect.signature(ours)} stops before it"
        if mine[i].name != p.name:
            return f"{name}: parameter {i} is {mine[i].name!r} here, {p.name!r} in upstream " \
                   f"{name}{inspect.signature(reference)}"
        if p.default is not p.empty and mine[i].default is mine[i].empty:
            return f"{name}: upstream {p.name} has a default ({p.default!r}), ours is required"
    for q in mine[len(ref):]:
        if q.default is q.empty and q.kind not in (q.VAR_POSITIONAL, q.VAR_KEYWORD):
            return f"{name}: our extra parameter {q.name!r} is required; upstream callers never pass it"
    return None
