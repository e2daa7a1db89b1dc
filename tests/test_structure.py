"""The package's shape: imports point one way, modules stay small, light paths stay light."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import torch

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "isnet"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """isnet modules imported anywhere in the file (also inside functions and TYPE_CHECKING blocks)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def test_import_graph_has_no_cycle():
    modules = _modules()
    graph = {name: _imports(name, path, set(modules)) for name, path in modules.items()}
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt] if nxt in stack else [node, nxt]
                raise AssertionError(f"import cycle: {' -> '.join(cycle)}")
            if nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert graph["isnet.objectives.registry"] >= {"isnet.config", "isnet.loss", "isnet.masks"}  # the walk sees edges


def test_modules_stay_small():
    sizes = {name: len(path.read_text().splitlines()) for name, path in _modules().items()}
    assert max(sizes.values()) <= 400, sorted(sizes.items(), key=lambda kv: -kv[1])[:3]


def _run(code: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_explaining_and_loading_a_run_do_not_import_lightning(tmp_path):
    from isnet.models import build_model

    run = tmp_path / "run"
    run.mkdir()
    config = {"arch": "small_cnn", "num_classes": 3, "image_size": 16, "objective": "masked", "epsilon": 0.01,
              "zb": True, "classes": ["a", "b", "c"]}
    (run / "config.json").write_text(json.dumps(config))
    torch.save(build_model("small_cnn", 3, image_size=16).state_dict(), run / "model.pt")
    seen = _run(f"""
import json, sys, torch, isnet
from isnet.checkpoints import classifier_input, explainer, load_classifier
from isnet.evaluate import predict_batch
model, config = load_classifier({str(run)!r})
x, masks = torch.rand(2, 3, 16, 16), torch.ones(2, 1, 16, 16)
heat = isnet.explain(model, x, "argmax")
logits, maps = predict_batch(model, explainer(model, config), config, x, masks)
print(json.dumps({{"lightning": any(m.split(".")[0] in ("lightning", "pytorch_lightning") for m in sys.modules),
                  "shape": list(maps.shape)}}))
""")
    assert seen == {"lightning": False, "shape": [2, 3, 16, 16]}

