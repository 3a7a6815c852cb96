"""The `served` row of the speed table: SmolLM2-135M judging rerank candidates in process (`CausalLM`, left-padded
batches) against through llama.cpp's OpenAI-compatible server (the `openai` backend on a `LocalServer`), on the same
prompts (`common.judge_prompts`, 4 candidates a query), and how far their P(yes) agree. Needs the `serve` extra
(`pip install -e ".[serve]"`); the driver offers the row only where `llama_cpp` is installed.

    python benchmarks/speed.py --only served            # 200 prompts (about 5 minutes on 2 busy cores)
    python benchmarks/speed.py --only served --quick    # 40 prompts

Timings are wall-clock seconds of one pass each, model load and server start excluded; the in-process model and the
server share the same cores, one after the other.
"""
from __future__ import annotations
import importlib.util
import numpy as np
from common import best_of, judge_prompts, record

def bench_served(ds, a) -> list:
    "P(yes) of `a.n_served` judge prompts (4 candidates a query): in-process batches vs llama.cpp's server."
    from r3covr.models import create_vlm
    from r3covr.served import LocalServer
    prompts = judge_prompts(ds, a.n_served, k=4)
    local = create_vlm('cpu'); local.batch_size = a.batch
    tl, pl = best_of(lambda: local.score(prompts))
    with LocalServer(local.name) as srv:
        served = create_vlm('cpu-served', base_url=srv.url)
        ts, ps = best_of(lambda: served.score(prompts))
    d, m = np.abs(pl - ps), len(prompts) // 4
    top1 = int((pl[:4*m].reshape(m, 4).argmax(1) == ps[:4*m].reshape(m, 4).argmax(1)).sum())
    return [record('served', f'judge scoring ({len(prompts)} prompts, SmolLM2-135M)',
                   f'in-process, batches of {a.batch}',
                   f'llama.cpp server (Q4_1), {served.concurrency} requests in flight', tl, ts,
                   f'max |dP(yes)| {d.max():.3f}, mean {d.mean():.3f}; same top-1 candidate in {top1}/{m} queries')]

ROWS = {'served': bench_served} if importlib.util.find_spec('llama_cpp') else {}
