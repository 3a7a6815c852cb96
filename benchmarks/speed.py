"""Where the time goes, and what the package's fast paths buy: each row times a baseline and the package's way in
the same run, on the same inputs, and says how far their outputs agree. This is the one driver; the rows live in
`models_bench.py`, `search_bench.py`, `run_bench.py` and `served_bench.py`, which share `common.py` (timing, the
record format, the table) and import nothing else but r3covr. Run it as a script, from any folder (Python puts the
script's own folder first on the import path, which is how `common` and the row modules are found):

    python benchmarks/speed.py                          # every row (CPU, offline: the `cpu` preset's real small models)
    python benchmarks/speed.py --only judge --only generate
    python benchmarks/speed.py --quick                  # smaller inputs (about a minute)
    python benchmarks/speed.py --json out.json          # also write the rows as JSON, one record a row

Rows (`--only NAME`):
  judge        SmolLM2 P(yes) on rerank prompts (a query's K candidates): one prompt per candidate and plain batches vs
               the shared prefix computed once (models_bench.py)
  likelihood   SmolLM2 log P(caption | prompt) for the likelihood reranker, called as the rerank stage calls it:
               batches in query order (as before) vs prompts and answers grouped by length (models_bench.py)
  caption-length  the likelihood reranker per query with ~100-token candidate captions (constructed from the dataset's
               own), read whole and as a run reads them (`rerank_words`), against the dataset's own (~9 tokens on
               dev500): how the cost grows with caption length (models_bench.py)
  generate     SmolLM2 greedy descriptions: transformers' `generate` vs the package's loop, and the options rejected
               (sorted batches, static KV cache, int8 linear layers) with how many texts each changes (models_bench.py)
  encode       MiniLM text embeddings: sentence-transformers' `encode` vs `SentenceEncoder.embed_texts`
               (models_bench.py)
  frames       8 frames per video: raw decord `get_batch` and PyAV vs `read_frames` (models_bench.py)
  clean        descriptions after a cleaner change: generate again and clean vs re-clean the stored raw answers
               (models_bench.py)
  load         SmolLM2 from its GGUF: dequantise every tensor vs the package's safetensors copy (models_bench.py)
  gallery      MiniLM caption-view gallery embeddings: computed vs read back from the .npz cache (search_bench.py)
  search       top-50 inner-product search at 200,000 x 384: numpy matmul + argpartition vs faiss flat vs HNSW
               (search_bench.py)
  search-1m    top-50 at 1,000,000 x 768 (vectors in 2,000 topic clusters), 1,000 queries: exact faiss flat vs `ivf`
               and `ivfpq` (4-bit PQ fast scan, the top 4K re-scored exactly), 4,000 lists, at nprobe 8 and 32
               (search_bench.py)
  pooling      retrieval scores with mean-pooled video vectors vs query-weighted pooling (`pooling=query`)
               (search_bench.py)
  retrieve-1m  the one retrieval path (top-50 + exact target ranks) over 1,000,000 x 768 with bounded memory,
               against the whole float64 score matrix on a 50,000-video subset (search_bench.py)
  search-10m   top-50 over 10,000,000 x 768 float16 vectors in 2,000 topic clusters, written shard by shard as a
               feature store on disk, 1,000 queries: exact blockwise scan of the shards vs `search_store` (IVF-PQ
               fast-scan index, 2,048 lists, built shard by shard; nprobe 128, top 500 re-scored exactly); peak RSS
               of build and of search, each in its own process (--quick: 1,000,000; --data-dir: where the 15.4 GB
               store goes, deleted after unless --keep-data) (search_bench.py)
  store-reuse  a 500-caption MiniLM gallery (--quick: 200) into a feature store, then a second one sharing 90% of its
               videos: only the new 10% embedded, vectors and top-10 equal to a fresh build into an empty store
               (search_bench.py)
  rerun        `r3covr demo --n 200` (`cpu` preset) from an empty run folder and gallery cache vs again on the warm
               folder (run_bench.py)
  served       SmolLM2 judging in process vs through llama.cpp's server (served_bench.py; needs the `serve` extra)
  ray-embed    local engine vs Ray engine (2 actors x 1 CPU) into a feature store: caption view (MiniLM, dev500) and
               frames view (tiny twin): same vectors, the overhead (ray_bench.py; needs the `ray` extra)

Each JSON record: {row, what, baseline, ours, baseline_s, ours_s, speedup, agreement}. Timings are wall-clock seconds
of one run (the best of `--repeats` for the short ones) on whatever machine runs it; compare rows of one run only.
`python tools/check_benchmarks.py` checks, without running a model, that every benchmark compiles and that every
r3covr name it imports exists.
"""
from __future__ import annotations
import argparse
import json
import os
from pathlib import Path
import models_bench
import ray_bench
import run_bench
import search_bench
import served_bench
from common import table

os.environ.setdefault('HF_HUB_OFFLINE', '1')

ROWS = {**models_bench.ROWS, **search_bench.ROWS, **run_bench.ROWS, **served_bench.ROWS, **ray_bench.ROWS}

SIZES = dict(   # input sizes: (--quick, full)
    n_judge=(30, 100), n_gen=(8, 32), n_like=(16, 64), n_videos=(30, 100), n_index=(50_000, 200_000),
    n_pool=(2_000, 10_000), n_million=(200_000, 1_000_000), n_subset=(20_000, 50_000), n_rerun=(12, 200),
    n_served=(40, 200), n_10m=(1_000_000, 10_000_000), n_reuse=(200, 500))

def args(argv=None) -> argparse.Namespace:
    "The command line, with every row's input sizes set for `--quick` or a full run."
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--only', action='append', choices=list(ROWS), help='run only this row (repeatable)')
    ap.add_argument('--quick', action='store_true', help='smaller inputs')
    ap.add_argument('--json', help='also write the rows here')
    ap.add_argument('--batch', type=int, default=16, help='prompts per batch in the model rows')
    ap.add_argument('--repeats', type=int, help="timing repeats (default: each row's own)")
    ap.add_argument('--threads', type=int, help="torch threads (default: torch's own choice)")
    ap.add_argument('--data-dir', help='search-10m: folder for its store (15.4 GB at full size; '
                    'default: $R3COVR_BENCH_DATA or the temp folder)')
    ap.add_argument('--keep-data', action='store_true', help='search-10m: keep its store instead of deleting it')
    a = ap.parse_args(argv)
    for k, (quick, full) in SIZES.items(): setattr(a, k, quick if a.quick else full)
    return a

def main(argv=None):
    a = args(argv)
    import torch
    from r3covr.synthetic import make_synthetic
    if a.threads: torch.set_num_threads(a.threads)
    ds = make_synthetic(n_queries=200)
    print(f'torch {torch.__version__}, {torch.get_num_threads()} threads, cuda={torch.cuda.is_available()}', flush=True)
    rows = []
    for name in a.only or ROWS:
        new = ROWS[name](ds, a); rows += new
        for r in new: print(table([r]).splitlines()[-1], flush=True)
    print(); print(table(rows))
    if a.json: Path(a.json).write_text(json.dumps(rows, indent=1))

if __name__ == '__main__': main()
