"The synthetic dataset: generated into a cache, deterministic, read back without rendering, redone when interrupted."
import os
os.environ.setdefault('HF_HUB_OFFLINE', '1')
import hashlib
import json
from pathlib import Path
import numpy as np
import pytest
from r3covr import synthetic
from r3covr.core import DataError
from r3covr.synthetic import ATTRS, make_synthetic
from r3covr.video import read_frames

N = 8   # queries: small, so each generation takes well under a second


def digest(folder: Path) -> dict:
    "md5 of every file under `folder`, by relative path."
    return {str(p.relative_to(folder)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob('*')) if p.is_file()}


def no_rendering(monkeypatch):
    "Make any attempt to write a video fail, to prove a call only reads."
    def boom(*a, **k): raise AssertionError('rendered although the cache was complete')
    monkeypatch.setattr(synthetic, 'write_video', boom)


def test_generates_a_consistent_dataset(tmp_path):
    ds = make_synthetic(N, root=tmp_path)
    assert (ds.name, len(ds)) == ('synthetic', N)
    assert ds.root.parent == tmp_path and (ds.root/'manifest.json').is_file()
    attrs = {v['id']: v['attrs'] for v in json.loads((ds.root/'manifest.json').read_text())['videos']}
    assert set(attrs) == set(ds.gallery) == set(ds.videos)
    assert len({tuple(a[k] for k in ATTRS) for a in attrs.values()}) == len(attrs)        # no two videos alike
    for q in ds:
        assert q.source == 'synthetic' and q.edit and q.reference in ds.gallery and q.target in ds.gallery
        assert attrs[q.target] == q.meta['target_attrs'] and attrs[q.reference] == q.meta['reference_attrs']
        assert all(sum(attrs[d][k] != attrs[q.target][k] for k in ATTRS) == 1 for d in q.meta['distractors'])
    v = ds.videos[ds[0].target]
    assert v.source == 'synthetic' and v.caption and v.path.is_file()
    assert read_frames(v.path, n=16).array.shape == (16, 64, 64, 3)


def test_same_seed_same_manifest_in_two_roots(tmp_path):
    a, b = make_synthetic(N, seed=3, root=tmp_path/'a'), make_synthetic(N, seed=3, root=tmp_path/'b')
    assert (a.root/'manifest.json').read_bytes() == (b.root/'manifest.json').read_bytes()
    assert set(digest(a.root)) == set(digest(b.root))          # the same files ...
    for i in a.gallery:                                         # ... showing the same pictures, up to H.264 loss
        fa, fb = read_frames(a.videos[i].path, n=16).array, read_frames(b.videos[i].path, n=16).array
        assert np.abs(fa.astype(int) - fb).mean() < 3, i
    c = make_synthetic(N, seed=4, root=tmp_path/'a')
    assert c.root != a.root and [q.edit for q in c] != [q.edit for q in a]


def test_same_seed_same_video_bytes(tmp_path):
    a, b = make_synthetic(N, seed=3, root=tmp_path/'a'), make_synthetic(N, seed=3, root=tmp_path/'b')
    assert digest(a.root) == digest(b.root)


def test_default_root_is_the_r3covr_cache(tmp_path, monkeypatch):
    monkeypatch.setenv('R3COVR_CACHE', str(tmp_path))
    ds = make_synthetic(N)
    assert ds.root.parent == tmp_path/'synthetic'


def test_second_call_reads_the_cache(tmp_path, monkeypatch):
    first = make_synthetic(N, root=tmp_path)
    before = digest(first.root)
    no_rendering(monkeypatch)
    again = make_synthetic(N, root=tmp_path)
    assert again.queries == first.queries and again.videos == first.videos
    assert digest(again.root) == before


def test_missing_manifest_means_generate_again(tmp_path):
    ds = make_synthetic(N, root=tmp_path)
    good = digest(ds.root)
    victim = ds.videos[ds[0].target].path
    victim.write_bytes(victim.read_bytes()[:100])             # a torn file from a killed run ...
    (ds.root/'manifest.json').unlink()                        # ... which never got to write its manifest
    again = make_synthetic(N, root=tmp_path)
    assert set(digest(again.root)) == set(good) and (again.root/'manifest.json').is_file()
    assert read_frames(victim, n=4).array.shape == (4, 64, 64, 3)


def test_interrupted_generation_leaves_no_manifest(tmp_path, monkeypatch):
    real, calls = synthetic.write_video, []
    def dies_midway(*a, **k):
        if len(calls) == 5: raise KeyboardInterrupt
        calls.append(1); return real(*a, **k)
    monkeypatch.setattr(synthetic, 'write_video', dies_midway)
    with pytest.raises(KeyboardInterrupt): make_synthetic(N, root=tmp_path)
    assert not list(tmp_path.rglob('manifest.json'))
    monkeypatch.setattr(synthetic, 'write_video', real)
    ds = make_synthetic(N, root=tmp_path)
    assert all(v.path.is_file() for v in ds.videos.values())
    fresh = make_synthetic(N, root=tmp_path/'fresh').root
    assert (ds.root/'manifest.json').read_bytes() == (fresh/'manifest.json').read_bytes()


def test_deleted_video_is_regenerated(tmp_path):
    ds = make_synthetic(N, root=tmp_path)
    ds.videos[ds[0].reference].path.unlink()
    make_synthetic(N, root=tmp_path)
    assert ds.videos[ds[0].reference].path.is_file()


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(DataError, match='even'): make_synthetic(N, root=tmp_path, size=63)
    with pytest.raises(DataError, match='n_queries'): make_synthetic(0, root=tmp_path)
