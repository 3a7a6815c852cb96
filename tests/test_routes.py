"""The route interface the pipeline calls: `route_gallery` asks its encoder callables only for what a route needs."""
import numpy as np
import pytest
from r3covr.core import ConfigError, CoVRDataset, Query, Video
from r3covr.retrieve import Gallery, retrieve
from r3covr.routes import ROUTES, fuse, reference_vectors, route_gallery
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
    assert ranks == {'q0': 0, 'q1': 0}
    assert [s.ids[0] for s in sls] == ['t0', 't1']
    assert np.isfinite(g.scores(reps)).all()
