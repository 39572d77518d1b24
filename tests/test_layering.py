"""The package's layers, checked over the source: every import of a pftray module (at module level or inside a
function) goes from a higher layer to a lower one, so there is no import cycle between the parts of the package
and, e.g., the privacy package stays maths that knows nothing of federated rounds or Ray.

The layers are :data:`LAYERS`, lowest first: a part may import only itself and parts of a strictly lower layer.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "pftray"

#: rank of each part of pftray (a sub-package or a top-level module)
LAYERS: dict[str, int] = {
    "errors": 0,
    "config": 1, "entry": 1, "faces": 1,
    "data": 2, "results": 2, "sweep_layout": 2,
    "model": 3, "metrics": 3, "analysis": 3,
    "privacy": 4,
    "fed": 5,
    "runtime": 6,
    "evaluation": 7,
    "summary": 8, "sweep": 8, "pipeline": 8,
    "tune": 9,
    "cli": 10,
    "__main__": 11,
}


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "pftray"


def import_edges(pkg: Path = PKG) -> dict[tuple[str, str], list[str]]:
    """``(from part, to part) -> ["file:line", ...]`` for every pftray import in ``pkg``."""
    edges: dict[tuple[str, str], list[str]] = defaultdict(list)
    for f in sorted(pkg.rglob("*.py")):
        rel = f.relative_to(pkg.parent)
        src = _part(".".join(rel.with_suffix("").parts))
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                if node.module == "pftray":
                    targets = [a.name for a in node.names]
                elif node.module.startswith("pftray."):
                    targets = [_part(node.module)]
            elif isinstance(node, ast.Import):
                targets = [_part(a.name) for a in node.names if a.name.startswith("pftray.")]
            for dst in targets:
                if dst != src:
                    edges[(src, dst)].append(f"{rel}:{node.lineno}")
    return edges


def layering_violations(edges, layers=LAYERS) -> list[str]:
    out = []
    for (src, dst), where in sorted(edges.items()):
        if src not in layers or dst not in layers:
            out.append(f"{src} -> {dst}: part without a layer in LAYERS ({where[0]})")
        elif layers[dst] >= layers[src]:
            out.append(f"{src} (layer {layers[src]}) imports {dst} (layer {layers[dst]}) at {', '.join(where)}")
    return out


def test_every_import_goes_down_the_layers():
    edges = import_edges()
    assert ("cli", "config") in edges and ("fed", "model") in edges  # the walk sees real imports
    assert layering_violations(edges) == []


def test_every_part_of_the_package_has_a_layer():
    parts = {p.stem if p.is_file() else p.name for p in PKG.iterdir()
             if (p.suffix == ".py" and p.stem != "__init__") or (p.is_dir() and (p / "__init__.py").exists())}
    assert parts - set(LAYERS) == set()


@pytest.mark.parametrize("planted, expect", [
    ({("privacy", "fed"): ["pftray/privacy/x.py:3"]}, "privacy (layer 4) imports fed (layer 5)"),
    ({("cli", "evaluation"): ["a:1"], ("evaluation", "cli"): ["b:2"]}, "evaluation (layer 7) imports cli"),
    ({("data", "newpart"): ["c:1"]}, "part without a layer"),
])
def test_a_planted_upward_import_or_cycle_is_reported(planted, expect):
    got = layering_violations(planted)
    assert any(expect in line for line in got), got


def test_every_exception_class_of_the_package_is_a_pftray_error():
    """One hierarchy (:mod:`pftray.errors`): each public exception class is an InputError (exit 2) or a
    RuntimeFailure (exit 1), so every entry point gives it the same exit code."""
    import importlib

    from pftray.errors import EXIT_INPUT, EXIT_RUNTIME, InputError, PftrayError, RuntimeFailure, exit_code

    found = {}
    for f in sorted(PKG.rglob("*.py")):
        for node in ast.parse(f.read_text()).body:
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_") and any(
                    isinstance(b, ast.Name) and (b.id.endswith(("Error", "Exception", "Abort", "Failure", "Missing"))
                                                 or b.id in ("Exception", "ValueError", "RuntimeError"))
                    for b in node.bases):
                mod = ".".join(f.relative_to(PKG.parent).with_suffix("").parts).removesuffix(".__init__")
                found[f"{mod}.{node.name}"] = getattr(importlib.import_module(mod), node.name)
    assert {"pftray.data.types.DataError", "pftray.runtime.ray_pool.TierError", "pftray.fed.server.RunError",
            "pftray.privacy.secagg.messages.SecAggAbort"} <= set(found)
    for name, cls in found.items():
        if name == "pftray.errors.PftrayError":
            continue  # the base itself
        assert issubclass(cls, PftrayError), name
        assert issubclass(cls, InputError) != issubclass(cls, RuntimeFailure), name
        expect = EXIT_INPUT if issubclass(cls, InputError) else EXIT_RUNTIME
        assert exit_code(cls.__new__(cls)) == expect, name
