"""``isnet bench speed`` and ``isnet bench explain``: time and memory of training steps and heatmaps.

:mod:`~isnet.bench.speed.benchmark` runs the measurements and writes the report; it times the
training steps of every ISNet variant (:mod:`~isnet.bench.speed.steps`) and LRP-Flex against
gradient x input (:mod:`~isnet.bench.speed.explain`), with the clocks and memory probes of
:mod:`~isnet.bench.speed.timing`, and reports them (:mod:`~isnet.bench.speed.report`).
"""
