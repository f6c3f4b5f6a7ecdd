"""Time `enumerate_candidates` on the default 12B space (paper drop order, A10G budget): median of 5 calls.

Runs against the code on `PYTHONPATH` (the old loose-argument API before #12, or the `Target` one), so
two versions can be timed interleaved in one session:

    python benchmarks/bench_search_time.py
    PYTHONPATH=/path/to/old/checkout python benchmarks/bench_search_time.py
"""
import statistics
import time

from minitron.models.architecture import Architecture
from minitron.prune import search

a = Architecture.from_path("nemotron-nano-12b-v2-base")
order = [7, 8, 17, 18, 48, 52] + [i for i in range(a.num_layers) if i not in (7, 8, 17, 18, 48, 52)]
space = search.default_space(a, depth=True)
try:
    from minitron.memory import Serving, make_budget
    from minitron.prune.target import Target
    t = Target(Serving(context_length=131072), budget=make_budget(gpu="a10g", headroom=0.05, reserve_gib=1.3))

    def run():
        return search.enumerate_candidates(a, space, drop_order=order, target=t)

    api = "new"
except ImportError:
    from minitron.memory import make_budget
    b = make_budget(gpu="a10g", headroom=0.05, reserve_gib=1.3)

    def run():
        return search.enumerate_candidates(a, space, drop_order=order, budget=b, context_length=131072)

    api = "old"
times = []
for _ in range(5):
    t0 = time.perf_counter()
    c = run()
    times.append(time.perf_counter() - t0)
print(api, len(c), sum(x.fits for x in c), "median_s", round(statistics.median(times), 3), [round(x, 3) for x in times])
