"""The Ray engine against the local one, on a local Ray instance (2 CPUs): the same vectors in the caption view (the
`cpu` preset's MiniLM) and the frames view (the `tiny` preset's SigLIP twin), a store built by `gallery build --engine
ray` that `run --features` reads with the local store's metrics, and failed videos recorded, not fatal."""
import os
os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('RAY_DISABLE_IMPORT_WARNING', '1')
import json
import subprocess
import sys
import tempfile
import numpy as np
import pytest

ray = pytest.importorskip('ray', reason='the ray engine needs Ray Data: pip install -e ".[ray]"')
pytest.importorskip('ray.data', reason='the ray engine needs Ray Data: pip install -e ".[ray]"')

from r3covr.core import Video                                         # noqa: E402
from r3covr.models import create_encoder, load_preset                  # noqa: E402
from r3covr.pipeline import load_dataset                              # noqa: E402
from r3covr.rayengine import INSTALL, need_ray, ray_fill_store, start_ray   # noqa: E402
from r3covr.retrieve import fill_store                                # noqa: E402
from r3covr.store import FeatureStore                                 # noqa: E402


@pytest.fixture(scope='module')
def cache(tmp_path_factory):
    "One r3covr cache for the module (synthetic videos, tiny twins), set before Ray starts so its workers share it."
    path = tmp_path_factory.mktemp('cache')
    old, os.environ['R3COVR_CACHE'] = os.environ.get('R3COVR_CACHE'), str(path)
    yield path
    if old is None: os.environ.pop('R3COVR_CACHE')
    else: os.environ['R3COVR_CACHE'] = old


@pytest.fixture(scope='module')
def address(cache):
    "One local Ray instance for the module (2 CPUs, 300 MB of object store, a temporary folder); its address."
    started = start_ray(num_cpus=2, _temp_dir=tempfile.mkdtemp(prefix='ray'), object_store_memory=300 << 20,
                        log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray.get_runtime_context().gcs_address
    if started: ray.shutdown()


def both(videos, cfg, tmp_path, **kw):
    "(Ray engine's result and float32 store, local engine's result and float32 store) for `videos` under `cfg`."
    enc = create_encoder(cfg)
    dims = enc.embed_texts(['a video']).shape[1]
    new = lambda name: FeatureStore.create(tmp_path/name, 'enc', 'weights', dims, 'float32')
    by_ray, ray_store = ray_fill_store(videos, cfg, new('ray'), **kw), FeatureStore.open(tmp_path/'ray')
    by_loop = fill_store(videos, enc, cfg['view'], cfg['frames'], new('local'))
    return by_ray, ray_store, by_loop, FeatureStore.open(tmp_path/'local')


def test_caption_view_vectors_equal_the_local_engines(address, tmp_path):
    "(a) MiniLM on the synthetic gallery's captions, two actors: every vector within 1e-6 of the local engine's."
    ds = load_dataset('synthetic', n=20)
    videos = [ds.videos[g] for g in ds.gallery]
    by_ray, ray_store, by_loop, local_store = both(videos, load_preset('cpu'), tmp_path, actors=2, batch_size=16)
    assert sorted(by_ray[0]) == sorted(by_loop[0]) == sorted(v.id for v in videos)
    assert sorted(by_ray[1]) == sorted(by_loop[1]) and by_ray[2] == by_loop[2] == []
    ids = by_loop[0]
    assert np.abs(ray_store.vectors(ids) - local_store.vectors(ids)).max() <= 1e-6
    assert ray_store.manifest['counts'] == local_store.manifest['counts']


def test_frames_view_vectors_equal_and_bad_files_are_recorded(address, tmp_path):
    """(b, d) the tiny twin on the synthetic videos' frames, and two videos that cannot be read: a missing and a corrupt
    file. Same vectors as the local engine's; both failures recorded in the store with the local engine's reasons."""
    ds = load_dataset('synthetic', n=6)
    corrupt = tmp_path/'corrupt.mp4'
    corrupt.write_bytes(b'\x00\x00\x00\x18ftypmp42' + bytes(range(256)) * 8)     # an MP4 header, then garbage
    videos = [ds.videos[g] for g in ds.gallery] + [Video('lost', path=tmp_path/'lost.mp4'), Video('bad', path=corrupt)]
    by_ray, ray_store, by_loop, local_store = both(videos, load_preset('tiny'), tmp_path, batch_size=4)
    ids = by_loop[0]
    assert sorted(by_ray[0]) == sorted(ids) and len(ids) == len(videos) - 2
    assert np.abs(ray_store.vectors(ids) - local_store.vectors(ids)).max() <= 1e-6
    assert sorted(by_ray[2]) == sorted(by_loop[2]) and [i for i, _ in sorted(by_ray[2])] == ['bad', 'lost']
    assert 'video file not found' in dict(by_ray[2])['lost'] and 'cannot decode' in dict(by_ray[2])['bad']
    fails = {f['id']: f['why'] for f in ray_store.manifest['failures']}
    assert fails == {f['id']: f['why'] for f in local_store.manifest['failures']} and set(fails) == {'lost', 'bad'}
    again = ray_fill_store(videos, load_preset('tiny'), ray_store, retry_failed=False)    # nothing left to embed
    assert (again[1], sorted(again[2])) == ([], sorted(by_ray[2]))


def r3covr(*args, cache):
    env = {**os.environ, 'R3COVR_CACHE': str(cache), 'HF_HUB_OFFLINE': '1'}
    p = subprocess.run(['r3covr', *args], env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    return p


def test_a_store_built_by_the_cli_on_ray_gives_the_local_stores_metrics(address, cache, tmp_path):
    "(c) `gallery build --engine ray --address ...` (joining this module's instance), then `run --features`."
    build = ['gallery', 'build', '--dataset', 'synthetic', '--preset', 'toy', '--n', '6', '--dtype', 'float32']
    on_ray = r3covr(*build, '--out', str(tmp_path/'ray'), '--engine', 'ray', '--address', address,
                    '--actors', '1', cache=cache)
    r3covr(*build, '--out', str(tmp_path/'local'), cache=cache)
    n = len(FeatureStore.open(tmp_path/'local'))
    said = f'{tmp_path/"ray"}: {n} vectors added, 0 reused, 0 failed; the store holds {n}'
    assert on_ray.stdout.splitlines()[-1] == said
    metrics = {}
    for name in ('ray', 'local'):
        r3covr('run', '--preset', 'toy', '--n', '6', '--set', 'rerank_k=4', '--out', str(tmp_path/f'run-{name}'),
               '--features', str(tmp_path/name), cache=cache)
        metrics[name] = json.loads((tmp_path/f'run-{name}'/'metrics.json').read_text())
    assert metrics['ray']['metrics'] == metrics['local']['metrics'] and metrics['ray']['n_scored'] == 6
    counts = [FeatureStore.open(tmp_path/name).manifest['counts'] for name in ('ray', 'local')]
    assert counts[0] == counts[1]


def test_without_ray_the_module_imports_and_says_how_to_install(tmp_path):
    "Ray hidden from Python: `import r3covr.rayengine` works; `need_ray` and `--engine ray` say how to install it."
    hide = "import sys; sys.modules['ray'] = None; "
    code = hide + "import r3covr.rayengine as r; r.need_ray()"
    p = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300)
    assert p.returncode == 1 and p.stderr.strip().splitlines()[-1].endswith(INSTALL)
    code = hide + ("from r3covr.cli import main; main(['gallery', 'build', '--dataset', 'synthetic', '--preset', "
                   f"'toy', '--out', {str(tmp_path/'s')!r}, '--engine', 'ray'])")
    p = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300)
    assert (p.returncode, p.stderr.count('\n')) == (2, 1) and p.stderr.rstrip().endswith(INSTALL)
    assert not (tmp_path/'s').exists()
    assert need_ray() is ray
