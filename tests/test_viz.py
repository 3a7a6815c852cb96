"""Figures and the query explorer drawn from real run folders: tiny twins (frames view), toy backends (caption view),
WebVid-CoVR text, a challenge file with its own gallery."""
import os
os.environ.setdefault('HF_HUB_OFFLINE', '1')
import html
import json
import shutil
from dataclasses import replace
from pathlib import Path
import numpy as np
import pytest
from PIL import Image
from r3covr.core import DataError, safe_name
from r3covr.metrics import rank_metrics, common_queries
from r3covr.pipeline import run, load_dataset
from r3covr.viz import (load_run, save_run_figures, explore, plot_query, plot_lengths, example_queries,
                        final_ranks, shortlist_rows)

SHARED = Path(__file__).resolve().parents[1].parent/'shared'/'data'
WEBVID = SHARED/'webvid-covr'/'webvid8m-covr_test.dev500.csv'


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
    folder = tmp_path_factory.mktemp('runs')/'tiny'
    return folder, run(folder, preset='tiny', n=6, k=20, rerank_k=6, batch_size=3)


@pytest.fixture(scope='module')
def toy(tmp_path_factory):
    "A finished caption-view run of the toy backends on 30 synthetic queries, descriptions cut to 8 tokens."
    folder = tmp_path_factory.mktemp('runs')/'toy'
    return folder, run(folder, preset='toy', n=30, budget=8)


def png(p:Path) -> Image.Image:
    im = Image.open(p); im.verify()
    return Image.open(p)


def test_save_run_figures_frames_view(tiny):
    folder, _ = tiny
    paths = save_run_figures(folder)
    ex = example_queries(folder)
    names = ['lengths.png', 'rank_shift.png', 'recall.png']
    names += [f'query-{safe_name(q)}.png' for q in dict.fromkeys(ex.values())]
    assert [p.name for p in paths] == names and all(p.parent == folder/'figures' for p in paths)
    for p in paths:
        im = png(p)
        assert im.format == 'PNG' and round(im.info['dpi'][0]) == 90 and p.stat().st_size < 200_000
    assert png(paths[0]).size == (450, 252)                  # 5 x 2.8 inches at 90 dpi
    # the strip is as tall as a reference row plus one row per candidate (4 and the target when lower)
    rows = len(shortlist_rows(folder, next(iter(ex.values())), 4))
    assert png(paths[3]).size == (720, round(90 * (1.7 + .8 * rows)))


def test_folder_gives_back_the_runs_numbers(tiny):
    folder, res = tiny
    r = load_run(folder)
    common = common_queries(r.ranks)
    assert {r.metrics['rows'][k]: rank_metrics([v[i] for i in common]) for k, v in r.ranks.items()} == res['metrics']
    assert sorted(r.ranks) == ['description', 'direct', 'edit', 'reference', 'rerank']
    assert final_ranks(r) == r.ranks['rerank']
    assert len(r.desc) == len(r.judged) == len(r.rankings) == 6


def test_frame_strip_marks_only_the_target(tiny):
    r = load_run(tiny[0])
    for qid in r.rankings:
        fig = plot_query(r, qid, n_candidates=3)
        rows = shortlist_rows(r, qid, 3)
        framed = [x for x, ax in zip(rows, fig.axes[2::2]) if ax.spines['left'].get_linewidth() == 3]
        assert [x['id'] for x in framed] == [r.query(qid).target]
        assert all(len(ax.images) == 1 for ax in fig.axes[::2])     # frames view: every video is a frame strip


def test_unreadable_video_falls_back_to_its_caption(tiny, tmp_path):
    r = load_run(tiny[0])
    qid = next(iter(r.rankings)); ref = r.query(qid).reference
    (tmp_path/'broken.mp4').write_bytes(b'not a video')
    caption = r.ds.videos[ref].caption
    r.ds = replace(r.ds, videos={**r.ds.videos, ref: replace(r.ds.videos[ref], path=tmp_path/'broken.mp4')})
    fig = plot_query(r, qid, n_candidates=2)
    assert not fig.axes[0].images and caption.split()[0] in fig.axes[0].texts[0].get_text()


def test_explorer_static_html_frames_view(tiny):
    ex = explore(tiny[0])                                      # no live kernel here: static
    ds = load_run(tiny[0]).ds
    assert ex.static and set(ex._repr_mimebundle_()) == {'text/plain', 'text/html'}
    h = ex._repr_html_()
    shown = (ex.qids(True) or ex.qids(False))[:ex.n_static]
    for qid in shown:
        q = next(x for x in ds if x.id == qid)
        assert f'<b>{qid}</b>' in h and html.escape(q.edit) in h and q.target in h
    assert h.count('data:image/jpeg;base64,') >= len(shown) * (1 + 2 * 5)   # reference + both top-5 lists


def test_explorer_failures_only(toy):
    r = load_run(toy[0])
    ex = explore(r, failures_only=True, static=True)
    fails = [i for i, k in r.ranks['rerank'].items() if sum(k) > 0]     # the target not surely first
    assert fails and ex.qids() == fails and ex.qids(False) == [q.id for q in r.ds]
    assert f'{len(r.ds)} queries, {len(r.ds)} with a target rank, {len(fails)} failures' in ex.html()


def test_caption_view_and_overflow(toy):
    r = load_run(toy[0])
    fig = plot_lengths(r)
    ax = fig.axes[0]
    assert ax.lines[0].get_xdata()[0] == 8 == r.metrics['length']['budget']
    share = np.mean([d['overflow'] for d in r.desc.values()])
    assert share > 0 and f'{share:.0%} overflow' in ax.get_title()
    qid = next(iter(r.rankings))
    fig = plot_query(r, qid)
    assert sum(len(a.images) for a in fig.axes) == 0          # caption view: captions, not frames
    assert 'TARGET' in ''.join(t.get_text() for a in fig.axes for t in a.texts)


def test_bad_inputs_name_the_item(toy, tmp_path):
    with pytest.raises(DataError, match='not a run folder'): load_run(tmp_path)
    with pytest.raises(DataError, match="'q9999'"): plot_query(toy[0], 'q9999')
    (tmp_path/'config.json').write_text(json.dumps({'keys': {}, 'encoder': {}}))
    with pytest.raises(DataError, match='older r3covr'): plot_lengths(tmp_path)      # a folder of layout 1: rerun it
    cfg = json.loads((toy[0]/'config.json').read_text())
    (tmp_path/'config.json').write_text(json.dumps({**cfg, 'keys': {'reason': 'x', 'retrieve': 'x', 'judge': 'x'}}))
    with pytest.raises(DataError, match='no descriptions'): plot_lengths(tmp_path)


@pytest.mark.skipif(not WEBVID.exists(), reason='shared WebVid-CoVR data absent')
def test_webvid_text_without_video_files(tmp_path):
    "Real benchmark text, no video files: strips and the explorer fall back to captions."
    res = run(tmp_path/'webvid', dataset=str(WEBVID), n=20, preset='toy')
    paths = save_run_figures(res)
    assert {p.name for p in paths} >= {'lengths.png', 'rank_shift.png', 'recall.png'} and all(png(p) for p in paths)
    ex = explore(res, static=True)
    h, ds = ex.html(), load_run(res).ds
    for qid in (ex.qids(True) or ex.qids(False))[:ex.n_static]:
        q = next(q for q in ds if q.id == qid)
        assert html.escape(q.edit) in h and html.escape(ds.videos[q.reference].caption[:40]) in h
    assert 'data:image' not in h


def test_unlabelled_run_draws_what_it_can(tmp_path):
    "A test-set run (no targets): lengths and one strip, no rank figures, explorer pages without a target."
    ds = load_dataset('synthetic', n=10)
    ds = replace(ds, queries=tuple(replace(q, targets=None) for q in ds))
    run(tmp_path/'unlabelled', ds=ds, preset='toy', n=10)
    with pytest.raises(DataError, match='the run used another dataset'): load_run(tmp_path/'unlabelled').ds
    r = load_run(tmp_path/'unlabelled', ds)                     # a dataset its settings cannot rebuild: hand it over
    assert [p.name for p in save_run_figures(r)] == ['lengths.png', f'query-{safe_name("q0000")}.png']
    h = explore(r, static=True, n_static=3).html()
    assert '10 queries, 0 with a target rank' in h and h.count('unlabelled query (no target)') == 3


def test_gallery_run_draws_its_own_gallery(tmp_path):
    "A challenge file run with --gallery: read back, the figures and the explorer show that gallery, not another."
    syn = load_dataset('synthetic')
    qs = list(syn)[:3]
    challenge = tmp_path/'challenge.json'
    challenge.write_text(json.dumps([{'webvid': [dict(id=i, video_source=q.reference, modification_text=q.edit)
                                                 for i, q in enumerate(qs)]}]))
    gal = tmp_path/'gallery'; gal.mkdir()
    own = sorted({q.target for q in qs} | set(list(syn.gallery)[100:110]))
    for v in own: shutil.copy(syn.videos[v].path, gal/f'{v}.mp4')
    res = run(tmp_path/'run', dataset=str(challenge), root=str(syn.root/'videos'), gallery=str(gal), preset='tiny',
              k=6, rerank_k=2, batch_size=2)
    r = load_run(res)
    assert sorted(r.ds.gallery) == own                       # not the referenced videos, not another gallery
    qid = next(iter(r.rankings))
    assert {x['id'] for x in shortlist_rows(r, qid, 6)} <= set(own)
    paths = save_run_figures(res)
    assert [p.name for p in paths] == ['lengths.png', f'query-{safe_name(qid)}.png']
    assert all(v in own for v in r.rankings[qid]['ids'])
