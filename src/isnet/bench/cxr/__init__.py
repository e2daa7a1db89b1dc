"""``isnet bench cxr``: the background-bias benchmark on BG-CXR.

:mod:`~isnet.bench.cxr.presets` holds its test sets, metrics, sizes and presets (data only, for
the command's help); :mod:`~isnet.bench.cxr.benchmark` the benchmark
(:class:`isnet.bench.interface.Benchmark`: data, test sets, evaluation); and
:mod:`~isnet.bench.cxr.report` its tables, verdicts, figures and report sections.
"""
