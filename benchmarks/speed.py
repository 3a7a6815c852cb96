"""Where the time goes, and what the package's fast paths buy: each row times a baseline and the package's way in
the same run, on the same inputs, and says how far their outputs agree.

    python benchmarks/speed.py                          # every row (CPU, offline: the `cpu` preset's real small models)
    python benchmarks/speed.py --only judge --only generate
    python benchmarks/speed.py --quick                  # smaller inputs (about a minute)
    python benchmarks/speed.py --json out.json          # also write the rows as JSON, one record a row

Rows (`--only NAME`):
  judge        SmolLM2 P(yes) on rerank prompts (a query's K candidates): one prompt per candidate and plain batches vs
               the shared prefix computed once (models_bench.py)
  likelihood   SmolLM2 log P(caption | prompt) for the likelihood reranker, called as the rerank stage calls it: batches in
               query order (as before) vs prompts and answers grouped by length (models_bench.py)
  generate     SmolLM2 greedy descriptions: transformers' `generate` vs the package's loop, and the options rejected
               (sorted batches, static KV cache, int8 linear layers) with how many texts each changes (models_bench.py)
  encode       MiniLM text embeddings: sentence-transformers' `encode` vs `SentenceEncoder.embed_texts` (models_bench.py)
  frames       8 frames per video: raw decord `get_batch` and PyAV vs `read_frames` (models_bench.py)
  clean        descriptions after a cleaner change: generate again and clean vs re-clean the stored raw answers
  load         SmolLM2 from its GGUF: dequantise every tensor vs the package's safetensors copy
  gallery      MiniLM caption-view gallery embeddings: computed vs read back from the .npz cache
  search       top-50 inner-product search at 200,000 x 384: numpy matmul + argpartition vs faiss flat vs HNSW
  search-1m    top-50 at 1,000,000 x 768 (vectors in 2,000 topic clusters), 1,000 queries: exact faiss flat vs `ivf`
               and `ivfpq` (4-bit PQ fast scan, the top 4K re-scored exactly), 4,000 lists, at nprobe 8 and 32
  pooling      retrieval scores with mean-pooled video vectors vs query-weighted pooling (`pooling=query`)
  retrieve-1m  the one retrieval path (top-50 + exact target ranks) over 1,000,000 x 768 with bounded memory,
               against the whole score matrix on a 50,000-video subset
  rerun        `r3covr demo --n 200` (`cpu` preset) from an empty run folder and gallery cache vs again on the warm folder
  served       SmolLM2 judging in process vs through llama.cpp's server (served_bench.py; needs the `serve` extra)

Each JSON record: {row, what, baseline, ours, baseline_s, ours_s, speedup, agreement}. Timings are wall-clock seconds
of one run (the best of `--repeats` for the short ones) on whatever machine runs it; compare rows of one run only.
The search galleries are synthetic: unit vectors near a 32-dimensional subspace of the embedding space, as real
embeddings are (on i.i.d. random unit vectors every neighbour is nearly as far as any other and HNSW's recall@50
collapses: 18% at 200,000 when we tried). `search-1m` adds topic clusters (a mixture of 2,000 in a 64-dimensional
subspace), which is what IVF's lists exploit: on the unclustered vectors IVF's recall@50 at nprobe 8 / 16 / 32 was
33% / 45% / 60% (200,000 x 768). An approximate index is only as good as your embeddings are clustered: measure
recall on them before trusting it.
"""
from __future__ import annotations
import argparse, importlib.util, json, os, resource, sys, tempfile
from pathlib import Path
import numpy as np

os.environ.setdefault('HF_HUB_OFFLINE', '1')

sys.path.insert(0, str(Path(__file__).parent))
from models_bench import best_of, record      # one timing helper and one record format for every row

def peak_rss_gb() -> float:
    "This process's peak resident memory so far, in GB."
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20

def structured(n:int, d:int, seed:int=0, chunk:int=100_000) -> np.ndarray:
    "`n` unit vectors near a 32-dimensional subspace of R^d (as real embeddings are), built chunk by chunk."
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((32, d), dtype=np.float32)
    out = np.empty((n, d), np.float32)
    for s in range(0, n, chunk):
        m = min(chunk, n - s)
        g = rng.standard_normal((m, 32), dtype=np.float32) @ A + 0.5 * rng.standard_normal((m, d), dtype=np.float32)
        out[s:s+m] = g / np.linalg.norm(g, axis=1, keepdims=True)
    return out

def clustered(n:int, d:int, n_topics:int=2000, seed:int=0, chunk:int=100_000) -> np.ndarray:
    "`n` unit vectors in `n_topics` clusters (topics) spread over a 64-dimensional subspace of R^d, plus noise."
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((64, d), dtype=np.float32) / 8
    centres = rng.standard_normal((n_topics, 64), dtype=np.float32)
    out = np.empty((n, d), np.float32)
    for s in range(0, n, chunk):
        m = min(chunk, n - s)
        z = centres[rng.integers(0, n_topics, m)] + 0.9 * rng.standard_normal((m, 64), dtype=np.float32)
        g = z @ A + 0.3 * rng.standard_normal((m, d), dtype=np.float32) / np.sqrt(d)
        out[s:s+m] = g / np.linalg.norm(g, axis=1, keepdims=True)
    return out

def near(g:np.ndarray, idx, noise:float=0.5, seed:int=1) -> np.ndarray:
    "Unit query vectors close to gallery rows `idx`."
    rng = np.random.default_rng(seed)
    q = g[idx] + noise * rng.standard_normal((len(idx), g.shape[1]), dtype=np.float32) / np.sqrt(g.shape[1])
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)

# ---------------------------------------------------------------- the models

def bench_clean(ds, a) -> list:
    from r3covr.models import create_vlm, create_encoder, video_part
    from r3covr.reason import generate_raw, describe_raw
    vlm, enc, qs = create_vlm('cpu'), create_encoder('cpu'), ds.queries[:a.n_gen]
    vlm.batch_size = a.batch
    refs = [video_part(ds.videos[q.reference], 'caption') for q in qs]
    gens = generate_raw(qs, refs, vlm, enc, template='rewrite-caption@1')     # what a run folder keeps
    clean = lambda gs: [describe_raw(q, g, enc)['description'] for q, g in zip(qs, gs)]
    tr, d1 = best_of(lambda: clean(generate_raw(qs, refs, vlm, enc, template='rewrite-caption@1')))
    tc, d2 = best_of(lambda: clean(gens), 3)
    return [record('clean', f'new cleaner ({len(qs)} descriptions)', 'regenerate with the VLM', 're-clean stored answers', tr, tc,
                   f'{sum(x == y for x, y in zip(d1, d2))}/{len(qs)} descriptions identical')]

def bench_load(ds, a) -> list:
    from r3covr.caption import load_gguf, _gguf_in
    from r3covr.models import resolve_weights
    path = _gguf_in(Path(resolve_weights('HuggingFaceTB/SmolLM2-135M-Instruct').locator))
    if path.suffix != '.gguf': return []
    load_gguf(path, cache=True)                                  # make sure the cached copy exists
    td, (_, m1) = best_of(lambda: load_gguf(path, cache=False))
    tc, (_, m2) = best_of(lambda: load_gguf(path, cache=True), 2)
    diff = max((x - y).abs().max().item() for x, y in zip(m1.state_dict().values(), m2.state_dict().values()))
    return [record('load', 'SmolLM2 model load', 'dequantise GGUF', 'cached safetensors', td, tc, f'max |dweight| {diff:.1e}')]

def bench_gallery(ds, a) -> list:
    from r3covr.models import create_encoder
    from r3covr.retrieve import embed_gallery
    enc = create_encoder('cpu')
    vids = [ds.videos[v] for v in ds.gallery]
    with tempfile.TemporaryDirectory() as td:
        tn, (_, e1, _) = best_of(lambda: embed_gallery(vids, enc, 'caption', cache=Path(td)))
        tc, (_, e2, _) = best_of(lambda: embed_gallery(vids, enc, 'caption', cache=Path(td)), 3)
    return [record('gallery', f'gallery embeddings ({len(vids)} captions)', 'compute (MiniLM)', 'read .npz cache', tn, tc,
                   f'max |demb| {np.abs(e1 - e2).max():.1e}')]

# ---------------------------------------------------------------- search

def bench_search(ds, a, k:int=50, repeats:int=3) -> list:
    from r3covr.retrieve import build_index
    n, d, nq = a.n_index, 384, 1000
    g = structured(n, d); q = near(g, np.random.default_rng(2).choice(n, nq, replace=False))
    def brute():
        s = q @ g.T; top = np.argpartition(-s, k, axis=1)[:, :k]
        return np.take_along_axis(top, np.argsort(-np.take_along_axis(s, top, 1), 1), 1)
    tnp, ids_np = best_of(brute, repeats)
    flat = build_index(g, 'flat'); tf, (_, ids_f) = best_of(lambda: flat.search(q, k), repeats)
    tbuild, hnsw = best_of(lambda: build_index(g, 'hnsw'))
    th, (_, ids_h) = best_of(lambda: hnsw.search(q, k), repeats)
    recall = np.mean([len(set(x) & set(y)) / k for x, y in zip(ids_f, ids_h)])
    top1 = np.mean(ids_np[:, 0] == ids_f[:, 0])
    what = f'top-{k} search ({nq} queries, {n:,} x {d})'
    return [record('search', what, 'numpy matmul', 'faiss flat (exact)', tnp, tf, f'top-1 equal {100*top1:.0f}%'),
            record('search', what, 'faiss flat (exact)', f'faiss HNSW (build {tbuild:.1f} s)', tf, th, f'recall@{k} vs exact {100*recall:.1f}%')]

def bench_search_1m(ds, a, d:int=768, nq:int=1000, k:int=50) -> list:
    "Top-50 at a million videos in 2,000 topics: exact faiss flat against `ivf` and `ivfpq` (default lists, 4 sqrt(n)) at nprobe 8 and 32."
    from r3covr.retrieve import build_index
    import faiss
    n = a.n_million
    g = clustered(n, d); q = near(g, np.random.default_rng(5).choice(n, nq, replace=False))
    tf, (_, exact) = best_of(lambda: build_index(g, 'flat').search(q, k))
    out, what = [], f'top-{k} search ({nq} queries, {n:,} x {d})'
    for kind in ('ivf', 'ivfpq'):
        tb, index = best_of(lambda: build_index(g, kind))
        ivf = faiss.extract_index_ivf(index)
        for nprobe in (8, 32):
            ivf.nprobe = nprobe
            ti, (_, ids) = best_of(lambda: index.search(q, k), 2)
            recall = np.mean([len(set(x) & set(y)) / k for x, y in zip(exact, ids)])
            ours = f'{kind} ({ivf.nlist} lists), nprobe {nprobe}' + (f', x{index.k_factor} re-scored exactly' if kind == 'ivfpq' else '')
            out.append(record('search-1m', what, 'faiss flat (exact)', f'{ours} (build {tb:.0f} s, once)', tf, ti, f'recall@{k} vs exact {100*recall:.1f}%'))
        del index, ivf
    return out

def bench_pooling(ds, a, T:int=8, d:int=1152, nq:int=500) -> list:
    "What `pooling=query` costs: exact query-weighted scores against one matmul over mean-pooled vectors."
    from r3covr.models import l2norm
    from r3covr.retrieve import query_pooled_scores
    from r3covr.siglip import pool_frames
    n, rng = a.n_pool, np.random.default_rng(1)
    base = rng.standard_normal((n, 1, d), dtype=np.float32)       # frames of a video share most of their content
    F = l2norm(base + 0.6 * rng.standard_normal((n, T, d), dtype=np.float32))
    q = l2norm(F[rng.choice(n, nq), rng.integers(0, T, nq)] + 0.5 * rng.standard_normal((nq, d), dtype=np.float32) / np.sqrt(d))
    tm, Sm = best_of(lambda: q @ pool_frames(F).T, 3)
    tq, Sq = best_of(lambda: query_pooled_scores(q, F))
    return [record('pooling', f'retrieval scores ({nq} queries, {n:,} videos x {T} frames x {d})', 'mean pooling (matmul)',
                   'query-weighted (exact)', tm, tq, f'same top-1 {100*np.mean(Sm.argmax(1) == Sq.argmax(1)):.0f}%')]

def whole_matrix(q:np.ndarray, g:np.ndarray, refs:np.ndarray, targets:np.ndarray, k:int) -> tuple:
    "Top-k ids and target ranks from the whole score matrix held at once: the reference the block path must match."
    from r3covr.metrics import target_ranks
    S = q @ g.T; S[np.arange(len(q)), refs] = -np.inf
    top = np.argsort(-S, axis=1, kind='stable')[:, :k]
    return top, target_ranks(S, targets)

def bench_retrieve_1m(ds, a, d:int=768, nq:int=1000, k:int=50) -> list:
    "The one retrieval path at a million videos: time and peak memory, and agreement with the whole matrix on a subset."
    from r3covr.core import Query
    from r3covr.retrieve import Gallery, retrieve
    n, sub = a.n_million, a.n_subset
    rng = np.random.default_rng(3)
    g = structured(n, d); ids = [f'v{j}' for j in range(n)]
    targets = rng.choice(n, nq, replace=False); refs = (targets + 1 + rng.integers(0, n - 1, nq)) % n
    q = near(g, targets)
    Q = [Query(f'q{i}', ids[r], 'edit', ids[t]) for i, (t, r) in enumerate(zip(targets, refs))]
    rss0 = peak_rss_gb()
    t_big, (sls, ranks) = best_of(lambda: retrieve(q, Q, Gallery(ids, g), k))
    rss1 = peak_rss_gb()
    # the same path on a subset, against the whole score matrix of that subset
    ts, rs = rng.choice(sub, nq, replace=False), rng.choice(sub, nq)
    rs = np.where(rs == ts, (rs + 1) % sub, rs)
    qs = near(g[:sub], ts, seed=4)
    Qs = [Query(f's{i}', ids[r], 'edit', ids[t]) for i, (t, r) in enumerate(zip(ts, rs))]
    t_whole, (top, whole_ranks) = best_of(lambda: whole_matrix(qs, g[:sub], rs, ts, k))
    t_block, (sls_s, ranks_s) = best_of(lambda: retrieve(qs, Qs, Gallery(ids[:sub], g[:sub]), k))
    S = qs @ g[:sub].T
    same_set = np.mean([set(s.ids) == {ids[j] for j in row} for s, row in zip(sls_s, top)])
    same_order = np.mean([list(s.ids) == [ids[j] for j in row] or    # or swapped only where the scores tie to 1e-6
                          np.abs(S[i, [int(x[1:]) for x in s.ids]] - S[i, row]).max() < 1e-6 for i, (s, row) in enumerate(zip(sls_s, top))])
    same_rank = np.mean([ranks_s[f's{i}'] == whole_ranks[i] for i in range(nq)])
    return [record('retrieve-1m', f'top-{k} + exact target ranks ({nq} queries, {sub:,} x {d})', 'whole score matrix',
                   'faiss top-K + ranks in blocks', t_whole, t_block,
                   f'same top-{k} sets {100*same_set:.1f}%, same order up to ties {100*same_order:.1f}%, same ranks {100*same_rank:.1f}%'),
            record('retrieve-1m', f'top-{k} + exact target ranks ({nq} queries, {n:,} x {d})', '(gallery itself: '
                   f'{g.nbytes / 2**30:.2f} GB)', f'faiss top-K + ranks in blocks; peak memory {rss1:.2f} GB '
                   f'(+{rss1 - rss0:.2f} GB over the gallery and inputs)', float('nan'), t_big,
                   f'{len(ranks)} of {nq} targets ranked, median rank {np.median(list(ranks.values())):.0f}')]

def bench_rerun(ds, a) -> list:
    "`r3covr demo` from an empty run folder, then the same command again on the warm folder (every stage cached)."
    import subprocess
    cmd = [sys.executable, '-c', 'import sys; from r3covr.cli import main; sys.exit(main(sys.argv[1:]))', 'demo', '--n', str(a.n_rerun)]
    from r3covr.core import cache_dir
    with tempfile.TemporaryDirectory() as td:
        env = dict(os.environ, R3COVR_CACHE=str(Path(td)/'cache'))
        for keep in ('models', 'digests', 'synthetic'):                   # unpacked weights and data stay; no gallery cache
            (Path(td)/'cache').mkdir(exist_ok=True); (Path(td)/'cache'/keep).symlink_to(cache_dir(keep))
        go = lambda: subprocess.run(cmd + ['--out', str(Path(td)/'run')], env=env, capture_output=True, text=True, check=True).stdout
        t1, out1 = best_of(go)
        t2, out2 = best_of(go)
    table_of = lambda out: [l for l in out.splitlines() if l.startswith('|')]
    return [record('rerun', f'`r3covr demo --n {a.n_rerun}` (cpu preset), process start to exit', 'empty run folder and gallery cache',
                   'same command, warm folder', t1, t2, 'same table' if table_of(out1) == table_of(out2) else 'TABLES DIFFER')]

# ---------------------------------------------------------------- the table

# ---------------------------------------------------------------- the table

from models_bench import bench_judge, bench_likelihood, bench_generate, bench_encode, bench_frames

ROWS = dict(judge=bench_judge, likelihood=bench_likelihood, generate=bench_generate, encode=bench_encode, frames=bench_frames, clean=bench_clean,
            load=bench_load, gallery=bench_gallery, search=bench_search, **{'search-1m': bench_search_1m},
            pooling=bench_pooling, **{'retrieve-1m': bench_retrieve_1m}, rerun=bench_rerun)
if importlib.util.find_spec('llama_cpp'):
    from served_bench import bench_served
    ROWS['served'] = bench_served

def table(rows:list) -> str:
    from r3covr.core import markdown_table
    return markdown_table(['row', 'what', 'baseline', 'ours', 'baseline s', 'ours s', 'speed-up', 'outputs'],
                          [[r['row'], r['what'], r['baseline'], r['ours'], r['baseline_s'], r['ours_s'],
                            f"{r['speedup']}x" if r['speedup'] == r['speedup'] and r['speedup'] is not None else '-', r['agreement']]
                           for r in rows])

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--only', action='append', choices=list(ROWS), help='run only this row (repeatable)')
    ap.add_argument('--quick', action='store_true'); ap.add_argument('--json')
    ap.add_argument('--batch', type=int, default=16)
    a = ap.parse_args(argv)
    a.n_judge, a.n_gen, a.n_index, a.n_pool, a.n_million, a.n_subset, a.n_videos, a.n_rerun, a.n_served = \
        (30, 8, 50_000, 2_000, 200_000, 20_000, 30, 12, 40) if a.quick else (100, 32, 200_000, 10_000, 1_000_000, 50_000, 100, 200, 200)
    a.repeats, a.n_like = None, (16 if a.quick else 64)
    import torch
    from r3covr.synthetic import make_synthetic
    ds = make_synthetic(n_queries=200)
    print(f'torch {torch.__version__}, {torch.get_num_threads()} threads, cuda={torch.cuda.is_available()}', flush=True)
    rows = []
    for name in a.only or ROWS:
        new = ROWS[name](ds, a); rows += new
        for r in new: print(table([r]).splitlines()[-1], flush=True)
    print(); print(table(rows))
    if a.json: Path(a.json).write_text(json.dumps(rows, indent=1))

if __name__ == '__main__': main()
