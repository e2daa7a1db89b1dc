"""Shared fixtures: no downloads (``ISNET_OFFLINE``); the reference tensors and the small networks they were
computed with; :func:`require`, the import of a test dependency; :func:`digest`, checksums of a user's files."""

from __future__ import annotations

import hashlib
import importlib
import os
from pathlib import Path
from types import ModuleType

import pytest
import torch
from torch import nn

REFERENCE = Path(__file__).parent / "data" / "lrpflex_reference.pt"
STRICT = os.environ.get("ISNET_STRICT_REFERENCES") == "1"
"""Set by ``make test``: a test dependency that is missing fails the tests that need it instead of skipping them."""


def require(package: str) -> ModuleType:
    """Import a test dependency (the ``[test]`` extra, and lxt): ``pytest.importorskip``, except that under
    ``ISNET_STRICT_REFERENCES=1`` a missing package fails the test (or, at module level, the collection), so a
    reference comparison cannot pass by being skipped."""
    if not STRICT:
        return pytest.importorskip(package)
    try:
        return importlib.import_module(package)
    except ImportError as err:
        pytest.fail(f"test dependency {package} is missing ({err}) under ISNET_STRICT_REFERENCES=1; `make install` "
                    "installs the test dependencies", pytrace=False)


def nest(flat: dict) -> dict:
    """``{"a/b/c": v}`` -> ``{"a": {"b": {"c": v}}}``."""
    out: dict = {}
    for key, value in flat.items():
        node = out
        *parents, leaf = key.split("/")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test downloads pretrained weights: a test of the download serves a local file and unsets this."""
    monkeypatch.setenv("ISNET_OFFLINE", "1")


@pytest.fixture(scope="session")
def reference() -> dict:
    return nest(torch.load(REFERENCE, weights_only=False))


def float_state(state: dict) -> dict:
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def seqcnn() -> nn.Sequential:
    """The reference's small sequential CNN (5 classes, 32x32 inputs)."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(1024, 32), nn.ReLU(), nn.Linear(32, 5),
    )


def ref_resnet() -> nn.Module:
    from torchvision.models.resnet import BasicBlock, ResNet

    return ResNet(BasicBlock, [1, 1, 1, 1], num_classes=4)


def digest(*roots: Path) -> dict[str, str]:
    """md5 of every file under the roots (a file root counts as itself)."""
    out = {}
    for root in roots:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        out.update({str(p): hashlib.md5(p.read_bytes()).hexdigest() for p in files})
    return out
