"""Benchmarks behind ``isnet bench``: :mod:`isnet.bench.speed` (training-step time and memory
of every ISNet variant against the class count, and LRP-Flex explain time against gradient x input).
"""
