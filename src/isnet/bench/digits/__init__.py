"""``isnet bench bias``: the background-bias benchmark on BG-Digits.

:mod:`~isnet.bench.digits.presets` holds its test sets, metrics, sizes and presets (data only,
for the command's help); :mod:`~isnet.bench.digits.benchmark` the benchmark
(:class:`isnet.bench.interface.Benchmark`: data, test sets, evaluation);
:mod:`~isnet.bench.digits.report` its tables, verdicts, figures and report sections; and
:mod:`~isnet.bench.digits.modes` the grid modes (``--sweep``, ``--swap-dose``,
``--mask-quality``).
"""
