"""Memory bounds (a 4096x4096, 300-frame video through the `tiny` preset's frames path; the frame cache's bytes),
and caches that heal (weight digests)."""
import os
os.environ.setdefault('HF_HUB_OFFLINE', '1')
import json
import subprocess
import sys
import time
import numpy as np
import pytest
from r3covr.core import Video
from r3covr.video import write_video

SIDE, FRAMES, GOP = 4096, 300, 10
PEAK_MB = 1536   # the reading process's peak RSS: measured 1.1-1.3 GB (torch alone: 0.5 GB); at 8cf10a9: 3.5 GB

# Runs in a fresh process, so its peak RSS is this path's alone (not pytest's, nor another test's). The peak is the
# process's own memory map's high-water mark (VmHWM): `getrusage`'s ru_maxrss survives exec on Linux, so a worker
# started from a big pytest process would report pytest's peak (2.7 GB seen in a full run) instead of its own.
WORKER = '''
import json, re, sys
from pathlib import Path
from r3covr.core import Video
from r3covr.lm import video_part
from r3covr.models import create_encoder, load_preset
tiny, paper = load_preset('tiny'), load_preset('r3covr')
part = video_part(Video('big', sys.argv[1]), tiny['view'], **tiny['frames'])
vec = create_encoder('tiny').embed_videos([part])
native = video_part(Video('big', sys.argv[1]), paper['view'], **paper['frames'])
print(json.dumps(dict(tiny=part.frames.array.shape, vec=vec.shape, paper=native.frames.array.shape,
                      peak_mb=int(re.search(r'VmHWM:\\s+(\\d+) kB', Path('/proc/self/status').read_text())[1]) / 1024)))
'''

def write_big(path, side:int=SIDE, frames:int=FRAMES, gop:int=GOP):
    "A real `side` x `side` H.264 MP4 of `frames` frames: one `gop`-frame group (a square moving on grey) muxed again."
    import av
    with av.open(str(path), 'w') as out:
        s = out.add_stream('libx264', rate=24, options={'preset': 'ultrafast', 'crf': '40',
                                                        'x264-params': f'keyint={gop}:min-keyint={gop}:scenecut=0'})
        s.width, s.height, s.pix_fmt = side, side, 'yuv420p'
        yuv, packets = np.full((side * 3 // 2, side), 128, np.uint8), []
        for i in range(gop):                          # encoded once: 4k x264 runs ~10 frames/s on 2 busy cores
            r = i * 25; yuv[r:r+256, :256] = 220
            f = av.VideoFrame.from_ndarray(yuv, format='yuv420p'); f.pts = i
            packets += s.encode(f); yuv[r:r+256, :256] = 128
        packets += s.encode()
        for k in range(frames // gop):               # every group opens on a keyframe: a valid 300-frame stream
            for p in packets:
                q = av.Packet(bytes(p)); q.pts, q.dts, q.time_base = p.pts + k*gop, p.dts + k*gop, p.time_base
                q.is_keyframe, q.stream = p.is_keyframe, s
                out.mux(q)
    return path

@pytest.fixture(scope='module')
def big(tmp_path_factory):
    t = time.time(); p = write_big(tmp_path_factory.mktemp('big')/'big.mp4')
    print(f'\nwrote {SIDE}x{SIDE}x{FRAMES} ({p.stat().st_size/1e6:.1f} MB) in {time.time()-t:.1f} s')
    return p

def test_big_video_is_what_it_claims(big):
    import av
    import decord
    with av.open(str(big)) as c: cc = c.streams.video[0].codec_context; wh = (cc.width, cc.height)
    test = decord.VideoReader(str(big), width=64, height=64)
    assert (wh, len(test)) == ((SIDE, SIDE), FRAMES)
    assert test.get_batch([0, FRAMES - 1]).shape == (2, 64, 64, 3)    # the last frame decodes too

def test_tiny_frames_path_peak_memory(big):
    "The tiny preset's frames path (video_part + the tiny SigLIP-2 twin's embed_videos) stays under PEAK_MB."
    t = time.time()
    r = subprocess.run([sys.executable, '-c', WORKER, str(big)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    print(f"\npeak RSS {out['peak_mb']:.0f} MB (bound {PEAK_MB} MB) in {time.time()-t:.1f} s; frames: tiny "
          f"{out['tiny']}, r3covr preset {out['paper']}")
    assert out['peak_mb'] < PEAK_MB, out
    assert (out['tiny'], out['vec']) == ([4, 64, 64, 3], [1, out['vec'][1]])
    assert out['paper'][0] == 8 and out['paper'][1] * out['paper'][2] <= 1920 * 1080   # scaled at decode

def test_frame_cache_is_bounded_in_bytes(tmp_path, monkeypatch):
    "video_part's cache keeps clips up to its byte bound, most recent first, whatever their number."
    import r3covr.lm as lm
    clip = 4 * 32 * 32 * 3
    monkeypatch.setattr(lm, 'FRAME_CACHE', lm.FrameCache(limit=3 * clip))
    paths = [write_video(tmp_path/f'c{i}.mp4', np.full((4, 32, 32, 3), 30*i, np.uint8)) for i in range(5)]
    parts = [lm.video_part(Video(f'v{i}', p), 'frames', n=4) for i, p in enumerate(paths)]
    assert (lm.FRAME_CACHE.nbytes, len(lm.FRAME_CACHE)) == (3 * clip, 3)
    assert lm.video_part(Video('v4', paths[4]), 'frames', n=4).frames is parts[4].frames    # kept
    assert lm.video_part(Video('v0', paths[0]), 'frames', n=4).frames is not parts[0].frames  # forgotten: decoded again
    assert lm.FRAME_CACHE.nbytes == 3 * clip

def test_frame_cache_sees_a_replaced_file(tmp_path):
    "A same-size file put in place with its old modification time (cp -p, rsync -t) is decoded again."
    from r3covr.lm import video_part
    a = write_video(tmp_path/'a.mp4', np.full((4, 32, 32, 3), 50, np.uint8))
    b = write_video(tmp_path/'b.mp4', np.full((4, 32, 32, 3), 200, np.uint8))
    assert a.stat().st_size == b.stat().st_size
    first = video_part(Video('a', a), 'frames', n=4).frames
    st = a.stat(); os.replace(b, a); os.utime(a, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (a.stat().st_size, a.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    assert int(video_part(Video('a', a), 'frames', n=4).frames.array.mean()) != int(first.array.mean())


# --- caches that heal: weight digests ---

def _sha(b): import hashlib; return hashlib.sha256(b).hexdigest()

def test_empty_or_junk_digest_memo_is_recomputed(tmp_path, monkeypatch):
    "An empty memo was read as the digest ''; now an empty or malformed memo is hashed again (and said so)."
    from r3covr.weights import file_sha256, fingerprint
    monkeypatch.setenv('R3COVR_CACHE', str(tmp_path/'cache'))
    w = tmp_path/'model.bin'; w.write_bytes(b'weights' * 100)
    assert file_sha256(w) == _sha(w.read_bytes())
    memo, = (tmp_path/'cache'/'digests').iterdir()
    for damage in ('', 'deadbeef', 'x' * 64):
        memo.write_text(damage)
        with pytest.warns(UserWarning, match='damaged digest memo'): digest = fingerprint(w)['sha256']
        assert digest == _sha(w.read_bytes())
        assert memo.read_text() == _sha(w.read_bytes())                  # rewritten whole

def test_digest_memo_write_is_atomic_when_the_disk_fills(tmp_path):
    "A memo write cut short (file-size limit: a full disk) leaves no half digest for the next run to believe."
    w = tmp_path/'model.bin'; w.write_bytes(b'weights' * 100)
    env = {**os.environ, 'R3COVR_CACHE': str(tmp_path/'cache')}
    cut = ('import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); '
           'resource.setrlimit(resource.RLIMIT_FSIZE, (10, 10)); from r3covr.weights import file_sha256\n'
           'try: file_sha256(sys.argv[1])\nexcept OSError as e: print(e.errno)')
    r = subprocess.run([sys.executable, '-c', cut, str(w)], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == '27', r.stdout + r.stderr[-1000:]     # EFBIG: the write failed
    again = subprocess.run([sys.executable, '-c', 'import sys; from r3covr.weights import file_sha256; '
                            'print(file_sha256(sys.argv[1]))', str(w)], env=env, capture_output=True, text=True)
    assert again.stdout.strip() == _sha(w.read_bytes()), again.stdout + again.stderr[-1000:]

def test_same_size_file_replaced_with_its_stamp_kept_is_hashed_again(tmp_path, monkeypatch):
    "cp -p / rsync -t / tar: same size, same mtime, other bytes: the digest follows the bytes (inode and ctime)."
    from r3covr.weights import file_sha256
    monkeypatch.setenv('R3COVR_CACHE', str(tmp_path/'cache'))
    w, new = tmp_path/'model.bin', tmp_path/'incoming.bin'
    w.write_bytes(b'a' * 1000); new.write_bytes(b'b' * 1000)
    assert file_sha256(w) == _sha(b'a' * 1000)
    st = w.stat(); os.replace(new, w); os.utime(w, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (w.stat().st_size, w.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    assert file_sha256(w) == _sha(b'b' * 1000)
