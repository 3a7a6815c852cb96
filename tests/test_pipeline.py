"End-to-end runs of the three stages: the frames path on tiny twins, the CLI, and resuming a killed run."
import os
os.environ.setdefault('HF_HUB_OFFLINE', '1')
import csv
import json
import subprocess
import pytest
from r3covr.core import read_jsonl
from r3covr.runfolder import RunFolder
from r3covr.viz import load_run

TINY = ['--preset', 'tiny', '--n', '8', '--set', 'batch_size=2', 'rerank_k=6', 'k=10']


def r3covr(*args, cache, **kw):
    env = {**os.environ, 'R3COVR_CACHE': str(cache), 'HF_HUB_OFFLINE': '1'}
    return subprocess.run(['r3covr', *args], env=env, capture_output=True, text=True, timeout=900, **kw)


@pytest.fixture(scope='module')
def cache(tmp_path_factory): return tmp_path_factory.mktemp('cache')


@pytest.fixture(scope='module')
def full_run(cache, tmp_path_factory):
    out = tmp_path_factory.mktemp('runs')/'full'
    p = r3covr('run', '--dataset', 'synthetic', *TINY, '--out', str(out), cache=cache)
    assert p.returncode == 0, p.stderr[-3000:]
    return out, p.stdout


def test_tiny_frames_path_runs_all_stages(full_run):
    out, stdout = full_run
    m = json.loads((out/'metrics.json').read_text())
    assert m['n_queries'] == 8 and m['n_scored'] == 8
    assert set(m['metrics']) >= {'R3: reason -> retrieve (description)',
                                 'R3: reason -> retrieve (description) -> rerank (pointwise)',
                                 'edit only (no VLM)', 'reference only (no VLM)', 'direct: reference + edit (no VLM)'}
    cfg = json.loads((out/'config.json').read_text())
    assert cfg['view'] == 'frames' and cfg['vlm']['backend'] == 'qwen3vl'
    desc = [json.loads(l) for l in next(out.glob('descriptions-*.jsonl')).read_text().splitlines()]
    assert len(desc) == 8 and all('tokens' in d and 'overflow' in d for d in desc)
    judge = [json.loads(l) for l in next(out.glob('judge-*.jsonl')).read_text().splitlines()]
    assert all(len(j['scores']) == 6 and len(set(j['scores'])) > 1 for j in judge)
    assert 'R@1' in stdout


def test_bad_dataset_is_one_clear_line(cache, tmp_path):
    bad = tmp_path/'bad.csv'; bad.write_text('pth1,edit\n1,x\n')
    p = r3covr('run', '--dataset', str(bad), '--out', str(tmp_path/'r'), cache=cache)
    assert p.returncode == 2 and 'bad.csv' in p.stderr and 'Traceback' not in p.stderr


def test_ablate_writes_one_table_and_one_plot(cache, tmp_path):
    out = tmp_path/'abl'
    p = r3covr('ablate', '--dataset', 'synthetic', '--preset', 'tiny', '--n', '6', '--out', str(out),
               '--budgets', '16,64', '--ks', '2,4', '--weights', '0,1', '--modes', 'pointwise',
               '--set', 'batch_size=2', 'k=8', cache=cache)
    assert p.returncode == 0, p.stderr[-3000:]
    rows = [r for r in read_jsonl(RunFolder(out).path('ablation')) if r['setting'] != 'route']
    assert [(r['setting'], r['value']) for r in rows] == [
        ('rerank', 'off'), ('rerank', 'on'), ('rerank mode', 'pointwise'), ('rerank K', 2), ('rerank K', 4),
        ('blend weight', 0), ('blend weight', 1), ('length budget', 16), ('length budget', 64)]
    assert rows[2]['R@1'] == rows[1]['R@1'] and rows[4]['R@1'] == rows[1]['R@1']   # the base run's mode and depth
    assert rows[5]['R@1'] >= rows[0]['R@1']          # weight 0 keeps the retrieval order (ties counted for the target)
    folder = RunFolder(out)
    assert folder.path('ablation_plot').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    assert '| length budget | 16 |' in folder.path('ablation_table').read_text()
    subs = [folder.sub('base'), folder.sub('budget', 16), folder.sub('budget', 64)]
    assert sorted(p for p in out.iterdir() if p.is_dir()) == sorted(f.dir for f in subs)
    assert [load_run(f).cfg['budget'] for f in subs] == [None, 16, 64]        # each sub-run a run folder


def test_ablate_gives_runs_rows_when_a_text_is_over_the_cap(tmp_path, monkeypatch):
    "Issue 19: with a text over `max_text_tokens`, ablate's rows are the final rows of runs with the same settings."
    monkeypatch.setenv('R3COVR_CACHE', str(tmp_path/'cache'))
    from r3covr.ablate import ABLATION_COLS, ablate
    from r3covr.pipeline import run
    from r3covr.routes import ROW_NAMES
    from r3covr.synthetic import make_synthetic
    syn, f = make_synthetic(n_queries=200), tmp_path/'long.csv'
    with open(f, 'w', newline='') as fh:                       # ten synthetic queries as a CSV; one edit far too long
        w = csv.writer(fh)
        w.writerow(['pth1', 'pth2', 'txt1', 'txt2', 'edit'])
        for k, q in enumerate(list(syn)[:10]):
            w.writerow([f'{k}/{q.reference}', f'{k}/{q.target}', syn.videos[q.reference].caption,
                        syn.videos[q.target].caption, q.edit + ' and make it shiny.' * (300 if k == 3 else 0)])
    s = dict(dataset=str(f), preset='toy', k=6, rerank_k=4, max_text_tokens=32, routes=['direct', 'description'])
    abl = ablate(tmp_path/'abl', budgets=[8], rerank_ks=[2, 4], weights=[0], modes=['likelihood'], route_weights=[2],
                 **s)
    assert abl['base']['n_cut'] == 1
    got = {(r['setting'], r['value']): {c: r[c] for c in ABLATION_COLS} for r in abl['rows']}
    cases = [(('rerank', 'on'), {}, None), (('rerank K', 2), dict(rerank_k=2), None),
             (('blend weight', 0), dict(weight=0), None),
             (('rerank mode', 'likelihood'), dict(rerank_mode='likelihood'), None),
             (('weight of description', 2), dict(rerank=False, route_weights={'description': 2}), None),
             (('length budget', 8), dict(budget=8, rerank=False), ROW_NAMES['description']),
             (('route', 'direct'), dict(rerank=False), ROW_NAMES['direct'])]
    for i, (row, over, name) in enumerate(cases):
        res = run(tmp_path/f'run-{i}', **{**s, **over})
        m = res['metrics'][name or res['final']]
        assert got[row] == {c: m[c] for c in ABLATION_COLS}, (row, got[row], m)
    folder = RunFolder(abl['folder'])
    for sub in (folder.sub('base'), folder.sub('weight', 'description', 2), folder.sub('budget', 8)):
        assert load_run(sub).cfg['max_text_tokens'] == 32 and load_run(sub).ranks   # each sub-run a run folder


def test_query_pooling_runs_and_tends_to_mean_pooling(full_run, cache, tmp_path):
    "pooling=query on the frames path; at a huge temperature its weights are uniform, so scores equal mean pooling's."
    ref, _ = full_run
    runs = {}
    for name, temp in (('sharp', '0.05'), ('flat', '1e6')):
        out = tmp_path/name; out.mkdir()
        for f in [*ref.glob('generations-*.jsonl'), *ref.glob('descriptions-*.jsonl')]:   # same reasoning, read back
            (out/f.name).write_text(f.read_text())
        p = r3covr('run', '--dataset', 'synthetic', *TINY, 'pooling=query', f'pool_temperature={temp}', 'rerank=false',
                   '--out', str(out), cache=cache)
        assert p.returncode == 0, p.stderr[-3000:]
        cfg = json.loads((out/'config.json').read_text())
        assert cfg['pooling'] == 'query'
        assert cfg['keys']['reason'] == json.loads((ref/'config.json').read_text())['keys']['reason']
        assert json.loads((out/'metrics.json').read_text())['n_scored'] == 8
        runs[name] = {r['id']: dict(zip(r['ids'], r['scores']))
                      for r in map(json.loads, next(out.glob('shortlists-*.jsonl')).read_text().splitlines())}
    mean = {r['id']: dict(zip(r['ids'], r['scores']))
            for r in map(json.loads, next(ref.glob('shortlists-*.jsonl')).read_text().splitlines())}
    pairs = [(mean[q][v], s) for q in mean for v, s in runs['flat'][q].items() if v in mean[q]]
    assert len(pairs) > 40 and max(abs(a - b) for a, b in pairs) < 1e-4
    assert runs['sharp'] != runs['flat']


def test_query_pooling_refused_in_caption_view(cache, tmp_path):
    p = r3covr('run', '--preset', 'cpu', '--n', '2', '--set', 'pooling=query', '--out', str(tmp_path/'r'), cache=cache)
    assert p.returncode == 2 and 'by caption' in p.stderr and 'Traceback' not in p.stderr


ROUTE_CASES = {  # every route, every fusion, every rerank mode, through the frames path on the tiny twins
    'five routes, z-sum, pointwise logit': dict(routes=['description', 'direct', 'lexical', 'reference', 'edit'],
                                                fusion='sum', rerank_mode='pointwise', judge_score='logit'),
    'gated blend, tournament': dict(routes=['direct', 'description'], fusion='gated', gate=-1.0,
                                    rerank_mode='tournament', margin=0.0),
    'rrf, likelihood': dict(routes=['direct', 'lexical'], fusion='rrf', rerank_mode='likelihood'),
}

@pytest.mark.parametrize('case', list(ROUTE_CASES))
def test_tiny_frames_path_every_route_fusion_and_rerank_mode(case, cache, tmp_path, monkeypatch):
    monkeypatch.setenv('R3COVR_CACHE', str(cache))
    from r3covr.pipeline import run
    s = ROUTE_CASES[case]
    res = run(tmp_path/'run', preset='tiny', n=4, batch_size=2, k=8, rerank_k=4, **s)
    assert res['n_scored'] == 4 and res['n_errors'] == 0, res
    assert set(s['routes']) | {'fusion', 'rerank'} <= set(res['rows']), res['rows']
    assert res['final_row'] == 'rerank' and res['final'] == res['rows']['rerank'] and res['shortlist_row'] == 'fusion'
    assert all(m['n_scored'] == 4 for m in res['metrics'].values())
    judge = read_jsonl(next((tmp_path/'run').glob('judge-*.jsonl')))
    assert len(judge) == 4
    for j in judge:
        if s['rerank_mode'] == 'tournament':      # K x K preferences, no self-comparison
            assert len(j['scores']) == 4
            assert all(row[i] is None and sum(x is not None for x in row) == 3 for i, row in enumerate(j['scores']))

        else: assert len(j['scores']) == 4 and len(set(j['scores'])) > 1
    assert len(read_jsonl(tmp_path/'run'/'rankings.jsonl')) == 4


def test_frames_view_without_captions_gets_them_from_the_vlm(cache, tmp_path, monkeypatch):
    "captions='vlm': the VLM writes one caption per reference and gallery video, once; lexical and rerank read them."
    monkeypatch.setenv('R3COVR_CACHE', str(tmp_path/'cache'))
    from dataclasses import replace
    from r3covr.core import ConfigError
    from r3covr.models import Models
    from r3covr.pipeline import dataset_of, run
    from r3covr.settings import run_config
    s = dict(preset='tiny', n=4, batch_size=2, k=8, rerank_k=4, routes=['direct', 'lexical'], rerank_mode='likelihood')
    ds = dataset_of(run_config(**s))
    bare = replace(ds, videos={v: replace(x, caption=None) for v, x in ds.videos.items()})
    with pytest.raises(ConfigError, match='lexical needs a caption'): run(tmp_path/'none', bare, **s)
    models, calls = Models(run_config(**s, captions='vlm')), []
    generate = models.vlm.generate
    models.vlm.generate = lambda prompts, **kw: calls.append(len(prompts)) or generate(prompts, **kw)
    res = run(tmp_path/'vlm', bare, models, **s, captions='vlm')
    assert res['n_scored'] == 4 and res['n_errors'] == 0 and {'lexical', 'fusion', 'rerank'} <= set(res['rows'])
    recs = read_jsonl(next((tmp_path/'cache'/'captions').glob('*/captions.jsonl')))
    assert {r['id'] for r in recs} == set(bare.gallery) | {q.reference for q in bare}
    assert all(r['caption'] and '\n' not in r['caption'] for r in recs) and sum(calls) == len(recs)
    run(tmp_path/'again', bare, models, **s, captions='vlm')
    assert sum(calls) == len(recs)                                   # cached with the gallery: nothing asked again
