"""Benchmarks of the PromptLab library (not part of the installed package: run them from the repository root).

`python -m bench.throughput` (`make bench`) measures training throughput and peak memory of every registered
prompt method, with and without the feature cache, and batched CoCoOp against a per-image loop; its figures go to
the results warehouse (`benchmark_results`, `latest_benchmark`), the HTML report's Throughput section and
bench/results/latest.json.
"""
