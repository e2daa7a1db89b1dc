"""Benchmarks behind ``isnet bench``.

* Background bias: one interface (:class:`isnet.bench.interface.Benchmark`) that
  :mod:`isnet.bench.digits` (``bench bias``, BG-Digits) and :mod:`isnet.bench.cxr`
  (``bench cxr``, BG-CXR) implement, and the code they share: the methods and settings
  (:mod:`~isnet.bench.presets`), the resumable training grid (:mod:`~isnet.bench.grid`), the
  run (:mod:`~isnet.bench.run`), paired comparisons (:mod:`~isnet.bench.paired`), the
  background audit's columns (:mod:`~isnet.bench.audit_columns`), the ``seg-classify``
  segmenter (:mod:`~isnet.bench.segmenter`) and the files (:mod:`~isnet.bench.report`).
* Speed: :mod:`isnet.bench.speed` (training-step time and memory of every ISNet variant
  against the class count, and LRP-Flex explain time against gradient x input).

:mod:`~isnet.bench.command` holds the command's arguments.
"""
