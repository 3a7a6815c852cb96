"""What every benchmark shares: timing, one record format, the table, and the inputs two rows use.

A benchmark module (`models_bench`, `search_bench`, `served_bench`, `run_bench`) imports this module and r3covr,
never another benchmark; it exposes `ROWS = {name: bench_fn}`, each `bench_fn(ds, a)` returning records made by
`record`. `speed.py` is the one driver: it collects the modules' `ROWS`, sizes the inputs and prints `table`.
"""
from __future__ import annotations
import resource
import time

def best_of(fn, repeats:int=1):
    "(seconds of the fastest of `repeats` calls, the last result)."
    best, out = float('inf'), None
    for _ in range(repeats):
        t0 = time.perf_counter(); out = fn(); best = min(best, time.perf_counter() - t0)
    return best, out

def interleaved(fns:dict, repeats:int=1) -> dict:
    "name -> (best seconds, last result) of each function, calling them in turn `repeats` times (noise hits all alike)."
    best, out, names = {k: float('inf') for k in fns}, {}, list(fns)
    for r in range(max(1, repeats)):
        for k in names[r % len(names):] + names[:r % len(names)]:       # each way takes its turn first
            t, out[k] = best_of(fns[k]); best[k] = min(best[k], t)
    return {k: (best[k], out[k]) for k in fns}

def reps(a, default:int) -> int:
    "How many times to repeat each timing: `a.repeats` when given, else the row's default."
    return getattr(a, 'repeats', None) or default

def record(name:str, what:str, base:str, ours:str, tb:float, to:float, agree:str) -> dict:
    "One row of the speed table: what was timed, the two ways, their seconds, the speed-up and how far outputs agree."
    return dict(row=name, what=what, baseline=base, ours=ours, baseline_s=round(tb, 3), ours_s=round(to, 3),
                speedup=round(tb / to, 1) if to > 0 else None, agreement=agree)

def table(rows:list) -> str:
    "The records as one markdown table."
    from r3covr.core import markdown_table
    speedup = lambda r: f"{r['speedup']}x" if r['speedup'] is not None and r['speedup'] == r['speedup'] else '-'
    return markdown_table(['row', 'what', 'baseline', 'ours', 'baseline s', 'ours s', 'speed-up', 'outputs'],
                          [[r['row'], r['what'], r['baseline'], r['ours'], r['baseline_s'], r['ours_s'], speedup(r),
                            r['agreement']] for r in rows])

def peak_rss_gb() -> float:
    "This process's peak resident memory so far, in GB."
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20

def judge_prompts(ds, n:int, k:int=10) -> list:
    "Rerank prompts as the pipeline builds them: per query its edit and a description, then each of `k` candidates."
    from r3covr.lm import video_part
    from r3covr.prompts import judge_prompt
    out = []
    for q in ds.queries[:max(1, n // k)]:
        desc = ds.videos[q.target].caption                       # stands in for the reason stage's description
        cands = [q.target] + [g for g in ds.gallery_for(q) if g != q.target][:k - 1]
        out += [judge_prompt(q.edit, desc, video_part(ds.videos[c], 'caption')) for c in cands]
    return out
