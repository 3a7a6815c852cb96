"Feature stores in runs and on the command line: gallery build -> run --features, reuse, moves, refusals, info."
import os
os.environ.setdefault('HF_HUB_OFFLINE', '1')
import json
import shutil
import subprocess
from pathlib import Path
import pytest
from r3covr.store import FeatureStore, sha256_file


def r3covr(*args, cache):
    env = {**os.environ, 'R3COVR_CACHE': str(cache), 'HF_HUB_OFFLINE': '1'}
    return subprocess.run(['r3covr', *args], env=env, capture_output=True, text=True, timeout=600)


def ok(p):
    assert p.returncode == 0, p.stderr[-3000:]
    return p


@pytest.fixture(scope='module')
def cache(tmp_path_factory):
    "One r3covr cache for the module: the synthetic videos are made once."
    return tmp_path_factory.mktemp('cache')


def egocvr(folder:Path, recordings=('u1', 'u2')) -> Path:
    "A tiny EgoCVR pair over `recordings` (five captioned clips each, all in the gallery) and one query a recording."
    acts = ['takes the sieve', 'shakes the sieve', 'washes the bowl', 'takes the bowl', 'shakes the bowl']
    folder.mkdir(parents=True, exist_ok=True)
    (folder/'egocvr_data.csv').write_text('clip_name,narration_text,video_uid\n' + ''.join(
        f'{u}_{i},#C C {a} in {u},{u}\n' for u in recordings for i, a in enumerate(acts)))
    (folder/'ann.csv').write_text('video_clip_id,target_clip_ids,instruction,modified_captions\n' + ''.join(
        f"{u}_0,['{u}_1'],Shake it.,#C C shakes the sieve in {u}\n" for u in recordings))
    return folder/'ann.csv'


def build(out, *more, cache, dataset='synthetic'):
    return r3covr('gallery', 'build', '--dataset', str(dataset), '--preset', 'toy', '--out', str(out), *more,
                  cache=cache)


def run(out, *more, cache):
    ok(r3covr('run', '--preset', 'toy', '--n', '6', '--out', str(out), '--set', 'rerank_k=4', *more, cache=cache))
    return json.loads((Path(out)/'metrics.json').read_text())


def counts(p) -> list:
    "[added, reused, failed] from what `gallery build` printed."
    words = p.stdout.split(';')[0].split(': ', 1)[1].split(', ')
    return [int(w.split()[0]) for w in words]


@pytest.mark.parametrize('dtype, more', [('float16', ['rerank=false']), ('float32', [])])
def test_run_with_a_store_has_the_metrics_of_a_run_without(tmp_path, cache, dtype, more):
    "(a) float16 rows reproduce retrieval; float32 reproduces every row, the judge's blend with scores included."
    store = tmp_path/'store'
    assert counts(ok(build(store, '--n', '6', '--dtype', dtype, cache=cache))) == [len(FeatureStore.open(store)), 0, 0]
    plain = run(tmp_path/'plain', *more, cache=cache)
    stored = run(tmp_path/'stored', *more, '--features', str(store), cache=cache)
    assert stored['metrics'] == plain['metrics'] and stored['n_scored'] == 6
    record = json.loads((tmp_path/'stored'/'config.json').read_text())
    assert record['features'] == str(store)
    assert record['feature_store']['path'] == str(store.resolve())
    assert record['feature_store']['manifest'] == sha256_file(store/'manifest.json')


def test_a_second_gallery_embeds_only_its_new_videos(tmp_path, cache):
    "(b) two EgoCVR galleries share ten clips: the second build adds its five new ones and reuses the ten."
    store = tmp_path/'store'
    first = counts(ok(build(store, cache=cache, dataset=egocvr(tmp_path/'a'))))
    second = counts(ok(build(store, cache=cache, dataset=egocvr(tmp_path/'b', ('u1', 'u2', 'u3')))))
    assert (first, second) == ([10, 0, 0], [5, 10, 0])
    s = FeatureStore.open(store)
    assert len(s) == 15 and [x['rows'] for x in s.manifest['shards']] == [10, 5]
    assert counts(ok(build(store, cache=cache, dataset=egocvr(tmp_path/'b', ('u1', 'u2', 'u3'))))) == [0, 15, 0]


def test_a_moved_store_still_works(tmp_path, cache):
    "(c) a store moved to another folder is read there: nothing embedded again, same metrics, its new path recorded."
    ok(build(tmp_path/'here', '--n', '6', '--dtype', 'float32', cache=cache))
    moved = tmp_path/'elsewhere'/'store'
    moved.parent.mkdir()
    shutil.move(str(tmp_path/'here'), str(moved))
    before = FeatureStore.open(moved).manifest['shards']
    plain = run(tmp_path/'plain', cache=cache)
    stored = run(tmp_path/'stored', '--features', str(moved), cache=cache)
    assert stored['metrics'] == plain['metrics']
    assert FeatureStore.open(moved).manifest['shards'] == before           # the run added nothing
    assert json.loads((tmp_path/'stored'/'config.json').read_text())['feature_store']['path'] == str(moved.resolve())


def test_a_store_built_otherwise_is_refused_in_one_line(tmp_path, cache):
    "(d) other frame settings, another preset's encoder: exit status 2, one line naming what was built and what runs."
    store = tmp_path/'store'
    ok(build(store, '--n', '6', cache=cache))
    p = r3covr('run', '--preset', 'toy', '--n', '6', '--out', str(tmp_path/'r8'), '--features', str(store),
               '--set', 'frames.n=8', cache=cache)
    assert (p.returncode, p.stderr.count('\n')) == (2, 1)
    assert p.stderr == ("r3covr run: error: store 'store' was built with frames={'n': 4, 'size': 32}, "
                        "this run uses frames={'n': 8, 'size': 32}\n")
    assert not (tmp_path/'r8').exists()                                    # refused before the run folder is made
    other = tmp_path/'toy-b.json'
    other.write_text(json.dumps(dict(name='toy-b', view='caption', frames=dict(n=4, size=32),
                                     encoder=dict(backend='toy_encoder', model='toy-b'),
                                     vlm=dict(backend='toy_vlm', model='toy'))))
    for cmd in (['run', '--out', str(tmp_path/'rb'), '--features', str(store)],
                ['gallery', 'build', '--out', str(store)]):
        p = r3covr(*cmd, '--dataset', 'synthetic', '--preset', str(other), '--n', '6', cache=cache)
        assert (p.returncode, p.stderr.count('\n')) == (2, 1), p.stderr
        why = p.stderr.split(': error: ')[1]
        assert why.startswith("store 'store' was built with encoder toy (weights ") and ', this run uses toy-b (' in why
    assert len(FeatureStore.open(store)) == counts(build(store, '--n', '6', cache=cache))[1]   # left as it was


def test_gallery_info_prints_encoder_vectors_failures(tmp_path, cache):
    "(e) `gallery info`: a short table of what made the store, how many vectors, the failures and why."
    store = tmp_path/'store'
    ok(build(store, '--n', '6', cache=cache))
    s = FeatureStore.open(store)
    s.fail(['lost-video'], ['caption:x'], ['file not found: lost.mp4'])
    out = ok(r3covr('gallery', 'info', str(store), cache=cache)).stdout
    rows = {line.split('|')[1].strip(): line.split('|')[2].strip() for line in out.splitlines()[2:] if '|' in line}
    assert (rows['encoder'], rows['vectors'], rows['failures'], rows['dtype']) == ('toy', str(len(s)), '1', 'float16')
    assert rows['reasons'] == 'lost-video: file not found: lost.mp4'
    p = r3covr('gallery', 'info', str(tmp_path/'nothing'), cache=cache)
    assert (p.returncode, p.stderr.count('\n')) == (2, 1) and 'no feature store manifest' in p.stderr


def test_query_pooling_cannot_read_a_store(tmp_path, cache):
    "(f) pooling=query keeps every frame's vector: with --features it is refused in one line, before anything runs."
    store = tmp_path/'store'
    ok(build(store, '--n', '6', cache=cache))
    p = r3covr('run', '--preset', 'toy', '--n', '6', '--out', str(tmp_path/'r'), '--features', str(store),
               '--set', 'view=frames', 'pooling=query', cache=cache)
    assert (p.returncode, p.stderr.count('\n')) == (2, 1)
    assert 'a feature store keeps one vector a video' in p.stderr and 'pooling=query' in p.stderr
    p = build(tmp_path/'s2', '--n', '6', '--set', 'view=frames', 'pooling=query', cache=cache)
    assert (p.returncode, p.stderr.count('\n')) == (2, 1) and 'pooling=query' in p.stderr
    p = r3covr('run', '--preset', 'toy', '--features', str(tmp_path/'none'), cache=cache)
    assert p.returncode == 2 and 'no feature store there' in p.stderr
