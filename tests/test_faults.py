"""Interruptions and damage: `kill -9` at random points of every stage, then two resumers started at once on the
same folder, resumes to identical metrics and rankings with exactly one writer at any time (the other resumer is
refused, naming the one that holds the folder, or runs after it); a torn last line (ASCII or inside a UTF-8
character) resumes and runs again cleanly; a cached gallery embedding whose video changed on disk is computed again.

The kill trials use the `toy` preset (milliseconds of model work, so a trial is two Python start-ups and the files'
appends): 10 trials, one per kill point, run by default; the 20 of issue 22 run with R3COVR_SLOW=1."""
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
from r3covr.runfolder import RunFolder

TOY = ['--preset', 'toy', '--n', '40', '--set', 'batch_size=1', 'rerank_k=4', 'k=10']
RUN = ['r3covr', 'run', '--dataset', 'synthetic', *TOY]


def env(cache): return {**os.environ, 'R3COVR_CACHE': str(cache), 'HF_HUB_OFFLINE': '1'}


def r3covr(out, cache, *more):
    p = subprocess.run([*RUN, '--out', str(out), *more], env=env(cache), capture_output=True, text=True, timeout=900)
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


# a point of each stage: (name, is it reached?, the longest wait after it before the kill, in seconds)
POINTS = [('start-up', lambda out: True, 0.3),        # imports alone take longer than 0.3 s
          ('start', lambda out: (out/'config.json').exists(), 0.05),
          ('reason', lambda out: lines('generations-*.jsonl')(out) >= 1, 0.05),
          ('reason, later', lambda out: lines('generations-*.jsonl')(out) >= 20, 0.05),
          ('reason, cleaned', lambda out: lines('descriptions-*.jsonl')(out) >= 1, 0.05),
          ('retrieve', lambda out: any(out.glob('shortlists-*.jsonl')), 0.05),
          ('rerank', lambda out: lines('judge-*.jsonl')(out) >= 1, 0.05),
          ('rerank, later', lambda out: lines('judge-*.jsonl')(out) >= 20, 0.05),
          ('evaluate', lambda out: (out/'ranks.json').exists(), 0.02),
          ('figures', lambda out: (out/'metrics.json').exists(), 0.02)]
SLOW = pytest.mark.skipif(not os.environ.get('R3COVR_SLOW'), reason='the 20 trials of issue 22: R3COVR_SLOW=1')
TRIALS = [pytest.param(t, marks=[SLOW] if t >= len(POINTS) else []) for t in range(20)]


def kill_9_somewhere(out, cache, trial) -> str:
    "Start a run, kill -9 it at trial's point (after a random wait); its name; fails if the run ended first."
    name, reached, wait = POINTS[trial % len(POINTS)]
    proc = subprocess.Popen([*RUN, '--out', str(out)], env=env(cache), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 600
    while proc.poll() is None and not reached(out) and time.time() < deadline: time.sleep(0.005)
    time.sleep(random.Random(trial).uniform(0, wait))                          # somewhere after that point
    killed = proc.poll() is None
    if killed: os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert killed, f'the run finished before the kill at {name!r}: the trial tested nothing'
    return name


@pytest.mark.parametrize('trial', TRIALS)
def test_kill_9_then_two_resumers_at_once_end_identical_with_one_writer(trial, reference, cache, tmp_path):
    out = tmp_path/'run'
    name = kill_9_somewhere(out, cache, trial)
    two = [subprocess.Popen([*RUN, '--out', str(out)], env=env(cache), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True) for _ in range(2)]
    errs = [p.communicate(timeout=900)[1] for p in two]
    assert 0 in [p.returncode for p in two], errs
    for p, err, other in zip(two, errs, two[::-1]):
        if p.returncode:                                 # refused at once, in one line naming the other resumer
            assert p.returncode == 2 and len(err.strip().splitlines()) == 1, (name, err[-2000:])
            assert f'is in use by process {other.pid} ' in err, (name, err)
        else: assert 'Traceback' not in err, (name, err[-3000:])
    print(f'{name}: {"one refused" if any(p.returncode for p in two) else "one after the other"}')
    assert outcome(out) == outcome(reference), f'killed at {name}'
    for f in out.glob('*-*.jsonl'):                     # every file whole, and no record written by two writers
        ids = [r['id'] for r in read_jsonl(f)]
        assert len(ids) == len(set(ids)), (name, f.name)
    with RunFolder(out).locked(): pass                  # and the folder is free again


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


def test_a_video_replaced_with_its_size_and_mtime_kept_is_embedded_again(cache, tmp_path, monkeypatch):
    "cp -p / rsync -t: another video of the same size, its modification time put back; ctime and inode tell."
    from collections import defaultdict
    from r3covr.models import create_encoder
    from r3covr.retrieve import embed_gallery
    from r3covr.synthetic import make_synthetic
    monkeypatch.setenv('R3COVR_CACHE', str(cache))
    syn = make_synthetic(n_queries=200)
    by_size = defaultdict(list)
    for v in syn.gallery: by_size[os.path.getsize(syn.videos[v].path)].append(syn.videos[v])
    a, b = next(vs for vs in by_size.values() if len(vs) > 1 and
                Path(vs[0].path).read_bytes() != Path(vs[1].path).read_bytes())[:2]
    mine = type(a)(a.id, tmp_path/'clip.mp4', a.caption, a.source)
    shutil.copy(a.path, mine.path)
    enc, store, frames = create_encoder('tiny'), tmp_path/'cache', {'n': 4, 'size': 64}
    before = embed_gallery([mine], enc, 'frames', frames, store)[1]
    st = os.stat(mine.path)
    time.sleep(0.01); (tmp_path/'new.mp4').write_bytes(Path(b.path).read_bytes())
    os.replace(tmp_path/'new.mp4', mine.path); os.utime(mine.path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (os.stat(mine.path).st_size, os.stat(mine.path).st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    after = embed_gallery([mine], enc, 'frames', frames, store)[1]
    fresh = embed_gallery([mine], enc, 'frames', frames, None)[1]
    assert np.abs(after - before).max() > 1e-3 and np.allclose(after, fresh, atol=1e-5)
