"""What a background-bias benchmark is: the interface BG-Digits and BG-CXR implement.

A benchmark trains every method (:data:`~isnet.bench.presets.METHODS`) with several seeds on
its data and judges each classifier on its test sets. The shared code (:mod:`isnet.bench.run`:
data, grid, evaluation, results; :mod:`isnet.bench.report`: the files) does the same steps
for every benchmark and asks a :class:`Benchmark` only for what differs:

* **settings and presets**: a dataclass of the :class:`~isnet.bench.presets.BenchSettings`
  fields (plus the benchmark's own), and the ``--quick`` and full presets;
* **data and test sets**: the training data on disk and the test sets in memory
  (:class:`TestSet`), with what identifies them in a stored run's test key;
* **measurements**: the metrics of one classifier on one test set, the (test set, metric)
  pairs compared seed by seed, and one line summarising a finished run;
* **report**: its tables, findings, setup paragraph, figures and the sections of
  ``report.html`` between the setup and the background audit.

A third benchmark is one module with a subclass of :class:`Benchmark` and one instance of it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from matplotlib.figure import Figure
from torch import Tensor, nn

from .presets import BenchSettings, bench_config

__all__ = ["Benchmark", "Records", "Section", "Settings", "TestSet", "Tests"]

Section = tuple[str, list]
"""A ``report.html`` section: its title and items (text, tables as row dicts, figures)."""
Records = Mapping[str, Sequence[Mapping[str, Any]]]
"""Method -> the stored records of its seeds (:func:`isnet.bench.grid.run_grid`)."""


class TestSet(Protocol):
    """One test set in memory: a dataclass holding ``images`` (N, C, H, W) in [0, 1], foreground ``masks``
    (N, 1, H, W) and ``labels`` (N,); its other per-pixel maps (N, c, H, W) are resized with the masks
    (:func:`isnet.bench.run.at_training_size`)."""

    images: Tensor
    masks: Tensor
    labels: Tensor


class ReportFunctions(Protocol):
    """A benchmark's report module (``isnet.bench.NAME.report``): the texts that depend on its test sets."""

    def format_table(self, results: Mapping[str, Any]) -> str: ...

    def results_markdown(self, cfg: Any, results: Mapping[str, Any]) -> str: ...

    def findings(self, results: Mapping[str, Any]) -> list[str]: ...

    def setup(self, cfg: Any, results: Mapping[str, Any]) -> str: ...


Settings = TypeVar("Settings", bound=BenchSettings)
Tests = TypeVar("Tests", bound=TestSet)
"""A benchmark's test-set type, and (``Settings``) its settings type."""

_ATTRIBUTES = ("name", "dataset", "settings_type", "quick", "full", "test_sets", "metrics", "compared",
               "segmenter_input", "report")


class Benchmark(ABC, Generic[Settings, Tests]):
    """One background-bias benchmark (module docstring); subclasses set the class attributes below.

    Attributes
    ----------
    name : str
        The command, ``isnet bench NAME``; progress lines start with ``bench NAME``.
    dataset : str
        The data's name in messages (``BG-Digits``).
    settings_type : type
        The settings dataclass; ``quick`` and ``full`` are its presets (field -> value).
    test_sets : tuple of str
        The test sets every run is judged on, in table order (the heatmap figure's columns).
    metrics : tuple of str
        What :meth:`evaluate_classifier` returns per test set and the results aggregate over seeds.
    compared : tuple of (str, str)
        The (test set, metric) pairs of the paired comparisons (:mod:`isnet.bench.paired`).
    segmenter_input : (int, int)
        The ``seg-classify`` segmenter's kept regions and input channels
        (:func:`isnet.bench.segmenter.prepare_segmenter`).
    report : ReportFunctions
        The benchmark's report module; the table, ``results.md``, the findings and the setup
        paragraph come from it.
    example_note : str
        Added to the heatmap section's caption after "from each test set".
    title_size : int or None
        Font size of the heatmap figure's column titles (None: the figure's default).
    """

    name: str
    dataset: str
    settings_type: type[Settings]
    quick: Mapping[str, Any]
    full: Mapping[str, Any]
    test_sets: tuple[str, ...]
    metrics: tuple[str, ...]
    compared: tuple[tuple[str, str], ...]
    segmenter_input: tuple[int, int]
    report: ReportFunctions
    example_note: str = ""
    title_size: int | None = None

    def __init__(self) -> None:
        missing = [a for a in _ATTRIBUTES if not hasattr(self, a)]
        if missing:
            raise TypeError(f"benchmark {type(self).__name__} does not set {missing}; see isnet.bench.interface")

    @property
    def label(self) -> str:
        """The prefix of progress lines and the grid's training processes: ``bench NAME``."""
        return f"bench {self.name}"

    def settings(self, quick: bool, given: Mapping[str, Any], options: Sequence[str]) -> Settings:
        """The settings of a run: the quick or full preset, overridden by the ``given`` fields that are not None
        (the command's options), with the ``--set`` ``options`` as training options."""
        return bench_config(self.settings_type, self.quick if quick else self.full, given, options)

    # data and test sets

    @abstractmethod
    def prepare_data(self, root: Path, cfg: Settings) -> dict[str, Path]:
        """Write the data under ``root`` (or reuse it when made with the same settings; refuse other data there);
        the ``train`` and ``val`` roots."""

    @abstractmethod
    def make_test_sets(self, cfg: Settings) -> dict[str, Tests]:
        """The test sets in memory, by name: :attr:`test_sets` and any extra ones."""

    @abstractmethod
    def ready(self, cfg: Settings) -> str:
        """The progress line once the data is written (sizes and variant)."""

    @abstractmethod
    def test_key(self, cfg: Settings) -> dict[str, Any]:
        """What identifies the test data in a stored run's test key (:func:`isnet.bench.grid.run_keys`); when it
        changes, stored networks are evaluated again, not trained again."""

    def earlier_test_keys(self, cfg: Settings) -> list[dict[str, Any]]:
        """:meth:`test_key` as earlier isnet versions wrote it, newest first (none by default): runs they stored
        under one key are then evaluated on today's test data instead of trained again."""
        return []

    # measurements

    @abstractmethod
    def evaluate_classifier(self, model: nn.Module, config: Mapping[str, Any], test: Tests, *,
                            raw_input: bool = False) -> dict[str, Any]:
        """:attr:`metrics` (and ``n``) of a trained classifier on one test set; masked-input methods see
        ``x * mask`` unless ``raw_input``."""

    @abstractmethod
    def describe(self, record: Mapping[str, Any]) -> str:
        """A finished run's evaluation in one progress line."""

    def complete_aggregate(self, methods: dict[str, dict], records: Records) -> None:
        """Add per-seed entries to the aggregated ``results["methods"]`` (default: none)."""

    def results_entries(self, tests: Mapping[str, Tests]) -> dict[str, Any]:
        """Entries of ``results["config"]`` after ``measured_lrp``: the test sets evaluated (default)."""
        return {"test_sets": list(self.test_sets)}

    @abstractmethod
    def example_title(self, tests: Mapping[str, Tests], name: str, index: int) -> str:
        """The heatmap figure's title of image ``index`` of test set ``name``."""

    def class_name(self, label: int) -> str:
        """A predicted class as the heatmap figure names it (default: the index)."""
        return str(label)

    # report

    def format_table(self, results: Mapping[str, Any]) -> str:
        """The Markdown table the command prints."""
        return self.report.format_table(results)

    def results_markdown(self, cfg: Settings, results: Mapping[str, Any]) -> str:
        """``results.md``."""
        return self.report.results_markdown(cfg, results)

    def findings(self, results: Mapping[str, Any]) -> list[str]:
        """One plain sentence per method, from its numbers."""
        return self.report.findings(results)

    def setup(self, cfg: Settings, results: Mapping[str, Any]) -> str:
        """The report's setup paragraph: data, sizes, architecture, how relevance is measured."""
        return self.report.setup(cfg, results)

    @abstractmethod
    def figures(self, cfg: Settings, results: Mapping[str, Any], heatmaps: Figure | None,
                tests: Mapping[str, Tests]) -> dict[str, Figure]:
        """The figures, by file name (``figures/NAME.png``): ``train_time`` and, when drawn, ``heatmaps``
        among them."""

    @abstractmethod
    def result_sections(self, cfg: Settings, results: Mapping[str, Any],
                        figures: Mapping[str, Figure]) -> list[Section]:
        """The report's sections between the setup and the background audit."""
