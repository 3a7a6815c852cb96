"Figures and the query explorer drawn from real run folders: tiny twins (frames view), toy backends (caption view), WebVid-CoVR text."
import os
os.environ.setdefault('HF_HUB_OFFLINE', '1')
import html, json
from dataclasses import replace
from pathlib import Path
import numpy as np
import pytest
from PIL import Image
from r3covr.core import DataError
from r3covr.models import Encoder, VLM, l2norm, BACKENDS
from r3covr.pipeline import Run
from r3covr.viz import (RunFiles, load_run, save_run_figures, explore, plot_query, plot_lengths, example_queries,
                        final_ranks, shortlist_rows)

SHARED = Path(__file__).resolve().parents[1].parent/'shared'/'data'
WEBVID = SHARED/'webvid-covr'/'webvid8m-covr_test.dev500.csv'


class ToyEnc(Encoder):
    "Bag-of-words text vectors; frames as raw pixels. An instrument: its scores mean nothing."
    def __init__(self, model='toy', context_length=64, **kw): self.name, self.context_length = model, context_length
    def embed_texts(self, texts):
        out = np.full((len(texts), 64), 1e-3)
        for i, t in enumerate(texts):
            for w in t.lower().split(): out[i, sum(map(ord, w)) % 64] += 1
        return l2norm(out)
    def count_tokens(self, t): return len(t.split())
    def embed_frames(self, fr): return l2norm(fr.array.reshape(len(fr), -1)[:, :64].astype(float) + 1)


class ToyVLM(VLM):
    "Answers with the reference caption; judges by prompt length. An instrument."
    def __init__(self, model='toy', **kw): self.name = model
    def generate(self, prompts, max_new_tokens=64): return [p.videos[0].caption or 'x' for p in prompts]
    def yes_no_logits(self, prompts): return np.array([[len(p.text()) % 7, 3.] for p in prompts], float)


BACKENDS['toyenc'], BACKENDS['toyvlm'] = f'{__name__}:ToyEnc', f'{__name__}:ToyVLM'
TOY = dict(encoder={'backend': 'toyenc', 'model': 'toy'}, vlm={'backend': 'toyvlm', 'model': 'toy'})


@pytest.fixture(scope='module', autouse=True)
def cache(tmp_path_factory):
    old = os.environ.get('R3COVR_CACHE')
    os.environ['R3COVR_CACHE'] = str(tmp_path_factory.mktemp('cache'))
    yield
    if old is None: os.environ.pop('R3COVR_CACHE')
    else: os.environ['R3COVR_CACHE'] = old


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    "A finished run of the tiny twins (real Qwen3-VL and SigLIP-2 classes, random weights), frames view."
    run = Run(tmp_path_factory.mktemp('runs')/'tiny', preset='tiny', n=6, k=20, rerank_k=6, batch_size=3)
    run()
    return run


@pytest.fixture(scope='module')
def toy(tmp_path_factory):
    "A finished caption-view run of the toy backends on 30 synthetic queries, descriptions cut to 8 tokens."
    run = Run(tmp_path_factory.mktemp('runs')/'toy', preset='cpu', n=30, budget=8, **TOY)
    run()
    return run


def png(p:Path) -> Image.Image:
    im = Image.open(p); im.verify()
    return Image.open(p)


def test_save_run_figures_frames_view(tiny):
    paths = save_run_figures(tiny.dir)
    ex = example_queries(tiny.dir)
    names = ['lengths.png', 'rank_shift.png', 'recall.png'] + [f'query-{q}.png' for q in dict.fromkeys(ex.values())]
    assert [p.name for p in paths] == names and all(p.parent == tiny.dir/'figures' for p in paths)
    for p in paths:
        im = png(p)
        assert im.format == 'PNG' and round(im.info['dpi'][0]) == 90 and p.stat().st_size < 200_000
    assert png(paths[0]).size == (450, 252)                  # 5 x 2.8 inches at 90 dpi
    # the strip is as tall as a reference row plus one row per candidate (4 and the target when lower)
    rows = len(shortlist_rows(tiny.dir, next(iter(ex.values())), 4))
    assert png(paths[3]).size == (720, round(90 * (1.7 + .8 * rows)))


def test_folder_gives_back_the_live_ranks(tiny):
    r = load_run(tiny.dir)
    assert r.ranks == {k: tiny.ranks[k] for k in ('R3 retrieve', 'R3 rerank')}
    assert final_ranks(r) == tiny.ranks['R3 rerank']
    assert r.desc == tiny.desc and set(r.judged) == set(tiny.judged)


def test_frame_strip_marks_only_the_target(tiny):
    r = load_run(tiny.dir)
    for qid in r.rankings:
        fig = plot_query(r, qid, n_candidates=3)
        rows = shortlist_rows(r, qid, 3)
        framed = [x for x, ax in zip(rows, fig.axes[2::2]) if ax.spines['left'].get_linewidth() == 3]
        assert [x['id'] for x in framed] == [r.query(qid).target]
        assert all(len(ax.images) == 1 for ax in fig.axes[::2])     # frames view: every video is a frame strip


def test_unreadable_video_falls_back_to_its_caption(tiny, tmp_path):
    r = load_run(tiny.dir)
    qid = next(iter(r.rankings)); ref = r.query(qid).reference
    (tmp_path/'broken.mp4').write_bytes(b'not a video')
    vids = {**tiny.ds.videos, ref: replace(tiny.ds.videos[ref], path=tmp_path/'broken.mp4')}
    fig = plot_query(RunFiles(tiny.dir, replace(tiny.ds, videos=vids)), qid, n_candidates=2)
    assert not fig.axes[0].images and tiny.ds.videos[ref].caption.split()[0] in fig.axes[0].texts[0].get_text()


def test_explorer_static_html_frames_view(tiny):
    ex = explore(tiny.dir)                                     # no live kernel here: static
    assert ex.static and set(ex._repr_mimebundle_()) == {'text/plain', 'text/html'}
    h = ex._repr_html_()
    shown = (ex.qids(True) or ex.qids(False))[:ex.n_static]
    for qid in shown:
        q = tiny.ds.queries[[x.id for x in tiny.ds].index(qid)]
        assert f'<b>{qid}</b>' in h and html.escape(q.edit) in h and q.target in h
    assert h.count('data:image/jpeg;base64,') >= len(shown) * (1 + 2 * 5)   # reference + both top-5 lists


def test_explorer_failures_only(toy):
    ex = explore(toy.dir, failures_only=True, static=True)
    fails = [i for i, k in toy.ranks['R3 rerank'].items() if k > 0]
    assert ex.qids() == fails and ex.qids(False) == [q.id for q in toy.ds]
    assert f'{len(toy.ds)} queries, {len(toy.ds)} with a target rank, {len(fails)} failures' in ex.html()


def test_caption_view_and_overflow(toy):
    r = load_run(toy.dir)
    fig = plot_lengths(r)
    ax = fig.axes[0]
    assert ax.lines[0].get_xdata()[0] == 8 == json.loads((toy.dir/'metrics.json').read_text())['length']['budget']
    share = np.mean([d['overflow'] for d in r.desc.values()])
    assert share > 0 and f'{share:.0%} overflow' in ax.get_title()
    qid = next(iter(r.rankings))
    fig = plot_query(r, qid)
    assert sum(len(a.images) for a in fig.axes) == 0          # caption view: captions, not frames
    assert 'TARGET' in ''.join(t.get_text() for a in fig.axes for t in a.texts)


def test_bad_inputs_name_the_item(toy, tmp_path):
    with pytest.raises(DataError, match='not a run folder'): load_run(tmp_path)
    with pytest.raises(DataError, match="'q9999'"): plot_query(toy.dir, 'q9999')
    (tmp_path/'config.json').write_text(json.dumps({'keys': {}, 'encoder': {}}))
    with pytest.raises(DataError, match='no descriptions'): plot_lengths(tmp_path)


@pytest.mark.skipif(not WEBVID.exists(), reason='shared WebVid-CoVR data absent')
def test_webvid_text_without_video_files(tmp_path):
    "Real benchmark text, no video files: strips and the explorer fall back to captions."
    run = Run(tmp_path/'webvid', dataset=str(WEBVID), n=20, preset='cpu', **TOY)
    run()
    paths = save_run_figures(run.dir)
    assert {p.name for p in paths} >= {'lengths.png', 'rank_shift.png', 'recall.png'} and all(png(p) for p in paths)
    ex = explore(run.dir, static=True)
    h = ex.html()
    for qid in (ex.qids(True) or ex.qids(False))[:ex.n_static]:
        q = next(q for q in run.ds if q.id == qid)
        assert html.escape(q.edit) in h and html.escape(run.ds.videos[q.reference].caption[:40]) in h
    assert 'data:image' not in h


def test_unlabelled_run_draws_what_it_can(tmp_path):
    "A test-set run (no targets): lengths and one strip, no rank figures, explorer pages without a target."
    from r3covr.pipeline import load_dataset
    ds = load_dataset('synthetic', n=10)
    ds = replace(ds, queries=tuple(replace(q, target=None) for q in ds))
    run = Run(tmp_path/'unlabelled', ds=ds, preset='cpu', **TOY)
    run()
    assert [p.name for p in save_run_figures(run)] == ['lengths.png', 'query-q0000.png']
    h = explore(run, static=True, n_static=3).html()
    assert '10 queries, 0 with a target rank' in h and h.count('unlabelled query (no target)') == 3
