"""The route interface the pipeline calls: `route_gallery` asks its encoder callables only for what a route needs."""
import json
from dataclasses import replace
import numpy as np
import pytest
import r3covr.pipeline
from r3covr.core import ConfigError, CoVRDataset, DataError, Query, Video, read_jsonl
from r3covr.pipeline import dataset_of, run
from r3covr.reason import provided_descriptions
from r3covr.settings import run_config
from r3covr.retrieve import Gallery, retrieve
from r3covr.routes import ROUTES, fuse, reference_vectors, route_gallery, route_rows
from r3covr.toy import ToyEncoder

CAPTIONS = dict(r0='a red car drives down a street', t0='a blue car drives down a street',
                d0='a red car parks on a street', r1='a dog runs on the beach', t1='a dog swims in the sea')
DS = CoVRDataset('t', (Query('q0', 'r0', 'make the car blue', 't0'), Query('q1', 'r1', 'let the dog swim', 't1')),
                 {v: Video(v, caption=c) for v, c in CAPTIONS.items()}, ('t0', 'd0', 'r1', 't1'))
DESC = {'q0': dict(description='a blue car drives down a street'), 'q1': dict(description='a dog swims in the sea')}
ENC = ToyEncoder()
GALLERY = Gallery(list(DS.gallery), ENC.embed_texts([CAPTIONS[g] for g in DS.gallery]))


class Calls:
    "Encoder callables that record what they were asked."
    def __init__(self): self.texts, self.videos = [], []
    def text_vectors(self, texts):
        self.texts.append(list(texts)); return ENC.embed_texts(texts)
    def video_vectors(self, ids):
        self.videos.append(list(ids)); return ENC.embed_texts([CAPTIONS[v] for v in ids])


def test_caption_view_embeds_no_video():
    calls = Calls()
    for r in ROUTES:
        route_gallery(r, dict(view='caption'), DS, GALLERY, list(DS), DESC, calls.text_vectors, calls.video_vectors)
    assert calls.videos == []
    assert len(calls.texts) == len(ROUTES) - 1          # every dense route once; lexical needs no vectors


def test_frames_view_asks_only_for_references_outside_the_gallery():
    frames = dict(view='frames')
    calls = Calls()
    route_gallery('reference', frames, DS, GALLERY, list(DS), DESC, calls.text_vectors, calls.video_vectors)
    assert (calls.videos, calls.texts) == ([['r0']], [])
    calls = Calls()
    route_gallery('reference', frames, DS, GALLERY, [DS[1]], DESC, calls.text_vectors, calls.video_vectors)
    assert calls.videos == []
    assert reference_vectors(GALLERY, [], Calls().video_vectors).shape == (0, 0)


def test_missing_captions_or_an_unknown_route_raise_before_search():
    calls = Calls()
    bare = CoVRDataset('t', DS.queries, {v: Video(v) for v in CAPTIONS}, DS.gallery)
    with pytest.raises(ConfigError, match='no captions'):
        route_gallery('reference', dict(view='caption'), bare, GALLERY, list(bare), DESC, calls.text_vectors,
                      calls.video_vectors)
    with pytest.raises(ConfigError, match='unknown route'):
        route_gallery('nonsense', dict(view='caption'), DS, GALLERY, list(DS), DESC, calls.text_vectors,
                      calls.video_vectors)


@pytest.mark.parametrize('fusion', ['sum', 'rrf'])
def test_a_fused_gallery_ranks_every_query(fusion):
    calls, qs = Calls(), list(DS)
    parts = {r: route_gallery(r, dict(view='caption'), DS, GALLERY, qs, DESC, calls.text_vectors, calls.video_vectors)
             for r in ('description', 'lexical')}
    g, reps = fuse(dict(fusion=fusion, route_weights={}, gate=0.5, k=3), GALLERY, parts)
    sls, ranks = retrieve(reps, qs, g, k=3)
    assert ranks == {'q0': [0, 0], 'q1': [0, 0]}
    assert [s.ids[0] for s in sls] == ['t0', 't1']
    assert np.isfinite(g.scores(reps)).all()


# descriptions from elsewhere (issue 20): a JSONL file or a dataset column, read instead of generated

class Words:
    "An encoder stand-in that counts words as tokens, with an 8-token window."
    context_length = 8
    def count_tokens(self, t): return len(t.split())


def test_provided_descriptions_record_every_bad_line_and_query(tmp_path):
    src = tmp_path/'d.jsonl'
    src.write_bytes(b'{"id": "q0", "description": "a blue car drives down a street"}\n'
                    b'{"id": "q0", "description": "a second one"}\n'           # 2: a duplicate, the first is kept
                    b'{"id": "q1", "description": "  "}\n'                     # 3: empty: q1's failure
                    b'["q1", "a list"]\n'                                      # 4: not an object
                    b'{"description": "no id"}\n'                              # 5
                    b'{"id": "q1", "description": 7}\n'                        # 6: not a text
                    b'{"id": "q1", "descr\xff": "x"}\n'                        # 7: not UTF-8
                    b'{"id": "q0",\n'                                          # 8: cut short
                    b'\n'
                    b'{"id": "other", "description": "a query of another split"}\n')
    qs = [Query('q0', 'r0', 'make it blue'), Query('q1', 'r1', 'let it swim'), Query('q2', 'r2', 'zoom out')]
    recs, failed, skipped = provided_descriptions(str(src), qs, Words())
    assert list(recs) == ['q0'] and recs['q0']['description'] == 'a blue car drives down a street'
    assert (recs['q0']['tokens'], recs['q0']['overflow'], recs['q0']['source']) == (7, False, 'file d.jsonl')
    assert [i for i, _ in failed] == ['q1', 'q2']
    assert 'line 3' in failed[0][1] and 'no description' in failed[1][1]
    assert [i for i, _ in skipped] == [f'd.jsonl:{n}' for n in (2, 4, 5, 6, 7, 8)] + ['d.jsonl']
    assert "1 descriptions for ids that are no query" in skipped[-1][1] and "'other'" in skipped[-1][1]
    assert all('\n' not in why for _, why in failed + skipped)
    again, _, _ = provided_descriptions(str(src), qs, None, done=recs)      # unchanged: no encoder needed
    assert again == recs
    with pytest.raises(DataError, match='none of the 1 queries has one'):
        provided_descriptions(str(src), [Query('q9', 'r', 'e')], Words())
    with pytest.raises(ConfigError, match='no such file'):
        provided_descriptions(str(tmp_path/'gone.jsonl'), qs, Words())


def test_a_provided_row_says_where_its_descriptions_came_from():
    assert route_rows(dict(descriptions=None)) == route_rows({})
    assert route_rows(dict(descriptions='column:modified_captions'))['description'] == \
        'provided descriptions (column modified_captions) -> retrieve'


PIPELINE_READS = 'provided_descriptions' in vars(r3covr.pipeline)
needs_pipeline = pytest.mark.skipif(not PIPELINE_READS, reason='pipeline.reason does not read the `descriptions` '
                                    'setting yet (issue 20: the lead applies the pipeline change of helper A2)')


def _target_texts(ds):
    "A perfect description of each query: its target's caption."
    return {q.id: ds.videos[q.target].caption for q in ds}


@needs_pipeline
def test_a_jsonl_source_reaches_the_description_route_and_rerank(tmp_path, monkeypatch):
    monkeypatch.setenv('R3COVR_CACHE', str(tmp_path/'cache'))
    ds = dataset_of(run_config(preset='toy', n=8))
    texts = _target_texts(ds)
    src = tmp_path/'bigger-model.jsonl'
    src.write_text(''.join(json.dumps(dict(id=q.id, description=texts[q.id])) + '\n' for q in ds.queries[:6])
                   + 'not json\n' + json.dumps(dict(id='elsewhere', description='x y')) + '\n')
    m = run(tmp_path/'run', preset='toy', n=8, descriptions=str(src))
    row = 'provided descriptions (file bigger-model.jsonl) -> retrieve'
    assert m['rows']['description'] == row and m['final'] == f'{row} -> rerank (pointwise)'
    assert (m['n_scored'], m['metrics'][row]['R@1']) == (6, 100.)
    errors = read_jsonl(tmp_path/'run'/'errors.jsonl')
    assert [(e['stage'], e['id']) for e in errors if e['stage'] in ('load', 'reason')] == \
        [('load', 'bigger-model.jsonl:7'), ('load', 'bigger-model.jsonl'), ('reason', ds.queries[6].id),
         ('reason', ds.queries[7].id)]
    ranked = {r['id']: r['description'] for r in read_jsonl(tmp_path/'run'/'rankings.jsonl')}
    assert ranked == {q.id: texts[q.id] for q in ds.queries[:6]}      # the judge was told the provided texts


@needs_pipeline
def test_a_column_source_reaches_the_description_route(tmp_path, monkeypatch):
    monkeypatch.setenv('R3COVR_CACHE', str(tmp_path/'cache'))
    ds = dataset_of(run_config(preset='toy', n=6))
    texts = _target_texts(ds)
    ds = replace(ds, queries=tuple(replace(q, extra={'modified_captions': texts[q.id]}) for q in ds))
    m = run(tmp_path/'run', ds=ds, preset='toy', rerank=False, descriptions='column:modified_captions')
    row = 'provided descriptions (column modified_captions) -> retrieve'
    assert (m['final'], m['n_scored'], m['metrics'][row]['R@1']) == (row, 6, 100.)
