"Retrieval's one path against the whole score matrix: the same top-K and the same exact target ranks, in blocks."
import numpy as np
import pytest
from r3covr.core import Query
from r3covr.metrics import beats, target_ranks
from r3covr.models import l2norm
from r3covr.retrieve import Gallery, retrieve, rank_targets, pad_frames, query_pooled_scores, ScanIndex


def structured(n, d, seed=0):
    "Unit vectors near a low-dimensional subspace (real embeddings are; i.i.d. noise has no near neighbours)."
    rng = np.random.default_rng(seed)
    return l2norm(rng.standard_normal((n, 8)) @ rng.standard_normal((8, d)) + 0.5 * rng.standard_normal((n, d)))


def case(n=20_000, d=64, nq=300, seed=0):
    rng = np.random.default_rng(seed)
    g = structured(n, d, seed)
    t = rng.choice(n, nq, replace=False); r = (t + 1 + rng.integers(0, n - 1, nq)) % n
    q = l2norm(g[t] + 1.5 * rng.standard_normal((nq, d)) / np.sqrt(d))
    ids = [f'v{j}' for j in range(n)]
    return g, q, t, r, ids, [Query(f'q{i}', ids[b], 'e', ids[a]) for i, (a, b) in enumerate(zip(t, r))]


def exact(q, g):
    "The whole score matrix in float64: what every rank is counted against (float32 products round per machine)."
    return np.asarray(q, np.float64) @ np.asarray(g, np.float64).T


def whole(S, r, t, k):
    "The top-k scores of each row (reference masked) and the target ranks, from the whole float64 matrix."
    S = S.copy(); S[np.arange(len(S)), r] = -np.inf
    return -np.sort(-S, axis=1)[:, :k], target_ranks(S, t)


def shortlist_scores(S, sls, pos):
    "Each shortlist's videos, as their float64 scores in `S`: compared by score, two near-tied videos may swap."
    return [[S[i, pos[x]] for x in s.ids] for i, s in enumerate(sls)]


@pytest.mark.parametrize('block', [997, 65536])
def test_blocks_equal_the_whole_matrix(block):
    g, q, t, r, ids, Q = case()
    G = Gallery(ids, g)
    sls, ranks = retrieve(q, Q, G, k=50, block=block)
    S = exact(q, g)
    top, rk = whole(S, r, t, 50)
    np.testing.assert_allclose(shortlist_scores(S, sls, G.pos), top, atol=1e-6)   # the top 50, best first
    assert [ranks[f'q{i}'] for i in range(len(Q))] == rk.tolist()
    assert ranks and min(ranks.values()) == [0, 0] and max(ranks.values())[0] > 50   # inside and beyond the shortlist


def test_duplicate_vectors_tie_with_the_target():
    "A copy of the target's vector (duplicate captions) always counts as a tie above it, whatever the block sizes."
    g, q, t, r, ids, Q = case(n=3000, nq=40)
    g = np.concatenate([g, g[t[:20]]])                             # exact copies of 20 targets
    ids = ids + [f'c{i}' for i in range(20)]
    S = exact(q, g); S[np.arange(len(q)), r] = -np.inf
    want = target_ranks(S, t)
    for block in (7, 1000, 10_000):
        got = rank_targets(Gallery(ids, g), q, [ids[j] for j in t], [ids[j] for j in r], block=block)
        assert got.tolist() == want.tolist()
    without = target_ranks(S[:20, :3000], t[:20])                   # the same targets, no copies
    assert (want[:20] - without).tolist() == [[0, 1]] * 20          # each copy ties with its target: one more tie


class Rounded(Gallery):
    "A gallery whose float32 scores are off in their last bits, as another CPU's kernels may compute them."
    def scores(self, qvecs, lo=0, hi=None, dtype=np.float32):
        S = super().scores(qvecs, lo, hi, dtype)
        if dtype != np.float32: return S
        flip = np.random.default_rng(lo).choice([-1, 1], S.shape).astype(np.float32)
        return np.nextafter(np.nextafter(S, S + flip), S + 2 * flip)     # two float32 steps up or down


def test_ranks_do_not_depend_on_float32_rounding():
    "Near-ties and exact ties: the same ranks when every float32 score is rounded two steps another way."
    g, q, t, r, ids, Q = case(n=3000, nq=40)
    g = np.concatenate([g, g[t[:20]], l2norm(g[t[20:]] + 1e-7)])    # exact copies, and vectors a rounding away
    ids = ids + [f'c{i}' for i in range(40)]
    args = (q, [ids[j] for j in t], [ids[j] for j in r])
    want = rank_targets(Gallery(ids, g), *args).tolist()
    for block in (7, 3040): assert rank_targets(Rounded(ids, g), *args, block=block).tolist() == want


def test_groups_keep_sources_apart():
    g, q, t, r, ids, Q = case(n=2000, nq=50)
    src = {v: ('a' if j % 2 else 'b') for j, v in enumerate(ids)}
    Q = [Query(x.id, x.reference, 'e', x.target, src[x.target]) for x in Q]
    groups = {s: {v for v in ids if src[v] == s} for s in 'ab'}
    sls, ranks = retrieve(q, Q, Gallery(ids, g), k=10, groups=groups)
    for x, s in zip(Q, sls): assert {src[v] for v in s.ids} == {x.source}
    half = {s: [j for j, v in enumerate(ids) if src[v] == s] for s in 'ab'}
    for i, x in enumerate(Q):                                       # rank within the query's own half
        cols = half[x.source]
        S = exact(q[i:i+1], g[cols])[0]
        if x.reference in groups[x.source]: S[cols.index(int(x.reference[1:]))] = -np.inf
        own = S[cols.index(int(x.target[1:]))]
        assert sum(ranks[x.id]) == int(beats(S, own).sum()) - 1     # the target beats itself: not counted


def test_query_pooled_gallery_takes_the_same_path():
    rng = np.random.default_rng(5)
    sets = [l2norm(rng.standard_normal((int(rng.integers(1, 6)), 16))) for _ in range(300)]
    F = pad_frames(sets); ids = [f'v{j}' for j in range(300)]
    q = l2norm(rng.standard_normal((20, 16)))
    t, r = rng.choice(300, 20, replace=False), rng.choice(300, 20)
    r = np.where(r == t, (r + 1) % 300, r)
    Q = [Query(f'q{i}', ids[b], 'e', ids[a]) for i, (a, b) in enumerate(zip(t, r))]
    G = Gallery(ids, F); G._indexes['flat'] = ScanIndex(G, block=37)
    sls, ranks = retrieve(q, Q, G, k=10, block=41)
    S = query_pooled_scores(q, F, dtype=np.float64)
    top, rk = whole(S, r, t, 10)
    np.testing.assert_allclose(shortlist_scores(S, sls, G.pos), top, atol=1e-6)
    assert [ranks[x.id] for x in Q] == rk.tolist()
