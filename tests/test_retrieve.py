"Retrieval's one path against the whole score matrix: the same top-K and the same exact target ranks, in blocks."
import numpy as np
import pytest
from r3covr.core import Query
from r3covr.metrics import target_ranks
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


def whole(S, r, t, k):
    S = S.copy(); S[np.arange(len(S)), r] = -np.inf
    return np.argsort(-S, axis=1, kind='stable')[:, :k], target_ranks(S, t)


@pytest.mark.parametrize('block', [997, 65536])
def test_blocks_equal_the_whole_matrix(block):
    g, q, t, r, ids, Q = case()
    sls, ranks = retrieve(q, Q, Gallery(ids, g), k=50, block=block)
    top, rk = whole(q @ g.T, r, t, 50)
    S = q @ g.T
    for i, s in enumerate(sls):
        assert set(s.ids) == {ids[j] for j in top[i]}
        got = S[i, [int(x[1:]) for x in s.ids]]
        assert np.all(np.diff(got) <= 1e-6)                         # best first (ties may swap)
    assert [ranks[f'q{i}'] for i in range(len(Q))] == rk.tolist()
    assert ranks and min(ranks.values()) == 0 and max(ranks.values()) > 50   # targets inside and beyond the shortlist


def test_duplicate_vectors_tie_against_the_target():
    "A copy of the target's vector (duplicate captions) always counts as a tie above it, whatever the block sizes."
    g, q, t, r, ids, Q = case(n=3000, nq=40)
    g = np.concatenate([g, g[t[:20]]])                             # exact copies of 20 targets
    ids = ids + [f'c{i}' for i in range(20)]
    S = q @ g.T; S[np.arange(len(q)), r] = -np.inf
    want = target_ranks(S, t)
    for block in (7, 1000, 10_000):
        got = rank_targets(Gallery(ids, g), q, [ids[j] for j in t], [ids[j] for j in r], block=block)
        assert got.tolist() == want.tolist()
    assert (want[:20] >= 1).all()                                   # each copy outranks (ties) its target


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
        S = q[i] @ g[cols].T
        if x.reference in groups[x.source]: S[cols.index(int(x.reference[1:]))] = -np.inf
        own = S[cols.index(int(x.target[1:]))]
        assert ranks[x.id] == int((S >= own).sum()) - 1


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
    top, rk = whole(query_pooled_scores(q, F), r, t, 10)
    assert [set(s.ids) for s in sls] == [{ids[j] for j in row} for row in top]
    assert [ranks[x.id] for x in Q] == rk.tolist()
