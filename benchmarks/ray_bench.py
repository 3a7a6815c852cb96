"""The distributed-engine row of the speed table: a gallery embedded into a feature store by the local engine
(`fill_store`, one process) and by the Ray engine (`ray_fill_store`, Ray Data on a local Ray instance), on the same
cores and the same videos, with how far their vectors agree and what Ray costs on top. Needs the `ray` extra
(`pip install -e ".[ray]"`); without it the row is left out. Run it through the driver once it is registered there
(`python benchmarks/speed.py --only ray-embed`), or alone: `python benchmarks/ray_bench.py [--quick]`.

Rows (`ROWS`), each a function `bench_NAME(ds, a)` returning `common.record`s:
  ray-embed  MiniLM (`cpu` preset) over the dev500 gallery's captions when ../shared is there (else the synthetic
             gallery's), and the tiny SigLIP twin over `a.n_videos` synthetic videos' frames: the local engine vs the
             Ray engine with 2 actors of 1 CPU each (Ray started once beforehand, its start stated; each actor loads
             its encoder inside the timing, as the local engine loads its one). The torch threads of each side are
             named: Ray gives a 1-CPU worker one thread (OMP_NUM_THREADS=1), the local process uses torch's default
"""
from __future__ import annotations
import importlib.util
import os
import tempfile
import time
from pathlib import Path
import numpy as np
from common import interleaved, record, reps

DEV500 = Path(__file__).resolve().parents[2]/'shared/data/webvid-covr/webvid8m-covr_test.dev500.csv'
CPUS = 2

def _engines(videos:list, cfg:dict, dims:int, folder:Path, actors:int) -> dict:
    "name -> a call that embeds `videos` into a new float32 store with that engine, and returns the store."
    from r3covr.models import create_encoder
    from r3covr.rayengine import ray_fill_store
    from r3covr.retrieve import fill_store
    from r3covr.store import FeatureStore
    made = iter(range(1 << 30))
    def new(name):
        return FeatureStore.create(folder/f'{name}-{next(made)}', 'enc', 'weights', dims, 'float32')
    def local():
        s = new('local')
        fill_store(videos, create_encoder(cfg), cfg['view'], cfg['frames'], s)
        return s
    def on_ray():
        s = new('ray')
        ray_fill_store(videos, cfg, s, actors=actors, batch_size=64)
        return s
    return {'local': local, 'ray': on_ray}

def _torch_threads() -> int:
    import torch
    return torch.get_num_threads()

def _case(name:str, videos:list, cfg:dict, folder:Path, a, started:float, threads:int, actors:int=CPUS) -> dict:
    "One record: the two engines on `videos`, interleaved, their vectors compared."
    from r3covr.models import create_encoder
    dims = create_encoder(cfg).embed_texts(['a video']).shape[1]
    r = interleaved(_engines(videos, cfg, dims, folder, actors), reps(a, 1))
    (tl, sl), (tr, sr) = r['local'], r['ray']
    ids = sl.ids
    diff = np.abs(sl.vectors(ids) - sr.vectors(ids)).max() if ids else 0.
    same = sorted(ids) == sorted(sr.ids)
    agree = (f"{'same' if same else 'DIFFERENT'} ids, max |dv| {diff:.1e}; Ray's overhead {tr - tl:+.1f} s "
             f"({tr / tl:.2f}x; Ray's start, not timed: {started:.1f} s)")
    ours = f'Ray engine (ray_fill_store, {actors} actors x 1 CPU, {threads} torch thread(s) each)'
    return record('ray-embed', name, f'local engine (fill_store, 1 process, {_torch_threads()} torch threads)', ours,
                  tl, tr, agree)

def bench_ray_embed(ds, a) -> list:
    "A gallery into a float32 feature store: the local engine vs the Ray engine on the same 2 cores."
    if importlib.util.find_spec('ray') is None: return []
    os.environ.setdefault('RAY_DISABLE_IMPORT_WARNING', '1')
    import ray
    from r3covr.models import load_preset
    from r3covr.pipeline import load_dataset
    from r3covr.rayengine import start_ray
    caps = load_dataset(str(DEV500)) if DEV500.exists() else ds
    captioned = [caps.videos[g] for g in caps.gallery]
    framed = [ds.videos[g] for g in list(ds.gallery)[:a.n_videos]]
    with tempfile.TemporaryDirectory(prefix='ray') as tmp:
        t0 = time.perf_counter()
        started = start_ray(num_cpus=CPUS, _temp_dir=str(Path(tmp)/'ray'), object_store_memory=400 << 20,
                            log_to_driver=False)
        t_start = time.perf_counter() - t0
        ray.data.DataContext.get_current().enable_progress_bars = False
        try:
            threads = ray.get(ray.remote(num_cpus=1)(_torch_threads).remote())    # what Ray gives a 1-CPU worker
            return [_case(f'caption view: MiniLM, {len(captioned)} {caps.name} gallery captions', captioned,
                          load_preset('cpu'), Path(tmp)/'caption', a, t_start, threads),
                    _case(f'frames view: tiny SigLIP twin, {len(framed)} synthetic videos (4 frames, 64 px)', framed,
                          load_preset('tiny'), Path(tmp)/'frames', a, t_start, threads)]
        finally:
            if started: ray.shutdown()

ROWS = {'ray-embed': bench_ray_embed}

if __name__ == '__main__':
    import argparse
    from common import table
    from r3covr.synthetic import make_synthetic
    os.environ.setdefault('HF_HUB_OFFLINE', '1')
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--quick', action='store_true', help='30 synthetic videos in the frames case (else 100)')
    ap.add_argument('--repeats', type=int, help='timing repeats (default 1)')
    a = ap.parse_args()
    a.n_videos = 30 if a.quick else 100
    print(table(bench_ray_embed(make_synthetic(n_queries=200), a)))
