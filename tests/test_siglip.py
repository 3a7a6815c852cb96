"The open_clip SigLIP-2 encoder on its offline twin: shapes, norms, batching, the 64-token window, pooling, fail-fast."
import os
os.environ.setdefault('HF_HUB_OFFLINE', '1')
import json
import time
from pathlib import Path
import numpy as np
import pytest
from r3covr.core import R3Error, DataError, VideoError
from r3covr.lm import VideoPart
from r3covr.models import Encoder, create_encoder
from r3covr.video import write_video, read_frames
from r3covr.siglip import OpenClipEncoder, build_twin, pool_frames, DEFAULT_MODEL

DATA = Path(__file__).resolve().parents[1].parent/'shared'/'data'
VAL = DATA/'covr-r'/'val-set_no-labels.json'
needs_shared = pytest.mark.skipif(not DATA.exists(), reason='shared data (../shared/data) not present')
TEXTS = ['a red car drives away from the camera', 'a dog runs on the beach', 'two people shake hands',
         'the camera zooms out to show the whole city at night', 'a woman pours coffee']

@pytest.fixture(scope='module')
def twin(tmp_path_factory): return build_twin(tmp_path_factory.mktemp('twins')/'siglip2')

@pytest.fixture(scope='module')
def enc(twin): return OpenClipEncoder(twin, batch_size=2)   # small batches: exercise the batch boundaries

@pytest.fixture(scope='module')
def frames(tmp_path_factory):
    d = tmp_path_factory.mktemp('videos'); out = []
    for k, colour in enumerate([(255, 0, 0), (0, 0, 255), (0, 255, 0)]):
        f = np.zeros((12 + 4*k, 64, 64, 3), np.uint8)
        for i in range(len(f)): f[i, 20:44, 2+3*i:26+3*i] = colour
        out.append(read_frames(write_video(d/f'v{k}.mp4', f, fps=8), n=3 + k, size=64))
    return out

def unit(x): return np.allclose(np.linalg.norm(x, axis=-1), 1, atol=1e-5)

# ---------------------------------------------------------------- the twin

def test_twin_is_idempotent_and_complete(twin):
    files = {p.name: p.stat().st_mtime_ns for p in Path(twin).iterdir()}
    assert set(files) >= {'open_clip_config.json', 'open_clip_model.safetensors', 'tokenizer.json', 'twin.json'}
    t0 = time.time(); assert build_twin(twin) == twin; assert time.time() - t0 < 0.5
    assert {p.name: p.stat().st_mtime_ns for p in Path(twin).iterdir()} == files      # nothing rewritten

def test_twin_rebuilds_without_marker(tmp_path):
    d = Path(build_twin(tmp_path/'t')); (d/'twin.json').unlink(); (d/'tokenizer.json').unlink()
    build_twin(d)
    assert (d/'twin.json').exists() and (d/'tokenizer.json').exists()
    assert not list(tmp_path.glob('.t.*'))                                             # no temporary folder left

def test_twin_weights_are_seeded(tmp_path, twin):
    from safetensors.torch import load_file
    a = load_file(str(Path(twin)/'open_clip_model.safetensors'))
    b = load_file(str(Path(build_twin(tmp_path/'t'))/'open_clip_model.safetensors'))
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)

def test_folder_and_local_dir_load_the_same(twin, enc):
    e2 = OpenClipEncoder('local-dir:' + twin)
    np.testing.assert_allclose(e2.embed_texts(TEXTS), enc.embed_texts(TEXTS), atol=1e-5)

def test_factory_builds_tiny(tmp_path, monkeypatch):
    monkeypatch.setenv('R3COVR_CACHE', str(tmp_path))
    e = create_encoder('tiny')
    assert isinstance(e, OpenClipEncoder) and Path(e.weights.locator) == (tmp_path/'twins'/'siglip2').resolve()
    assert e.embed_texts(TEXTS[:2]).shape == (2, e.dim)

# ---------------------------------------------------------------- texts

def test_texts_shapes_norms_batching(enc):
    T = enc.embed_texts(TEXTS)
    assert T.shape == (5, enc.dim) and T.dtype == np.float32 and unit(T)
    np.testing.assert_allclose(np.concatenate([enc.embed_texts([t]) for t in TEXTS]), T, atol=1e-5)
    assert enc.embed_texts([]).shape == (0, enc.dim)
    with pytest.raises(DataError, match='text 2'): enc.embed_texts(['a', 'b', 3])

def test_count_tokens_and_window(enc):
    assert enc.context_length == 64 and enc.content_length == 63        # one slot goes to EOS
    assert enc.count_tokens('a red car') == 3                             # EOS not counted
    assert enc.count_tokens('A red car!!') == enc.count_tokens('a red car')   # SigLIP cleaning applies
    words = ' '.join(['car'] * 63)
    assert enc.count_tokens(words) == 63 and not enc.overflows(words)
    assert enc.overflows(words + ' car')                                  # 64 content tokens: the last is cut
    with pytest.raises(DataError): enc.count_tokens(None)

def test_silent_truncation(enc):
    long = ' '.join(TEXTS * 5)
    assert enc.count_tokens(long) > 64 and enc.overflows(long)
    ids = enc.tokenizer([long])[0]
    assert len(ids) == 64 and int(ids[-1]) == 1                           # cut at 64, EOS kept
    np.testing.assert_allclose(enc.embed_texts([long + ' and a purple elephant']), enc.embed_texts([long]), atol=1e-6)

def test_context_length_mismatch_is_refused(twin):
    with pytest.raises(R3Error, match='64 tokens'): OpenClipEncoder(twin, context_length=77)

@needs_shared
def test_real_covr_r_edits_overflow(enc):
    edits = [q['modification_text'] for part in json.loads(VAL.read_text()) for k in part for q in part[k]]
    long = max(edits, key=len)
    assert enc.overflows(long) and enc.count_tokens(long) > 100
    assert np.mean([enc.overflows(e) for e in edits[:200]]) > 0.5

# ---------------------------------------------------------------- frames and videos

def test_frames_shapes_norms_batching(enc, frames):
    F = [enc.embed_frames(f) for f in frames]
    assert [x.shape for x in F] == [(3, enc.dim), (4, enc.dim), (5, enc.dim)] and all(unit(x) for x in F)
    np.testing.assert_allclose(enc._embed_arrays(frames), np.concatenate(F), atol=1e-5)   # batches span videos
    wide = OpenClipEncoder(enc.name, batch_size=64)
    np.testing.assert_allclose(wide._embed_arrays(frames), np.concatenate(F), atol=1e-5)

def test_embed_videos_matches_default(enc, frames):
    parts = [VideoPart(frames=f, video_id=str(i)) for i, f in enumerate(frames)]
    parts.append(VideoPart(caption='a green square', video_id='c'))
    V = enc.embed_videos(parts)
    assert V.shape == (4, enc.dim) and unit(V)
    np.testing.assert_allclose(V, Encoder.embed_videos(enc, parts), atol=1e-5)
    np.testing.assert_allclose(V[3], enc.embed_texts(['a green square'])[0], atol=1e-6)

def test_bad_frames_name_the_video(enc, frames):
    empty = type(frames[0])(frames[0].array[:0], (), (), 8., 0, frames[0].path)
    with pytest.raises(VideoError, match='v0.mp4'): enc.embed_frames(empty)
    with pytest.raises(VideoError, match='uint8'): enc.embed_frames(frames[0].array.astype(np.float32))
    with pytest.raises(VideoError): enc.embed_frames(frames[0].array[..., 0])

# ---------------------------------------------------------------- pooling

def test_pool_frames(enc, frames):
    F, q = enc.embed_frames(frames[2]), enc.embed_texts(['a green square on the right'])[0]
    m, w = pool_frames(F), pool_frames(F, q)
    assert unit(m) and unit(w) and np.abs(m - w).max() > 1e-6
    np.testing.assert_allclose(pool_frames(F, q, temperature=1e6), m, atol=1e-5)
    np.testing.assert_allclose(pool_frames(F, q, temperature=1e-6), F[np.argmax(F @ q)], atol=1e-5)
    N = np.stack([F, F[::-1]]); Q = np.stack([q, -q])
    np.testing.assert_allclose(pool_frames(N, Q), np.stack([w, pool_frames(F, -q)]), atol=1e-5)
    toy = np.eye(3, dtype=np.float32)
    assert np.argmax(pool_frames(toy, np.array([0, 0, 1.]), temperature=0.1)) == 2

# ---------------------------------------------------------------- fail fast

def test_offline_hub_name_fails_fast():
    t0 = time.time()
    with pytest.raises(R3Error, match='timm/ViT-SO400M-16-SigLIP2-384'): OpenClipEncoder(DEFAULT_MODEL)
    with pytest.raises(R3Error, match='timm/ViT-B-16-SigLIP2'): OpenClipEncoder('timm/ViT-B-16-SigLIP2')
    assert time.time() - t0 < 5

def test_bad_names(tmp_path):
    with pytest.raises(R3Error, match='no open_clip_config.json'): OpenClipEncoder(str(tmp_path))
    with pytest.raises(R3Error, match='missing'): OpenClipEncoder('local-dir:' + str(tmp_path/'missing'))
    with pytest.raises(R3Error, match='org/name'): OpenClipEncoder('ViT-B-16-SigLIP2')
