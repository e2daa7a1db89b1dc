"""The README's examples work: its Python blocks run, and its isnet commands exist with the options shown."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import pytest
import torch

from isnet.cli import build_parser

README = Path(__file__).resolve().parents[1] / "README.md"

# The README's size knobs, each with the small value the test runs it at (the code around them is unchanged).
SMALL = {
    "x = torch.rand(4, 3, 224, 224)": "x = torch.rand(4, 3, 32, 32)",
    "N, EPOCHS, PLAIN = 640, 30, 2": "N, EPOCHS, PLAIN = 64, 2, 1",
}


def blocks(language: str, text: str | None = None) -> list[str]:
    """The fenced code blocks of one language, in the order of the page."""
    text = README.read_text() if text is None else text
    return re.findall(rf"^```{language}\n(.*?)^```", text, re.S | re.M)


def shell_commands(text: str | None = None) -> list[list[str]]:
    """The arguments of every `isnet ...` line of the bash blocks (continuations joined, comments dropped)."""
    found = []
    for block in blocks("bash", text):
        for line in re.sub(r"\\\n", " ", block).splitlines():
            words = shlex.split(line, comments=True)
            if words[:1] == ["isnet"]:
                found.append(words[1:])
    return found


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The sub-command parsers of a parser, by name (empty for a parser without sub-commands)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def test_helpers_read_blocks_and_commands():
    text = ("```bash\nisnet data bg-digits --out d   # comment\nisnet train --a 1 \\\n   --b 2\npip install .\n```\n"
            "```python\nx = 1\n```\n")
    assert shell_commands(text) == [["data", "bg-digits", "--out", "d"], ["train", "--a", "1", "--b", "2"]]
    assert blocks("python", text) == ["x = 1\n"]


@pytest.fixture
def one_thread():
    """One torch thread: on a machine shared with other jobs, more threads only wait for each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_python_blocks_run_in_order(one_thread):
    code = blocks("python")
    assert len(code) >= 2
    for knob in SMALL:
        assert "\n".join(code).count(knob) == 1, f"README.md no longer has the line {knob!r}: update SMALL"
    matplotlib.use("Agg")                    # plot_heatmap draws without a display
    torch.manual_seed(0)
    namespace: dict = {"__name__": "readme"}
    explained = None
    for number, block in enumerate(code, 1):
        for knob, small in SMALL.items():
            block = block.replace(knob, small)
        exec(compile(block, f"README.md, python block {number}", "exec"), namespace)  # a user runs them in turn
        if explained is None and "gxi" in namespace:
            explained = dict(namespace)
    plt.close("all")

    # the explain block: heatmaps of the input's shape, and eps 0 without Z^B is gradient x input
    assert explained is not None, "README.md has no explain example (a block that defines gxi)"
    x, model = explained["x"], explained["model"]
    assert explained["zplus"].shape == explained["top"].shape == (4, 3, 32, 32)
    assert explained["rel"].layers["layer3"].shape[0] == 4
    leaf = x.clone().requires_grad_()
    model(leaf)[torch.arange(4), torch.tensor([1, 2, 3, 4])].sum().backward()
    torch.testing.assert_close(explained["gxi"], leaf.grad * x, rtol=1e-4, atol=1e-6)
    # the training block: the ISNet continues the plain classifier and classifies the 64 images
    assert namespace["logits"].shape == (64, 10) and torch.isfinite(namespace["logits"]).all()
    assert namespace["net"].model is namespace["plain"].model   # the warm start continues the plain one
    # C1 from the plain classifier's relevance totals (isnet.calibrate's rule, recomputed here)
    totals = namespace["heatmaps"].detach().abs().sum((2, 3, 4)).double().flatten()
    mean, std = totals.mean().item(), totals.std().item()
    assert 0 < namespace["C1"] < namespace["C2"]
    assert namespace["C1"] == pytest.approx(max(mean / 5, mean - 3 * std), rel=1e-9)
    options = namespace["criterion"].heatmap_options
    assert (options["C1"], options["C2"]) == (namespace["C1"], namespace["C2"])


def test_shell_commands_parse():
    commands = shell_commands()
    assert len(commands) >= 5
    parser = build_parser()
    for argv in commands:
        try:
            parser.parse_args(argv)
        except SystemExit:
            pytest.fail(f"README.md: `isnet {shlex.join(argv)}` is not a valid isnet command line")


def test_commands_named_in_prose_exist():
    parser = build_parser()
    top = subcommands(parser)
    prose = re.sub(r"^```.*?^```", "", README.read_text(), flags=re.S | re.M)
    named = re.findall(r"`isnet ([a-z][a-z-]*)(?: ([a-z][a-z-]*))?", prose)
    assert {"explain", "train", "segment", "audit", "bench"} <= {first for first, _ in named}
    for first, second in named:
        assert first in top, f"README.md names `isnet {first}`, which is not a command"
        nested = subcommands(top[first])
        if second and nested:
            assert second in nested, f"README.md names `isnet {first} {second}`, which is not a command"
