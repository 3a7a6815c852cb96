"""Interruptions and damage: `kill -9` at random points of every stage resumes to identical metrics and rankings; a
torn last line (ASCII or inside a UTF-8 character) resumes and runs again cleanly; a cached gallery embedding whose
video changed on disk is computed again."""
import os
os.environ.setdefault('HF_HUB_OFFLINE', '1')
import json
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path
import numpy as np
import pytest
from r3covr.core import read_jsonl

TINY = ['--preset', 'tiny', '--n', '6', '--set', 'batch_size=2', 'rerank_k=4', 'k=10']


def env(cache): return {**os.environ, 'R3COVR_CACHE': str(cache), 'HF_HUB_OFFLINE': '1'}


def r3covr(out, cache, *more):
    p = subprocess.run(['r3covr', 'run', '--dataset', 'synthetic', *TINY, '--out', str(out), *more], env=env(cache),
                       capture_output=True, text=True, timeout=900)
    assert p.returncode == 0 and 'Traceback' not in p.stderr, p.stderr[-3000:]
    return p


def outcome(folder:Path) -> tuple:
    "What a finished run says: its metrics and every query's final ranked list."
    m = json.loads((folder/'metrics.json').read_text())
    return m['metrics'], m['n_scored'], [(r['id'], r['ids']) for r in read_jsonl(folder/'rankings.jsonl')]


def lines(pattern):
    return lambda out: sum(len(read_jsonl(f)) for f in out.glob(pattern))


@pytest.fixture(scope='module')
def cache(tmp_path_factory): return tmp_path_factory.mktemp('cache')


@pytest.fixture(scope='module')
def reference(cache, tmp_path_factory):
    out = tmp_path_factory.mktemp('ref')/'run'
    r3covr(out, cache)
    return out


# a point of each stage: (name, is it reached?, how many of the trials kill there)
POINTS = [('start', lambda out: (out/'config.json').exists()),
          ('reason', lambda out: lines('generations-*.jsonl')(out) >= 1),
          ('reason, cleaned', lambda out: lines('descriptions-*.jsonl')(out) >= 1),
          ('gallery', lambda out: any((Path(os.environ['_FAULT_CACHE'])/'gallery').rglob('chunk-*.npz'))),
          ('retrieve', lambda out: any(out.glob('shortlists-*.jsonl'))),
          ('rerank', lambda out: lines('judge-*.jsonl')(out) >= 1),
          ('rerank, later', lambda out: lines('judge-*.jsonl')(out) >= 3),
          ('evaluate', lambda out: (out/'ranks.json').exists()),
          ('figures', lambda out: (out/'metrics.json').exists()),
          ('reason, later', lambda out: lines('generations-*.jsonl')(out) >= 4)]


@pytest.mark.parametrize('trial', range(len(POINTS)))
def test_kill_9_anywhere_resumes_to_identical_results(trial, reference, cache, tmp_path):
    name, reached = POINTS[trial]
    rng = random.Random(trial)
    if name == 'gallery': shutil.rmtree(cache/'gallery', ignore_errors=True)   # make the gallery be embedded again
    os.environ['_FAULT_CACHE'] = str(cache)
    out = tmp_path/'run'
    proc = subprocess.Popen(['r3covr', 'run', '--dataset', 'synthetic', *TINY, '--out', str(out)], env=env(cache),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 600
    while proc.poll() is None and not reached(out) and time.time() < deadline: time.sleep(0.01)
    time.sleep(rng.uniform(0, 0.2))                                          # somewhere after that point
    killed = proc.poll() is None
    if killed: os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    r3covr(out, cache)                                                       # the resumed run
    assert outcome(out) == outcome(reference), f'killed at {name}'
    for f in out.glob('*.jsonl'): read_jsonl(f)                              # every file whole again (no damage left)
    assert not (out/'run.lock').exists()


@pytest.mark.parametrize('tear', ['ascii', 'utf-8'])
def test_torn_last_line_resumes_and_runs_again(tear, reference, cache, tmp_path):
    out = tmp_path/'run'; shutil.copytree(reference, out)
    gen = next(out.glob('generations-*.jsonl'))
    recs = read_jsonl(gen)
    last = recs[-1]
    kept = b''.join((json.dumps(r) + '\n').encode() for r in recs[:-1])
    if tear == 'ascii': torn = json.dumps(last).encode()[:25]
    else:                                                          # an older writer's non-ASCII line, cut in 'é'

        raw = json.dumps({**last, 'raw': 'caf\u00e9 ' + last['raw']}, ensure_ascii=False).encode()
        torn = raw[:raw.index('\u00e9'.encode()) + 1]
    gen.write_bytes(kept + torn)
    for f in [*out.glob('descriptions-*.jsonl'), out/'metrics.json']: f.unlink()
    r3covr(out, cache)
    assert outcome(out) == outcome(reference)
    assert read_jsonl(gen) == recs and read_jsonl(gen).torn == 0 and gen.read_bytes().endswith(b'\n')
    r3covr(out, cache)                                                       # and once more, cleanly
    assert outcome(out) == outcome(reference)


def test_changed_video_is_embedded_again(cache, tmp_path, monkeypatch):
    "A video re-encoded on disk after its embedding was cached gets a new embedding; a missing one is retried."
    from r3covr.models import create_encoder
    from r3covr.retrieve import embed_gallery
    from r3covr.synthetic import make_synthetic
    from r3covr.video import write_video, read_frames
    monkeypatch.setenv('R3COVR_CACHE', str(cache))
    syn = make_synthetic(n_queries=200)
    vids = [syn.videos[v] for v in list(syn.gallery)[:6]]
    for v in vids: shutil.copy(v.path, tmp_path/Path(v.path).name)
    vids = [type(v)(v.id, tmp_path/Path(v.path).name, v.caption, v.source) for v in vids]
    enc, store = create_encoder('tiny'), tmp_path/'cache'
    ids, before, _ = embed_gallery(vids, enc, 'frames', {'n': 4, 'size': 64}, store, chunk=4)
    other = read_frames(syn.videos[list(syn.gallery)[50]].path, n=16).array       # another video's frames
    time.sleep(0.01); write_video(vids[1].path, other)                              # video 1 changed on disk
    ids2, after, _ = embed_gallery(vids, enc, 'frames', {'n': 4, 'size': 64}, store, chunk=4)
    fresh = embed_gallery(vids, enc, 'frames', {'n': 4, 'size': 64}, None, chunk=4)[1]
    assert ids2 == ids and np.abs(after[1] - before[1]).max() > 1e-3             # recomputed, not the stale vector
    np.testing.assert_allclose(after, fresh, atol=1e-5)
    np.testing.assert_array_equal(after[[0, 2, 3, 4, 5]], before[[0, 2, 3, 4, 5]])
    gone = Path(str(vids[2].path) + '.away'); vids[2].path.rename(gone)
    ids3, _, errs = embed_gallery(vids, enc, 'frames', {'n': 4, 'size': 64}, store, chunk=4)
    assert vids[2].id not in ids3 and [e[0] for e in errs] == [vids[2].id]
    gone.rename(vids[2].path)                                                       # restored: embedded again
    ids4, back, errs4 = embed_gallery(vids, enc, 'frames', {'n': 4, 'size': 64}, store, chunk=4)
    assert ids4 == ids and errs4 == [] and np.allclose(back, after, atol=1e-5)
