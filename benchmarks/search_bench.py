"""The retrieval rows of the speed table: the gallery cache, top-K search (exact and approximate) at 200,000 and a
million vectors, query-weighted pooling, and the one retrieval path (top-K and exact target ranks in blocks) at a
million videos, search over a feature store on disk at ten million (`search-10m`) and a store reused by a second
gallery (`store-reuse`). Run them through the driver: `python benchmarks/speed.py --only search` (see speed.py).

The search galleries are synthetic: unit vectors near a 32-dimensional subspace of the embedding space, as real
embeddings are (on i.i.d. random unit vectors every neighbour is nearly as far as any other and HNSW's recall@50
collapses: 18% at 200,000 when we tried). `search-1m` adds topic clusters (a mixture of 2,000 in a 64-dimensional
subspace), which is what IVF's lists exploit: on the unclustered vectors IVF's recall@50 at nprobe 8 / 16 / 32 was
33% / 45% / 60% (200,000 x 768). An approximate index is only as good as your embeddings are clustered: measure
recall on them before trusting it.
"""
from __future__ import annotations
import tempfile
import time
from pathlib import Path
import numpy as np
from common import best_of, peak_rss_gb, record

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

def bench_gallery(ds, a) -> list:
    "MiniLM caption-view gallery embeddings: computed, vs read back from the .npz cache."
    from r3covr.models import create_encoder
    from r3covr.retrieve import embed_gallery
    enc = create_encoder('cpu')
    vids = [ds.videos[v] for v in ds.gallery]
    with tempfile.TemporaryDirectory() as td:
        tn, (_, e1, _) = best_of(lambda: embed_gallery(vids, enc, 'caption', cache=Path(td)))
        tc, (_, e2, _) = best_of(lambda: embed_gallery(vids, enc, 'caption', cache=Path(td)), 3)
    return [record('gallery', f'gallery embeddings ({len(vids)} captions)', 'compute (MiniLM)', 'read .npz cache',
                   tn, tc, f'max |demb| {np.abs(e1 - e2).max():.1e}')]

def bench_search(ds, a, k:int=50, repeats:int=3) -> list:
    "Top-50 at 200,000 x 384: numpy matmul + argpartition vs faiss flat vs HNSW."
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
            record('search', what, 'faiss flat (exact)', f'faiss HNSW (build {tbuild:.1f} s)', tf, th,
                   f'recall@{k} vs exact {100*recall:.1f}%')]

def bench_search_1m(ds, a, d:int=768, nq:int=1000, k:int=50) -> list:
    "Top-50 at a million videos in 2,000 topics: exact faiss flat vs `ivf` and `ivfpq` (4 sqrt(n) lists), nprobe 8, 32."
    import faiss
    from r3covr.retrieve import build_index
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
            ours = f'{kind} ({ivf.nlist} lists), nprobe {nprobe}'
            if kind == 'ivfpq': ours += f', x{index.k_factor} re-scored exactly'
            out.append(record('search-1m', what, 'faiss flat (exact)', f'{ours} (build {tb:.0f} s, once)', tf, ti,
                              f'recall@{k} vs exact {100*recall:.1f}%'))
        index = ivf = None                                      # free it before building the next
    return out

def bench_pooling(ds, a, T:int=8, d:int=1152, nq:int=500) -> list:
    "What `pooling=query` costs: exact query-weighted scores against one matmul over mean-pooled vectors."
    from r3covr.models import l2norm
    from r3covr.retrieve import query_pooled_scores
    from r3covr.siglip import pool_frames
    n, rng = a.n_pool, np.random.default_rng(1)
    base = rng.standard_normal((n, 1, d), dtype=np.float32)       # frames of a video share most of their content
    F = l2norm(base + 0.6 * rng.standard_normal((n, T, d), dtype=np.float32))
    noise = rng.standard_normal((nq, d), dtype=np.float32) / np.sqrt(d)
    q = l2norm(F[rng.choice(n, nq), rng.integers(0, T, nq)] + 0.5 * noise)
    tm, Sm = best_of(lambda: q @ pool_frames(F).T, 3)
    tq, Sq = best_of(lambda: query_pooled_scores(q, F))
    return [record('pooling', f'retrieval scores ({nq} queries, {n:,} videos x {T} frames x {d})',
                   'mean pooling (matmul)', 'query-weighted (exact)', tm, tq,
                   f'same top-1 {100*np.mean(Sm.argmax(1) == Sq.argmax(1)):.0f}%')]

def whole_matrix(q:np.ndarray, g:np.ndarray, refs:np.ndarray, targets:np.ndarray, k:int) -> tuple:
    "(whole float64 score matrix, each row's top-k scores, target ranks), references masked: what blocks must match."
    from r3covr.metrics import target_ranks
    S = q.astype(np.float64) @ g.astype(np.float64).T; S[np.arange(len(q)), refs] = -np.inf
    return S, -np.sort(-S, axis=1)[:, :k], target_ranks(S, targets)

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
    # the same path on a subset, against the whole score matrix of that subset (in float64, where ranks are counted)
    ts, rs = rng.choice(sub, nq, replace=False), rng.choice(sub, nq)
    rs = np.where(rs == ts, (rs + 1) % sub, rs)
    qs = near(g[:sub], ts, seed=4)
    Qs = [Query(f's{i}', ids[r], 'edit', ids[t]) for i, (t, r) in enumerate(zip(ts, rs))]
    t_whole, (S, top, whole_ranks) = best_of(lambda: whole_matrix(qs, g[:sub], rs, ts, k))
    t_block, (sls_s, ranks_s) = best_of(lambda: retrieve(qs, Qs, Gallery(ids[:sub], g[:sub]), k))
    got = np.array([[S[i, int(x[1:])] for x in s.ids] for i, s in enumerate(sls_s)])
    same_top = np.mean(np.abs(got - top).max(1) < 1e-6)       # the same top-k scores in order: swaps only at ties
    same_rank = np.mean([ranks_s[f's{i}'] == whole_ranks[i].tolist() for i in range(nq)])   # [above, tied] pairs
    gb = f'{g.nbytes / 2**30:.2f} GB'
    return [record('retrieve-1m', f'top-{k} + exact target ranks ({nq} queries, {sub:,} x {d})', 'whole score matrix',
                   'faiss top-K + ranks in blocks', t_whole, t_block,
                   f'same top-{k} up to ties {100*same_top:.1f}%, same ranks {100*same_rank:.1f}%'),
            record('retrieve-1m', f'top-{k} + exact target ranks ({nq} queries, {n:,} x {d})',
                   f'(gallery itself: {gb})',
                   f'faiss top-K + ranks in blocks; peak memory {rss1:.2f} GB '
                   f'(+{rss1 - rss0:.2f} GB over the gallery and inputs)', float('nan'), t_big,
                   f'{len(ranks)} of {nq} targets ranked, '
                   f'median rank {np.median([a + t / 2 for a, t in ranks.values()]):.0f}')]


def clustered_chunks(n:int, d:int, n_topics:int=2000, seed:int=0, chunk:int=100_000):
    "`clustered`'s vectors, a chunk at a time: never all in memory."
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((64, d), dtype=np.float32) / 8
    centres = rng.standard_normal((n_topics, 64), dtype=np.float32)
    for s in range(0, n, chunk):
        m = min(chunk, n - s)
        z = centres[rng.integers(0, n_topics, m)] + 0.9 * rng.standard_normal((m, 64), dtype=np.float32)
        g = z @ A + 0.3 * rng.standard_normal((m, d), dtype=np.float32) / np.sqrt(d)
        yield g / np.linalg.norm(g, axis=1, keepdims=True)

def in_child(fn, *args):
    "`fn(*args)` run in a fresh process (spawned: it shares no memory with this one), and its peak RSS in GB."
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor
    with ProcessPoolExecutor(1, mp_context=mp.get_context('spawn')) as ex:
        return ex.submit(_measured, fn, *args).result()

def _measured(fn, *args):
    return fn(*args), peak_rss_gb()

def write_clustered_store(folder:str, n:int, d:int, nq:int, shard:int=100_000) -> tuple:
    "A float16 store of `n` clustered unit vectors, written shard by shard; (seconds, unit queries near `nq` of them)."
    from r3covr.store import FeatureStore
    t0 = time.perf_counter()
    store = FeatureStore.create(folder, 'synthetic', 'clustered-seed0', d)
    for s, g in enumerate(clustered_chunks(n, d, chunk=shard)):
        store.add([f'v{s * shard + j}' for j in range(len(g))], ['-'] * len(g), g)    # '-': one shared string
    t = time.perf_counter() - t0
    picks = np.random.default_rng(5).choice(n, nq, replace=False)
    g = store.vectors([f'v{j}' for j in picks])
    noise = 0.5 * np.random.default_rng(1).standard_normal(g.shape, dtype=np.float32) / np.sqrt(d)
    q = g + noise
    return t, q / np.linalg.norm(q, axis=1, keepdims=True)

def build_phase(folder:str) -> tuple:
    from r3covr.bigsearch import build_store_index
    from r3covr.store import FeatureStore
    t0 = time.perf_counter()
    index = build_store_index(FeatureStore.open(folder, verify=False))
    return time.perf_counter() - t0, index.meta

def exact_phase(folder:str, q:np.ndarray, k:int) -> tuple:
    from r3covr.store import FeatureStore, exact_topk
    store = FeatureStore.open(folder, verify=False)
    t0 = time.perf_counter()
    _, ids = exact_topk(store, q, k)
    return time.perf_counter() - t0, ids

def search_phase(folder:str, q:np.ndarray, k:int, nprobe:int, rescore:int) -> tuple:
    from r3covr.bigsearch import open_store_index, search_store
    from r3covr.store import FeatureStore
    t0 = time.perf_counter()
    store = FeatureStore.open(folder, verify=False)
    index = open_store_index(store)
    t_open = time.perf_counter() - t0
    search_store(store, q[:10], k, index, nprobe, rescore)                 # warm: faiss threads, first pages
    t0 = time.perf_counter()
    _, ids = search_store(store, q, k, index, nprobe, rescore)
    return time.perf_counter() - t0, t_open, ids

def bench_search_10m(ds, a, d:int=768, nq:int=1000, k:int=50, nprobe:int=128, rescores=(200, 500)) -> list:
    "Top-50 over a float16 store of n x 768 clustered vectors on disk: blockwise exact scan vs `search_store`."
    import os
    import shutil
    n = a.n_10m
    base = Path(a.data_dir or os.environ.get('R3COVR_BENCH_DATA') or tempfile.gettempdir())
    folder = str(base/f'r3covr-search-{n}')
    shutil.rmtree(folder, ignore_errors=True)
    try:
        (t_write, q), rss_w = in_child(write_clustered_store, folder, n, d, nq)
        (t_build, meta), rss_b = in_child(build_phase, folder)
        (t_exact, exact), rss_e = in_child(exact_phase, folder, q, k)
        ours = {r: in_child(search_phase, folder, q, k, nprobe, r) for r in rescores}   # re-scoring depth: the cost
    finally:
        if not a.keep_data: shutil.rmtree(folder, ignore_errors=True)
    what = f'top-{k} search ({nq} queries, {n:,} x {d} float16 store on disk)'
    out = []
    for r, ((t_ours, t_open, ids), rss_s) in ours.items():
        recall = np.mean([len(set(x) & set(y)) / k for x, y in zip(exact, ids)])
        out.append(record('search-10m', what, f'blockwise exact scan (exact_topk; peak RSS {rss_e:.2f} GB)',
                          f'search_store: {meta["factory"]}, nprobe {nprobe}, top {r} re-scored exactly; '
                          f'peak RSS search {rss_s:.2f} GB (open {t_open:.0f} s), build {rss_b:.2f} GB', t_exact,
                          t_ours, f'recall@{k} vs exact {100*recall:.1f}%; build {t_build:.0f} s once (write store '
                          f'{t_write:.0f} s, peak RSS {rss_w:.2f} GB)'))
    return out

def reuse_videos(n:int) -> tuple:
    "(n + n // 10 caption-view videos, query texts): WebVid-CoVR's dev500 captions when present, else synthetic ones."
    import csv
    from r3covr.core import Video
    f = Path(__file__).resolve().parents[1].parent/'shared'/'data'/'webvid-covr'/'webvid8m-covr_test.dev500.csv'
    caps, edits = {}, []
    if f.exists():
        for r in csv.DictReader(f.open()):
            caps.setdefault(r['pth1'], r['txt1']); caps.setdefault(r['pth2'], r['txt2']); edits.append(r['edit'])
    else:
        caps = {f'v{i}': f'a {c} {o} on a {p}' for i, (c, o, p) in enumerate(
            (c, o, p) for c in ('red', 'blue', 'green', 'white') for o in ('dog', 'car', 'boat', 'bird', 'ball')
            for p in ('beach', 'road', 'lake', 'field', 'roof', 'hill', 'street', 'river', 'bridge', 'park',
                      'snowfield', 'market', 'garden', 'forest', 'farm', 'dune', 'pier', 'lawn', 'plaza', 'cliff',
                      'meadow', 'canyon', 'harbour', 'jungle', 'desert', 'island', 'volcano', 'glacier'))}
        edits = ['make it red', 'at night', 'two of them', 'in the rain']
    vids = [Video(i, caption=c) for i, c in list(caps.items())[:n + n // 10]]
    return vids, (edits * 20)[:20]

def bench_store_reuse(ds, a, k:int=10) -> list:
    "A second gallery sharing 90% of its videos with one already in the store: only the new 10% embedded."
    from r3covr.models import create_encoder
    from r3covr.retrieve import fill_store
    from r3covr.store import FeatureStore
    enc = create_encoder('cpu')
    vids, texts = reuse_videos(a.n_reuse)
    first, second = vids[:a.n_reuse], vids[len(vids) - a.n_reuse:]        # share 90% of their videos
    q = enc.embed_texts(texts)
    with tempfile.TemporaryDirectory() as td:
        make = lambda name: FeatureStore.create(Path(td)/name, 'cpu-minilm', 'benchmark', q.shape[1],
                                                settings=dict(view='caption'))
        shared, fresh = make('shared'), make('fresh')
        fill_store(first, enc, 'caption', None, shared)
        t_reuse, (ids, added, _) = best_of(lambda: fill_store(second, enc, 'caption', None, shared))
        t_fresh, (ids_f, added_f, _) = best_of(lambda: fill_store(second, enc, 'caption', None, fresh))
        v, vf = shared.vectors(ids), fresh.vectors(ids_f)
    top = lambda g: np.argsort(-(q @ g.T), axis=1, kind='stable')[:, :k]
    same = ids == ids_f and (top(v) == top(vf)).all()
    what = f'second caption gallery ({len(second)} videos, {len(second) - len(added)} already in the store; MiniLM)'
    return [record('store-reuse', what, f'fresh build into an empty store ({len(added_f)} embedded)',
                   f'fill_store into the shared store ({len(added)} embedded)', t_fresh, t_reuse,
                   f'max |dvector| {np.abs(v - vf).max():.1e}; top-{k} of {len(q)} queries '
                   f'{"identical" if same else "DIFFER"}')]

ROWS = {'gallery': bench_gallery, 'search': bench_search, 'search-1m': bench_search_1m, 'pooling': bench_pooling,
        'retrieve-1m': bench_retrieve_1m, 'search-10m': bench_search_10m,
        'store-reuse': bench_store_reuse}
