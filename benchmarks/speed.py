"""Where the time goes, and what the package's fast paths buy: each row times a baseline and the package's way in
the same run, on the same inputs, and says how far their outputs agree.

    python benchmarks/speed.py                 # CPU, offline: the `cpu` preset's real small models
    python benchmarks/speed.py --quick         # fewer prompts and a smaller index (about a minute)
    python benchmarks/speed.py --json out.json # also write the rows as JSON

Rows:
  judge scoring   SmolLM2 P(yes) on rerank prompts: one prompt per forward pass vs batches (left padding)
  description     SmolLM2 greedy generation of target descriptions: one by one vs batched
  new cleaner     descriptions after a cleaner change: generate again and clean vs re-clean the stored raw answers
  model load      SmolLM2 from its GGUF: dequantise every tensor vs the package's safetensors copy
  gallery         MiniLM caption-view gallery embeddings: computed vs read back from the .npz cache
  search          top-50 inner-product search: numpy matmul + argpartition vs faiss flat (exact) vs faiss HNSW
  pooling         retrieval scores with mean-pooled video vectors vs query-weighted pooling (`pooling=query`)

Timings are wall-clock seconds of one run (the best of `--repeats` for the short ones) on whatever machine runs it;
compare rows of one run only. The search gallery is synthetic: unit vectors near a 32-dimensional subspace of the
384-dimensional space, as real embeddings are (on i.i.d. random unit vectors every neighbour is nearly as far as
any other and HNSW's recall@50 collapses: 18% at 200,000 when we tried).
"""
from __future__ import annotations
import argparse, json, os, tempfile, time
from pathlib import Path
import numpy as np

os.environ.setdefault('HF_HUB_OFFLINE', '1')

def best_of(fn, repeats:int=1):
    "(seconds of the fastest of `repeats` calls, the last result)."
    best, out = float('inf'), None
    for _ in range(repeats):
        t0 = time.perf_counter(); out = fn(); best = min(best, time.perf_counter() - t0)
    return best, out

def row(what, base, ours, tb, to, agree) -> dict:
    return dict(what=what, baseline=base, ours=ours, baseline_s=round(tb, 3), ours_s=round(to, 3),
                speedup=round(tb / to, 1) if to > 0 else None, agreement=agree)

def judge_prompts(ds, n:int) -> list:
    "Rerank prompts built as the pipeline builds them: a query's edit, a description, a candidate's caption."
    from r3covr.models import video_part
    from r3covr.rerank import judge_prompt
    out = []
    for q in ds.queries:
        for c in (q.target, *ds.gallery_for(q)[:3]):
            out.append(judge_prompt(q.edit, ds.videos[q.target].caption, video_part(ds.videos[c], 'caption')))
            if len(out) == n: return out
    return out

def bench_vlm(ds, n_judge:int, n_gen:int, batch:int) -> list:
    from r3covr.models import create_vlm, create_encoder, video_part
    from r3covr.reason import PROMPTS, generate_raw, describe_raw
    vlm = create_vlm('cpu')
    prompts = judge_prompts(ds, n_judge)
    vlm.batch_size = 1; t1, p1 = best_of(lambda: vlm.score(prompts))
    vlm.batch_size = batch; tb, pb = best_of(lambda: vlm.score(prompts))
    rows = [row(f'judge scoring ({len(prompts)} prompts)', 'one by one', f'batches of {batch}', t1, tb,
                f'max |dP(yes)| {np.abs(p1 - pb).max():.1e}')]
    chats = [PROMPTS['rewrite-caption@1'].chat(video_part(ds.videos[q.reference], 'caption'), edit=q.edit)
             for q in ds.queries[:n_gen]]
    vlm.batch_size = 1; t1, g1 = best_of(lambda: vlm.generate(chats, 48))
    vlm.batch_size = batch; tb, gb = best_of(lambda: vlm.generate(chats, 48))
    same = sum(a == b for a, b in zip(g1, gb))
    rows.append(row(f'description ({len(chats)} x 48 tokens)', 'one by one', f'batches of {batch}', t1, tb,
                    f'{same}/{len(chats)} texts identical'))
    qs, enc = ds.queries[:n_gen], create_encoder('cpu')
    refs = [video_part(ds.videos[q.reference], 'caption') for q in qs]
    gens = generate_raw(qs, refs, vlm, enc, template='rewrite-caption@1')     # what a run folder keeps
    clean = lambda gs: [describe_raw(q, g, enc)['description'] for q, g in zip(qs, gs)]
    tr, d1 = best_of(lambda: clean(generate_raw(qs, refs, vlm, enc, template='rewrite-caption@1')))
    tc, d2 = best_of(lambda: clean(gens), 3)
    rows.append(row(f'new cleaner ({len(qs)} descriptions)', 'regenerate with the VLM', 're-clean stored answers', tr, tc,
                    f'{sum(a == b for a, b in zip(d1, d2))}/{len(qs)} descriptions identical'))
    return rows

def bench_load() -> list:
    from r3covr.caption import find_weights, load_gguf, _gguf_in
    path = _gguf_in(Path(find_weights('HuggingFaceTB/SmolLM2-135M-Instruct')))
    if path.suffix != '.gguf': return []
    load_gguf(path, cache=True)                                  # make sure the cached copy exists
    td, (_, m1) = best_of(lambda: load_gguf(path, cache=False))
    tc, (_, m2) = best_of(lambda: load_gguf(path, cache=True), 2)
    diff = max((a - b).abs().max().item() for a, b in zip(m1.state_dict().values(), m2.state_dict().values()))
    return [row('SmolLM2 model load', 'dequantise GGUF', 'cached safetensors', td, tc, f'max |dweight| {diff:.1e}')]

def bench_gallery(ds) -> list:
    from r3covr.models import create_encoder
    from r3covr.retrieve import embed_gallery
    enc = create_encoder('cpu')
    vids = [ds.videos[v] for v in ds.gallery]
    with tempfile.TemporaryDirectory() as td:
        tn, (_, e1, _) = best_of(lambda: embed_gallery(vids, enc, 'caption', cache=Path(td)))
        tc, (_, e2, _) = best_of(lambda: embed_gallery(vids, enc, 'caption', cache=Path(td)), 3)
    return [row(f'gallery embeddings ({len(vids)} captions)', 'compute (MiniLM)', 'read .npz cache', tn, tc,
                f'max |demb| {np.abs(e1 - e2).max():.1e}')]

def bench_search(n:int, d:int, nq:int, k:int=50, repeats:int=3) -> list:
    from r3covr.retrieve import build_index
    rng = np.random.default_rng(0)
    A = rng.standard_normal((32, d), dtype=np.float32)        # embeddings live near a low-dimensional subspace
    g = rng.standard_normal((n, 32), dtype=np.float32) @ A + 0.5 * rng.standard_normal((n, d), dtype=np.float32)
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    q = g[rng.choice(n, nq, replace=False)] + 0.5 * rng.standard_normal((nq, d), dtype=np.float32) / np.sqrt(d)
    q = (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)
    def brute():
        s = q @ g.T; top = np.argpartition(-s, k, axis=1)[:, :k]
        return np.take_along_axis(top, np.argsort(-np.take_along_axis(s, top, 1), 1), 1)
    tnp, ids_np = best_of(brute, repeats)
    flat = build_index(g, 'flat'); tf, (_, ids_f) = best_of(lambda: flat.search(q, k), repeats)
    tbuild, hnsw = best_of(lambda: build_index(g, 'hnsw'))
    th, (_, ids_h) = best_of(lambda: hnsw.search(q, k), repeats)
    recall = np.mean([len(set(a) & set(b)) / k for a, b in zip(ids_f, ids_h)])
    top1 = np.mean(ids_np[:, 0] == ids_f[:, 0])
    return [row(f'top-{k} search ({nq} queries, {n:,} x {d})', 'numpy matmul', 'faiss flat (exact)', tnp, tf,
                f'top-1 equal {100*top1:.0f}%'),
            row(f'top-{k} search ({nq} queries, {n:,} x {d})', 'faiss flat (exact)', f'faiss HNSW (build {tbuild:.1f} s)', tf, th,
                f'recall@{k} vs exact {100*recall:.1f}%')]

def bench_pooling(n:int, T:int=8, d:int=1152, nq:int=500) -> list:
    "What `pooling=query` costs: exact query-weighted scores against one matmul over mean-pooled vectors."
    from r3covr.models import l2norm
    from r3covr.retrieve import query_pooled_scores
    from r3covr.siglip import pool_frames
    rng = np.random.default_rng(1)
    base = rng.standard_normal((n, 1, d), dtype=np.float32)       # frames of a video share most of their content
    F = l2norm(base + 0.6 * rng.standard_normal((n, T, d), dtype=np.float32))
    q = l2norm(F[rng.choice(n, nq), rng.integers(0, T, nq)] + 0.5 * rng.standard_normal((nq, d), dtype=np.float32) / np.sqrt(d))
    tm, Sm = best_of(lambda: q @ pool_frames(F).T, 3)
    tq, Sq = best_of(lambda: query_pooled_scores(q, F))
    same = np.mean(Sm.argmax(1) == Sq.argmax(1))
    return [row(f'retrieval scores ({nq} queries, {n:,} videos x {T} frames x {d})', 'mean pooling (matmul)',
                'query-weighted (exact)', tm, tq, f'same top-1 {100*same:.0f}%')]

def table(rows:list) -> str:
    head = '| what | baseline | ours | baseline s | ours s | speed-up | outputs |\n|---|---|---|---|---|---|---|\n'
    return head + '\n'.join(f"| {r['what']} | {r['baseline']} | {r['ours']} | {r['baseline_s']} | {r['ours_s']} | "
                            f"{r['speedup']}x | {r['agreement']} |" for r in rows)

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--quick', action='store_true'); ap.add_argument('--json')
    ap.add_argument('--batch', type=int, default=16)
    a = ap.parse_args(argv)
    import torch
    from r3covr.synthetic import make_synthetic
    ds = make_synthetic(n_queries=200)
    n_judge, n_gen, n_idx, n_pool = (32, 8, 50_000, 2_000) if a.quick else (96, 32, 200_000, 10_000)
    print(f'torch {torch.__version__}, {torch.get_num_threads()} threads, cuda={torch.cuda.is_available()}', flush=True)
    rows = []
    for part in (lambda: bench_vlm(ds, n_judge, n_gen, a.batch), bench_load, lambda: bench_gallery(ds),
                 lambda: bench_search(n_idx, 384, 1000), lambda: bench_pooling(n_pool)):
        new = part(); rows += new
        for r in new: print(table([r]).splitlines()[-1], flush=True)
    print(); print(table(rows))
    if a.json: Path(a.json).write_text(json.dumps(rows, indent=1))

if __name__ == '__main__': main()
