"Loaders of the real benchmark files, and every kind of bad input they must refuse by name."
import os
os.environ.setdefault('HF_HUB_OFFLINE', '1')
import json
from pathlib import Path
import pytest
from r3covr.core import DataError
from r3covr.data import (load_webvid_covr, load_covr_r, load_challenge, load_submission, write_submission,
                         gallery_from_folder)

DATA = Path(__file__).resolve().parents[1].parent/'shared'/'data'
CSV500 = DATA/'webvid-covr'/'webvid8m-covr_test.dev500.csv'
VAL, TEST = DATA/'covr-r'/'val-set_no-labels.json', DATA/'covr-r'/'test-set_no-labels.json'
needs_shared = pytest.mark.skipif(not DATA.exists(), reason='shared data (../shared/data) not present')

HEADER = 'txt1,txt2,sim_txt,pth1,pth2,edit,scores\n'
GOOD_ROW = '"A car, red",A car blue,0.9,1/10,1/11,make it blue,"[0.1, 0.2]"\n'

def write(path, text): path.write_text(text); return path
def jwrite(path, obj): path.write_text(json.dumps(obj)); return path
def rec(src='1/10', tgt='1/11', edit='make it blue', **kw):
    return dict(video_source=src, video_target=tgt, modification_text=edit, **kw)
def cq(i=0, src='1/10', edit='make it blue'): return dict(id=i, video_source=src, modification_text=edit)

# ---------------------------------------------------------------- real files

@needs_shared
def test_real_webvid_covr():
    ds = load_webvid_covr(CSV500, root='/videos')
    assert (len(ds), len(ds.gallery), ds.skipped) == (500, 500, ())
    assert set(ds.gallery) == {q.target for q in ds}
    assert all(q.edit and q.reference in ds.videos and ds.videos[q.target].caption for q in ds)
    assert ds.videos[ds[0].reference].path == Path('/videos')/(ds[0].reference + '.mp4')
    assert len(load_webvid_covr(CSV500, gallery='all').gallery) == len({v for q in ds for v in (q.reference, q.target)})

@needs_shared
def test_real_challenge_counts():
    val, test = load_challenge(VAL), load_challenge(TEST)
    count = lambda ds, s: sum(q.source == s for q in ds)
    assert (len(val), count(val, 'webvid'), count(val, 'ss2')) == (2634, 1365, 1269)
    assert (len(test), count(test, 'webvid'), count(test, 'ss2')) == (301, 4, 297)
    assert len({q.id for q in val}) == 2634 and val[0].id == 'webvid/0' and val[1365].id == 'ss2/0'
    assert val.videos[val[1365].reference].source == 'ss2'

@needs_shared
def test_real_submission_round_trip(tmp_path):
    val = load_challenge(VAL)
    ranks = {q.id: val.gallery_for(q, merged=False)[:60] for q in val}
    traces = {q.id: f'trace of {q.id}' for q in val}
    write_submission(tmp_path/'a.json', val, ranks, traces)
    back = load_submission(tmp_path/'a.json')
    assert back.rankings == {k: v[:50] for k, v in ranks.items()} and back.traces == traces
    assert back.dataset.queries == val.queries
    assert [q.meta['record'] for q in back.dataset] == [q.meta['record'] for q in val]
    write_submission(tmp_path/'b.json', back.dataset, back.rankings, back.traces)
    assert (tmp_path/'a.json').read_bytes() == (tmp_path/'b.json').read_bytes()
    sub, orig = json.loads((tmp_path/'a.json').read_text()), json.loads(VAL.read_text())
    assert [list(g) for g in sub] == [['webvid'], ['ss2']]
    strip = lambda r: {k: v for k, v in r.items() if k not in ('video_target', 'reasoning')}
    assert [[strip(r) for r in g[s]] for g in sub for s in g] == [g[s] for g in orig for s in g]
    ss2 = sub[1]['ss2'][0]
    assert all(isinstance(v, int) for v in ss2['video_target']) and len(ss2['video_target']) == 50
    assert all(isinstance(v, str) for v in sub[0]['webvid'][0]['video_target'])

# ---------------------------------------------------------------- WebVid-CoVR CSV

def test_csv_quoted_commas_and_gallery(tmp_path):
    ds = load_webvid_covr(write(tmp_path/'c.csv', HEADER + GOOD_ROW + 'A car blue,c,0.5,1/11,2/20,swap it,[]\n'))
    assert ds.videos['1/10'].caption == 'A car, red' and ds.gallery == ('1/11', '2/20')
    assert ds.gallery_for(ds[1]) == ['2/20']   # reference 1/11 is a target too: excluded

def test_csv_missing_columns(tmp_path):
    with pytest.raises(DataError, match=r"m\.csv: missing required column\(s\) \['txt2', 'edit'\]"):
        load_webvid_covr(write(tmp_path/'m.csv', 'pth1,pth2,txt1\n1/1,1/2,a\n'))

def test_csv_empty_edit(tmp_path):
    p = write(tmp_path/'e.csv', HEADER + GOOD_ROW + 'a,b,0.5,1/12,1/13,   ,[]\n')
    with pytest.raises(DataError, match=r'e\.csv: row 1 \(line 3\) edit: empty'): load_webvid_covr(p)

@pytest.mark.parametrize('bad', ['../../etc/passwd', '/etc/passwd', '1/../../x'])
def test_csv_escaping_ids(tmp_path, bad):
    p = write(tmp_path/'t.csv', HEADER + GOOD_ROW + f'a,b,0.5,{bad},1/13,make it red,[]\n')
    with pytest.raises(DataError, match=r't\.csv: row 1 .*pth1'): load_webvid_covr(p)
    with pytest.raises(DataError, match=r't\.csv: row 1 .*pth1'): load_webvid_covr(p, root=tmp_path)

def test_csv_shifted_and_short_rows(tmp_path):
    with pytest.raises(DataError, match=r'row 0 \(line 2\) has more fields'):
        load_webvid_covr(write(tmp_path/'s.csv', HEADER + 'A car, red,b,0.9,1/10,1/11,edit,[]\n'))
    with pytest.raises(DataError, match=r'row 0 .*(pth2|edit)'):
        load_webvid_covr(write(tmp_path/'u.csv', HEADER + 'a,b,0.9,1/10\n'))

def test_csv_missing_or_empty_file(tmp_path):
    with pytest.raises(DataError, match='nope.csv: annotation file not found'):
        load_webvid_covr(tmp_path/'nope.csv')
    with pytest.raises(DataError, match='empty.csv: missing required'):
        load_webvid_covr(write(tmp_path/'empty.csv', ''))

def test_csv_skip_records_rows(tmp_path):
    p = write(tmp_path/'k.csv', HEADER + GOOD_ROW + 'a,b,0.5,1/12,1/13,,[]\n' + 'a,b,0.5,../x,1/13,e,[]\n'
              + 'a,b,0.5,1/14,1/15,e,[]\n')
    ds = load_webvid_covr(p, on_error='skip')
    assert [q.id for q in ds] == ['0', '3'] and ds.gallery == ('1/11', '1/15')
    assert [s['item'] for s in ds.skipped] == ['row 1', 'row 2'] and 'k.csv: row 2' in ds.skipped[1]['reason']
    assert '1/13' not in ds.videos   # a skipped row leaves no video behind
    with pytest.raises(ValueError): load_webvid_covr(p, on_error='ignore')

def test_csv_caption_conflict_keeps_first(tmp_path):
    p = write(tmp_path/'d.csv', HEADER + GOOD_ROW + 'other caption,x,0.5,1/10,1/12,e,[]\n')
    with pytest.warns(UserWarning, match=r"d\.csv: 1 video.*'1/10'"): ds = load_webvid_covr(p)
    assert ds.videos['1/10'].caption == 'A car, red' and len(ds) == 2

# ---------------------------------------------------------------- CoVR-R annotation JSON

def test_covr_r_sources_paths_extra(tmp_path):
    p = jwrite(tmp_path/'r.json', [rec(description_source='a', description_target='b', reasoning={'camera': 'static'}),
                                   rec(74225, 95120, 'swap it')])
    ds = load_covr_r(p, root={'webvid': tmp_path/'wv', 'ss2': tmp_path/'ss'})
    assert [(q.reference, q.target, q.source) for q in ds] == [('1/10', '1/11', 'webvid'), ('74225', '95120', 'ss2')]
    assert ds[0].extra == {'description_source': 'a', 'description_target': 'b', 'reasoning': {'camera': 'static'}}
    assert ds.videos['1/11'].caption == 'b' and ds.videos['74225'].path == tmp_path/'ss'/'74225.webm'
    assert set(ds.gallery) == {'1/10', '1/11', '74225', '95120'}
    assert load_covr_r(p, gallery='targets').gallery == ('1/11', '95120')
    assert load_covr_r(p, root=tmp_path).videos['1/10'].path == tmp_path/'1'/'10.mp4'

def test_covr_r_malformed_json(tmp_path):
    with pytest.raises(DataError, match=r'bad\.json: malformed JSON'):
        load_covr_r(write(tmp_path/'bad.json', '[{"video_source": "1/2",'))

@pytest.mark.parametrize('data,msg', [({'a': rec()}, 'expected a JSON list'),
                                      ([rec(), 'oops'], r'record 1: expected an object'),
                                      ([rec(), {'video_source': '1/2', 'modification_text': 'x'}],
                                       r"record 1: missing key\(s\) \['video_target'\]"),
                                      ([rec(edit='')], 'record 0 modification_text: empty'),
                                      ([rec(tgt=None)], 'record 0 video_target'),
                                      ([rec(src='../../etc/passwd')],
                                       "record 0 video_source: video id '../../etc/passwd'"),
                                      ([rec(src='/etc/passwd')], 'record 0 video_source.*absolute')])
def test_covr_r_bad_records(tmp_path, data, msg):
    with pytest.raises(DataError, match=r'w\.json.*' + msg): load_covr_r(jwrite(tmp_path/'w.json', data))

def test_covr_r_missing_source_root_and_skip(tmp_path):
    p = jwrite(tmp_path/'r.json', [rec(), rec(74225, 95120), rec(edit=' ')])
    with pytest.raises(DataError, match=r"record 1: no video root given for source 'ss2'"):
        load_covr_r(p, root={'webvid': tmp_path})
    ds = load_covr_r(p, root={'webvid': tmp_path}, on_error='skip')
    assert [q.id for q in ds] == ['0'] and [s['item'] for s in ds.skipped] == ['record 1', 'record 2']

# ---------------------------------------------------------------- challenge files and submissions

def challenge(tmp_path, groups=None):
    groups = groups or [{'webvid': [cq(0, '1/10'), cq(1, '1/11')]}, {'ss2': [cq(0, 74225), cq(1, 95120)]}]
    return jwrite(tmp_path/'val.json', groups)

def test_challenge_ids_and_referenced_gallery(tmp_path):
    ds = load_challenge(challenge(tmp_path), root=tmp_path)
    assert [q.id for q in ds] == ['webvid/0', 'webvid/1', 'ss2/0', 'ss2/1']
    assert ds[2].meta['orig_id'] == 0 and ds[2].meta['source'] == 'ss2' and ds[2].target is None
    assert ds.gallery == ('1/10', '1/11', '74225', '95120') and ds.videos['74225'].path == tmp_path/'74225.webm'

def test_challenge_gallery_folder(tmp_path):
    for f in ['g/1/10.mp4', 'g/1/12.mp4', 'g/74225.webm', 'g/x.txt', 'h/5.webm']:
        (tmp_path/f).parent.mkdir(parents=True, exist_ok=True); (tmp_path/f).touch()
    ds = load_challenge(challenge(tmp_path), gallery_root=tmp_path/'g')
    assert ds.gallery == ('1/10', '1/12', '74225') and ds.videos['1/12'].source == 'webvid'
    assert '95120' in ds.videos   # referenced videos stay known even when not in the folder
    ds = load_challenge(challenge(tmp_path), gallery_root={'webvid': tmp_path/'g', 'ss2': tmp_path/'h'})
    assert set(ds.gallery) == {'1/10', '1/12', '74225', '5'} and ds.videos['5'].source == 'ss2'
    with pytest.raises(DataError, match='nothere: gallery folder not found'): gallery_from_folder(tmp_path/'nothere')

def test_gallery_folder_refuses_escaping_links(tmp_path):
    (tmp_path/'g').mkdir(); (tmp_path/'outside.mp4').touch()
    (tmp_path/'g'/'evil.mp4').symlink_to(tmp_path/'outside.mp4')
    with pytest.raises(DataError, match="'evil' resolves outside"): gallery_from_folder(tmp_path/'g')

@pytest.mark.parametrize('groups,msg', [({'webvid': []}, 'expected a JSON list'),
                                        ([['webvid']], 'group 0 should map a source name'),
                                        ([{'webvid': [cq(), {'id': 1, 'video_source': '1/2'}]}],
                                         r"webvid\[1\]: missing key\(s\) \['modification_text'\]"),
                                        ([{'ss2': [cq(0, 5, '')]}], r'ss2\[0\] modification_text: empty'),
                                        ([{'ss2': [cq(0, '../../etc/passwd')]}],
                                         r"ss2\[0\] video_source: video id '../../etc/passwd'"),
                                        ([{'ss2': [cq(0, 5), cq(0, 6)]}], r"ss2\[1\]: duplicate query id 'ss2/0'")])
def test_challenge_bad_structure(tmp_path, groups, msg):
    with pytest.raises(DataError, match=r'val\.json.*' + msg): load_challenge(challenge(tmp_path, groups))

def test_challenge_malformed_and_skip(tmp_path):
    with pytest.raises(DataError, match=r'v\.json: malformed JSON'):
        load_challenge(write(tmp_path/'v.json', '[{"webvid": ['))
    ds = load_challenge(challenge(tmp_path, [{'ss2': [cq(0, 5), cq(1, '/abs'), cq(0, 6), cq(3, 7)]}]), on_error='skip')
    assert [q.id for q in ds] == ['ss2/0', 'ss2/3'] and [s['item'] for s in ds.skipped] == ['ss2[1]', 'ss2[2]']

def test_submission_round_trip_and_errors(tmp_path):
    ds = load_challenge(challenge(tmp_path))
    ranks = {q.id: [v for v in ds.gallery if v != q.reference] for q in ds}
    write_submission(tmp_path/'s.json', ds, ranks, {'ss2/0': 'it is a pen'})
    sub = json.loads((tmp_path/'s.json').read_text())
    assert sub[1]['ss2'][0] == {**cq(0, 74225), 'video_target': ['1/10', '1/11', 95120], 'reasoning': 'it is a pen'}
    back = load_submission(tmp_path/'s.json')
    assert back.rankings == ranks and back.traces['ss2/0'] == 'it is a pen' and back.traces['webvid/0'] == ''
    assert back.dataset.queries == ds.queries
    with pytest.raises(DataError, match='no ranking for query ss2/1'):
        write_submission(tmp_path/'x.json', ds, {k: v for k, v in ranks.items() if k != 'ss2/1'})
    with pytest.raises(DataError, match='query webvid/0: ranking lists a video twice'):
        write_submission(tmp_path/'x.json', ds, {**ranks, 'webvid/0': ['1/11', '1/11']})
    sub = json.loads(write_submission(tmp_path/'k.json', ds, ranks, k=1).read_text())
    assert len(sub[0]['webvid'][0]['video_target']) == 1

def test_submission_bad_answers(tmp_path):
    with pytest.raises(DataError, match=r"query ss2/0: video_target should be a list"):
        load_submission(jwrite(tmp_path/'s.json', [{'ss2': [{**cq(0, 5), 'video_target': 7}]}]))
    with pytest.raises(DataError, match=r"query ss2/0 video_target: video id '../x'"):
        load_submission(jwrite(tmp_path/'s.json', [{'ss2': [{**cq(0, 5), 'video_target': [6, '../x']}]}]))
