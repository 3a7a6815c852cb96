"""The `served` row of benchmarks/speed.py: SmolLM2-135M judging rerank candidates in process (`CausalLM`, left-padded
batches) against through llama.cpp's OpenAI-compatible server (the `openai` backend on a `LocalServer`), on the same
prompts, and how far their P(yes) agree. Needs the `serve` extra (`pip install -e ".[serve]"`).

    python benchmarks/served_bench.py                   # this row alone: 200 prompts (about 5 minutes on 2 busy cores)
    python benchmarks/served_bench.py --n 40 --json served.json

speed.py takes it as a row: `from served_bench import bench_served`, `ROWS['served'] = bench_served`, and sets
`a.n_served` (200; fewer with --quick); its prompts are models_bench's `judge_prompts` with 4 candidates a query. Timings are wall-clock seconds of one pass each, model load and server start
excluded; the in-process model and the server share the same cores, one after the other.
"""
from __future__ import annotations
import argparse, json, os
from pathlib import Path
import numpy as np

os.environ.setdefault('HF_HUB_OFFLINE', '1')

def bench_served(ds, a) -> list:
    "P(yes) of `a.n_served` judge prompts (4 candidates a query): in-process batches of `a.batch` vs the `openai` backend on llama.cpp's server."
    from models_bench import best_of, judge_prompts, record
    from r3covr.models import create_vlm
    from r3covr.served import LocalServer
    prompts = judge_prompts(ds, getattr(a, 'n_served', 200), k=4)
    local = create_vlm('cpu'); local.batch_size = a.batch
    tl, pl = best_of(lambda: local.score(prompts))
    with LocalServer(local.name) as srv:
        served = create_vlm('cpu-served', base_url=srv.url)
        ts, ps = best_of(lambda: served.score(prompts))
    d, m = np.abs(pl - ps), len(prompts) // 4
    top1 = int((pl[:4*m].reshape(m, 4).argmax(1) == ps[:4*m].reshape(m, 4).argmax(1)).sum())
    return [record('served', f'judge scoring ({len(prompts)} prompts, SmolLM2-135M)', f'in-process, batches of {a.batch}',
                   f'llama.cpp server (Q4_1), {served.concurrency} requests in flight', tl, ts,
                   f'max |dP(yes)| {d.max():.3f}, mean {d.mean():.3f}; same top-1 candidate in {top1}/{m} queries')]

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--n', type=int, default=200, help='judge prompts'); ap.add_argument('--batch', type=int, default=16)
    ap.add_argument('--json')
    a = ap.parse_args(argv); a.n_served = a.n
    from speed import table
    from r3covr.synthetic import make_synthetic
    rows = bench_served(make_synthetic(n_queries=200), a)
    print(table(rows))
    if a.json: Path(a.json).write_text(json.dumps(rows, indent=1))

if __name__ == '__main__': main()
