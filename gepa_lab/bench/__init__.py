"""python -m gepa_lab.bench: how full a sweep keeps its LM servers, against a naive loop, and the ceiling of every hop
(docs/benchmarks.md). hops: client, router, simulator; sweeps: saturation, naive loop, cache, overhead, demo;
results_scale; llamacpp; figures (+ figures.yaml): what bench.json holds; report: the table and the page."""
