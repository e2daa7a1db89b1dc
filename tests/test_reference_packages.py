"""Reference tests cannot pass by being skipped: ``make test`` installs their packages and fails when one is missing."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"


def _pytest(test_file: Path, strict: bool) -> subprocess.CompletedProcess:
    env = {**os.environ, "ISNET_STRICT_REFERENCES": "1" if strict else "0"}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir",
                           str(test_file.parent), str(test_file)], capture_output=True, text=True, timeout=300,
                          env=env, cwd=test_file.parent)


def test_a_missing_reference_package_skips_or_under_make_test_fails(tmp_path):
    test_file = tmp_path / "test_probe.py"
    test_file.write_text(f"import sys\nsys.path.insert(0, {str(TESTS)!r})\nfrom conftest import require\n\n\n"
                         "def test_needs_it():\n    require('isnet_no_such_package')\n")
    lenient, strict = _pytest(test_file, strict=False), _pytest(test_file, strict=True)
    assert lenient.returncode == 0 and "1 skipped" in lenient.stdout, lenient.stdout[-2000:]
    assert strict.returncode == 1 and "1 failed" in strict.stdout, strict.stdout[-2000:]
    assert "isnet_no_such_package is missing" in strict.stdout


def test_test_dependencies_are_installed_by_make_test_and_imported_through_require():
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^test:.*\n(\t.*\n)*\tISNET_STRICT_REFERENCES=1 \S*python -m pytest", makefile, re.M)
    assert '-e ".[test]"' in makefile and re.search(r"pip install .*--no-deps \"lxt", makefile)
    extra = re.findall(r'"([^"]+)"', re.search(r"^test = \[(.*?)\]", (ROOT / "pyproject.toml").read_text(),
                                                re.M | re.S).group(1))
    installed = {re.split(r"[<>=!~\[ ]", spec)[0] for spec in extra} | {"lxt"}
    distribution = {"mlflow": "mlflow-skinny"}  # the import name where it differs
    required = set()
    for path in TESTS.glob("test_*.py"):
        text = path.read_text()
        assert "importorskip" not in text or path.name == Path(__file__).name, \
            f"{path.name}: import test dependencies with conftest.require, which make test turns into failures"
        required |= set(re.findall(r"require\(\"([\w.]+)\"\)", text))
    required |= {"tensorboard", "mlflow"}  # test_cli_train requires its --logger parameter
    assert required and all(distribution.get(name, name) in installed for name in required), (required, installed)
