"EgoCVR: the loader (bad rows, the real dev files), queries with several targets, global and local galleries, the CLI."
import os
os.environ.setdefault('HF_HUB_OFFLINE', '1')
import json
import subprocess
import warnings
from pathlib import Path
import numpy as np
import pytest
from r3covr.core import DataError, Query
from r3covr.data import load_egocvr
from r3covr.models import Models
from r3covr.pipeline import best_reranked_rank, dataset_of, load_dataset, ranking_rank, retrieve, run_dataset
from r3covr.retrieve import Gallery, Shortlist, rank_targets, retrieve as search
from r3covr.runfolder import RunFolder
from r3covr.settings import run_config

EGO = Path(__file__).resolve().parents[1].parent/'shared'/'data'/'egocvr'
needs_shared = pytest.mark.skipif(not (EGO/'egocvr_annotations.dev.csv').exists(),
                                  reason='EgoCVR dev files (../shared/data/egocvr) not present')

ACTS = [('takes', 'sieve'), ('shakes', 'sieve'), ('washes', 'bowl'), ('takes', 'bowl'), ('shakes', 'bowl')]
CLIPS = [(u, i, verb, obj) for u in ('u1', 'u2') for i, (verb, obj) in enumerate(ACTS)]
ROWS = ["u1_0,\"['u1_1', 'u1_4']\",Shake it.,#C C shakes the sieve",
        "u1_2,['u1_3'],Take it instead.,#C C takes the bowl",
        "u2_0,['u2_1'],Shake it.,#C C shakes the sieve",
        "u2_3,['u2_2'],Wash it.,#C C washes the bowl",
        "u1_3,['u1_2'],Wash it.,#C C washes the bowl",
        "u2_1,\"['u2_0', 'u2_4']\",Take it.,#C C takes the sieve"]


def egocvr(folder:Path, rows=ROWS, clips_name='egocvr_data.csv') -> Path:
    "A tiny EgoCVR pair: a clip table of two recordings (5 clips each) and annotation `rows`."
    folder.mkdir(parents=True, exist_ok=True)
    (folder/clips_name).write_text('clip_name,narration_text,video_uid\n' +
                                   ''.join(f'{u}_{i},#C C {v} the {o},{u}\n' for u, i, v, o in CLIPS))
    (folder/'ann.csv').write_text('video_clip_id,target_clip_ids,instruction,modified_captions\n' +
                                  '\n'.join(rows) + '\n')
    return folder/'ann.csv'


def test_several_targets_and_extra_columns(tmp_path):
    ds = load_egocvr(egocvr(tmp_path))
    assert (len(ds), len(ds.gallery), ds.name) == (6, 10, 'egocvr:ann')
    assert ds[0].targets == ('u1_1', 'u1_4') and ds[0].target == 'u1_1' and ds[1].targets == ('u1_3',)
    assert ds[0].extra == {'modified_captions': '#C C shakes the sieve'}
    v = ds.videos['u2_3']
    assert (v.caption, v.parent, v.path) == ('#C C takes the bowl', 'u2', None)


@pytest.mark.parametrize('row, why', [
    ("u1_0,\"['u1_1'\",Shake it.,x", r"row 0 \(line 2\) target_clip_ids: \"\['u1_1'\" is not a list"),
    ("u1_0,[],Shake it.,x", r'row 0 \(line 2\) target_clip_ids: .* not a non-empty list'),
    ("u1_0,['u9_9'],Shake it.,x", r"row 0 \(line 2\): clip 'u9_9' is not in the clip table"),
    ("u1_0,['u1_1'], ,x", r'row 0 \(line 2\) instruction: empty'),
    ("../../etc/passwd,['u1_1'],Shake it.,x", r'row 0 \(line 2\) video_clip_id: .* climbs out'),
    ("u1_0,\"['u1_1', '/etc/x']\",Shake it.,x", r'row 0 \(line 2\) target_clip_ids: .* absolute'),
    ("u1_0,\"__import__('os').getcwd()\",Shake it.,x", 'not a list'),
    ("u1_0,['u1_0'],No change.,x", 'the only target is the reference clip'),
])
def test_bad_rows_raise_or_are_skipped(tmp_path, row, why):
    p = egocvr(tmp_path, [row, ROWS[1]])
    with pytest.raises(DataError, match=why): load_egocvr(p)
    ds = load_egocvr(p, on_error='skip')
    assert [q.id for q in ds] == ['1'] and [s['item'] for s in ds.skipped] == ['row 0']


def test_n_stops_reading_the_annotations(tmp_path):
    "`--n`/`n=` bounds parsing: rows past the first n queries are never read (here, an unclosed quote at the end)."
    p = egocvr(tmp_path, ROWS[:3])
    p.write_text(p.read_text() + 'u1_0,"[\'u1_1\', never closed\n')
    with pytest.raises(DataError, match='unclosed quote'): load_dataset(str(p))
    ds = load_dataset(str(p), n=2)
    assert ([q.id for q in ds], ds.skipped, len(ds.gallery)) == (['0', '1'], (), 10)


def test_reference_among_targets_is_dropped_and_clip_table_found_or_named(tmp_path):
    ds = load_egocvr(egocvr(tmp_path, ["u1_0,\"['u1_0', 'u1_1']\",Shake it.,x"]))
    assert ds[0].targets == ('u1_1',)
    other = egocvr(tmp_path/'b', clips_name='clips.csv')
    with pytest.raises(DataError, match='egocvr_data.csv was not found'): load_egocvr(other)
    assert len(load_egocvr(other, other.parent/'clips.csv')) == 6
    assert len(load_dataset(str(other), clips=str(other.parent/'clips.csv'))) == 6
    assert [q.id for q in load_dataset(str(egocvr(tmp_path/'c')), rows='odd')] == ['1', '3', '5']


def test_a_multiline_narration_is_one_line(tmp_path):
    p = egocvr(tmp_path)
    clips = p.parent/'egocvr_data.csv'
    clips.write_text(clips.read_text() + 'u3_0,"#C C puts the lid\non the pot",u3\n')
    assert load_egocvr(p).videos['u3_0'].caption == '#C C puts the lid on the pot'


def unit(s): return [s, np.sqrt(1 - s * s)]       # a unit vector whose score with [1, 0] is s


def test_rank_counts_non_targets_above_the_best_target():
    g = Gallery(['r', 'a', 'b', 't1', 't2'], np.array([unit(x) for x in (1, .95, .5, .2, .9)], np.float32))
    q = np.array([[1., 0.]], np.float32)
    assert rank_targets(g, q, [('t1', 't2')], ['r']).tolist() == [[1, 0]]    # t2 scores best; only a beats it
    assert rank_targets(g, q, ['t1'], ['r']).tolist() == [[3, 0]]
    qs = [Query('q0', 'r', 'e', ('t1', 't2')), Query('q1', 'r', 'e', 't1')]
    assert search(np.repeat(q, 2, 0), qs, g, k=3)[1] == {'q0': [1, 0], 'q1': [3, 0]}


def test_a_tied_target_does_not_count_a_tied_non_target_does():
    g = Gallery(['r', 'a', 't1', 't2', 'c'], np.array([unit(x) for x in (1, .95, .9, .9, .9)], np.float32))
    q = np.array([[1., 0.]], np.float32)
    assert rank_targets(g.subset(range(4)), q, [('t1', 't2')], ['r']).tolist() == [[1, 0]]
    assert rank_targets(g.subset(range(4)), q, ['t1'], ['r']).tolist() == [[1, 1]]       # alone, t2 ties with it
    assert rank_targets(g, q, [('t1', 't2')], ['r']).tolist() == [[1, 1]]                # c is not a target


def test_ranks_from_lists_and_after_reranking_take_the_best_target():
    rec = dict(ids=['a', 't1', 'b', 't2'], scores=[0.9, 0.8, 0.8, 0.1])
    got = [ranking_rank(rec, ['t2', 't1']), ranking_rank(rec, 't2'), ranking_rank(rec, ['z'])]
    assert got == [[1, 1], [3, 0], [np.inf, 0]]
    sl = Shortlist('q', ('a', 't1', 't2', 'b'), (0.9, 0.8, 0.8, 0.7))
    assert best_reranked_rank(sl, 3, ('t1', 't2'), [5, 0]) == [1, 0]    # tied targets in the judged top: no tie
    assert best_reranked_rank(sl, 1, ('t1', 't2'), [5, 0]) == [5, 0]    # none in the judged top: retrieval's rank
    assert best_reranked_rank(Shortlist('q', ('t2', 'a', 't1'), (0.1, 0.9, 0.5)), 3, ('t1', 't2'), [5, 0]) == [0, 0]


def test_local_scope_ranks_each_query_among_its_recordings_clips(tmp_path):
    ann = egocvr(tmp_path/'ego')
    cfg = run_config(preset='toy', dataset=str(ann), routes=['direct'], k=8, rerank_k=4)
    models = Models(cfg)
    ds, folder = run_dataset(cfg, models), RunFolder(tmp_path/'run')
    glob = retrieve(cfg, ds, models, folder, {})
    loc = retrieve(run_config(**{**cfg, 'scope': 'local'}), ds, models, folder, {})
    for q in ds:
        own = {v for v in ds.gallery if ds.videos[v].parent == ds.videos[q.reference].parent} - {q.reference}
        assert set(loc.shortlists[q.id].ids) == own and len(own) == 4
        assert any(ds.videos[v].parent != ds.videos[q.reference].parent for v in glob.shortlists[q.id].ids)
    for row in ('direct', 'edit', 'reference'):
        assert set(loc.ranks[row]) == {q.id for q in ds}
        assert all(sum(loc.ranks[row][i]) <= sum(glob.ranks[row][i]) < 9 for i in loc.ranks[row])
    with pytest.raises(DataError, match='names no recording'): dataset_of(run_config(scope='local'))


def r3covr(*args, cache):
    env = {**os.environ, 'R3COVR_CACHE': str(cache), 'HF_HUB_OFFLINE': '1'}
    return subprocess.run(['r3covr', *args], env=env, capture_output=True, text=True, timeout=600)


def test_cli_run_local_and_eval(tmp_path):
    ann, out = egocvr(tmp_path/'ego'), tmp_path/'run'
    p = r3covr('run', '--dataset', str(ann), '--preset', 'toy', '--out', str(out), '--set', 'scope=local',
               'k=8', 'rerank_k=4', cache=tmp_path/'cache')
    assert p.returncode == 0, p.stderr[-3000:]
    m = json.loads((out/'metrics.json').read_text())
    assert (m['n_queries'], m['n_scored'], m['n_skipped_at_load']) == (6, 6, 0)
    ds = load_egocvr(ann)
    recs = {r['id']: r for r in map(json.loads, (out/'rankings.jsonl').read_text().splitlines())}
    for q in ds:
        assert {ds.videos[v].parent for v in recs[q.id]['ids']} == {ds.videos[q.reference].parent}
        assert len(recs[q.id]['ids']) == 4
    e = r3covr('eval', str(out/'rankings.jsonl'), '--dataset', str(ann), cache=tmp_path/'cache')
    assert e.returncode == 0, e.stderr[-3000:]
    assert f"{m['metrics'][m['final']]['R@1']:.1f}" in e.stdout


@needs_shared
def test_real_dev_files():
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        ds = load_egocvr(EGO/'egocvr_annotations.dev.csv', on_error='skip')
    assert (len(ds) + len(ds.skipped), len(ds), len(ds.videos)) == (1102, 1100, 10666)
    assert [s['item'] for s in ds.skipped] == ['row 615', 'row 705']
    assert sum(len(q.targets) > 1 for q in ds) == 144 and max(len(q.targets) for q in ds) == 9
    assert all(ds.videos[t].parent == ds.videos[q.reference].parent for q in ds for t in q.targets)
    assert all(q.edit and q.extra['modified_captions'] is not None for q in ds)
    assert '15 video(s) have two different captions' in str(w[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        odd = load_dataset(str(EGO/'egocvr_annotations.dev.csv'), rows='odd')
    assert (len(odd), len(odd.gallery)) == (550, 10666)
    local = [len(ds.gallery_for(q, scope='local')) for q in ds]
    assert min(local) >= 1 and 10 < np.mean(local) < 60


def test_the_cpu_egocvr_preset_runs_its_recipe(tmp_path):
    "The named EgoCVR recipe: three routes (the shipped descriptions among them) fused, the top 3 reranked."
    from r3covr.pipeline import run
    ann = egocvr(tmp_path/'ego')
    res = run(tmp_path/'run', preset='cpu-egocvr', dataset=str(ann), k=8)
    assert res['n_scored'] == 6 and res['n_errors'] == 0
    assert {'direct', 'edit', 'description', 'fusion', 'rerank'} <= set(res['rows'])
    assert res['rows']['description'].startswith('provided descriptions (column modified_captions)')
    cfg = json.loads((tmp_path/'run'/'config.json').read_text())
    assert (cfg['rerank_k'], cfg['weight'], cfg['rerank_mode']) == (3, 0.1, 'likelihood')
