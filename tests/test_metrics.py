"Property tests of r3covr.metrics: random score matrices and rank arrays, checked against naive definitions."
import os
os.environ.setdefault('HF_HUB_OFFLINE', '1')
import json
from types import SimpleNamespace
import numpy as np
import pytest
from r3covr.core import DataError
from r3covr.metrics import (TIE_TOL, beats, target_ranks, list_rank, recall_at_k, bootstrap_ci, rank_metrics,
                            metrics_table, Metrics, common_queries, hit_at)

SEEDS = range(8)


def rank1(S, t, ref=None, ties='pessimistic', chunk=1024):
    "One number per query: the rank with ties counted against the target (or, 'optimistic', for it)."
    return target_ranks(S, t, ref, ties, chunk)[:, 0]


def list_ranks(rankings, targets, references=None, ties='pessimistic'):
    "One number per query of `targets` (None: unlabelled) from its ranked list, under a one-sided tie rule."
    references = references or {}
    return np.array([np.nan if t is None else list_rank(rankings.get(q, ()), t, references.get(q), ties)[0]
                     for q, t in targets.items()])

def _random_problem(seed, nq=40, ng=60, discrete=False):
    "Scores, targets, references (reference != target, some unlabelled, some references absent)."
    rng = np.random.default_rng(seed)
    S = rng.integers(0, 5, (nq, ng)).astype(float) if discrete else rng.standard_normal((nq, ng))
    t = rng.integers(0, ng, nq)
    ref = (t + rng.integers(1, ng, nq)) % ng
    t[rng.random(nq) < .1] = -1
    ref[rng.random(nq) < .1] = -1
    return S, t, ref

def _naive(S, t, ref, ties='pessimistic'):
    "The definition, one query at a time."
    out = []
    for i in range(len(S)):
        if t[i] < 0: out.append(np.nan); continue
        others = [j for j in range(S.shape[1]) if j not in (t[i], ref[i])]
        s = S[i, others]
        out.append(float((s >= S[i, t[i]]).sum() if ties == 'pessimistic' else (s > S[i, t[i]]).sum()))
    return np.array(out)

@pytest.mark.parametrize('seed', SEEDS)
@pytest.mark.parametrize('ties', ['pessimistic', 'optimistic'])
def test_ranks_match_definition(seed, ties):
    S, t, ref = _random_problem(seed, discrete=seed % 2 == 0)
    np.testing.assert_array_equal(rank1(S, t, ref, ties=ties, chunk=7), _naive(S, t, ref, ties))

@pytest.mark.parametrize('seed', SEEDS)
def test_pessimistic_never_better(seed):
    S, t, ref = _random_problem(seed, discrete=True)
    p, o = rank1(S, t, ref), rank1(S, t, ref, ties='optimistic')
    lab = t >= 0
    assert (p[lab] >= o[lab]).all() and (p[lab] > o[lab]).any()
    Sc, *_ = _random_problem(seed)   # continuous scores: no ties, the rules agree
    np.testing.assert_array_equal(rank1(Sc, t, ref), rank1(Sc, t, ref, ties='optimistic'))

@pytest.mark.parametrize('seed', SEEDS)
def test_reference_exclusion_changes_rank_iff_reference_outscored_target(seed):
    S, t, ref = _random_problem(seed)
    both = (t >= 0) & (ref >= 0)
    with_ref, without_ref = rank1(S, t), rank1(S, t, ref)
    rows = np.flatnonzero(both)
    outscored = S[rows, ref[rows]] > S[rows, t[rows]]
    np.testing.assert_array_equal(with_ref[rows] - without_ref[rows], outscored.astype(float))
    only = (t >= 0) & ~both   # no reference in the gallery: nothing to exclude
    np.testing.assert_array_equal(with_ref[only], without_ref[only])

def test_two_dimensional_exclusion():
    S, t, ref = _random_problem(3)
    pad = np.stack([ref, np.full_like(ref, -1), ref], 1)   # padding and a repeated column change nothing
    np.testing.assert_array_equal(rank1(S, t, pad), rank1(S, t, ref))
    two = np.stack([ref, (t + 2) % S.shape[1]], 1)
    two[t < 0, 1] = -1
    lab = t >= 0
    extra = (S[np.arange(len(S)), two[:, 1]] >= S[np.arange(len(S)), t]) & lab & (two[:, 1] != ref)
    np.testing.assert_array_equal(rank1(S, t, ref)[lab] - rank1(S, t, two)[lab], extra[lab].astype(float))

@pytest.mark.parametrize('seed', SEEDS)
def test_perfect_scores_give_r1_100(seed):
    rng = np.random.default_rng(seed)
    S = rng.random((30, 50))
    t = rng.integers(0, 50, 30)
    S[np.arange(30), t] = 2.0
    m = rank_metrics(rank1(S, t), ci=False)
    assert m['R@1'] == 100 and m['MedR'] == 1 and m['MeanR'] == 1 and m['R_mean'] == 100

@pytest.mark.parametrize('seed', SEEDS)
def test_recall_monotone_in_k(seed):
    rng = np.random.default_rng(seed)
    r = rng.geometric(.1, 300).astype(float) - 1
    r[rng.random(300) < .1] = np.inf
    r[rng.random(300) < .1] = np.nan
    ks = np.arange(1, 120)
    rec = recall_at_k(r, ks)
    assert (np.diff(rec) >= 0).all() and rec[0] >= 0 and rec[-1] <= 100
    assert rec[-1] == pytest.approx(100 * np.isfinite(r).sum() / (~np.isnan(r)).sum())

@pytest.mark.parametrize('seed', SEEDS)
def test_score_matrix_and_list_ranks_agree(seed):
    S, t, ref = _random_problem(seed)   # continuous scores: no ties
    ids = [f'v{j}' for j in range(S.shape[1])]
    K = 10
    order = np.argsort(-S, 1)[:, :K]   # top-K lists, the reference possibly inside
    q = [f'q{i}' for i in range(len(S))]
    lists = {q[i]: [ids[j] for j in order[i]] for i in range(len(S))}
    targets = {q[i]: ids[t[i]] if t[i] >= 0 else None for i in range(len(S))}
    refs = {q[i]: ids[ref[i]] if ref[i] >= 0 else None for i in range(len(S))}
    from_lists = list_ranks(lists, targets, refs)
    full = rank1(S, t, ref)
    depth = np.array([len([x for x in lists[k] if x != refs[k]]) for k in q])
    expected = np.where(np.isnan(full) | (full < depth), full, np.inf)
    np.testing.assert_array_equal(from_lists, expected)
    # R@K agrees for every K up to the shallowest list: censoring only matters below it
    ks = range(1, depth.min() + 1)
    np.testing.assert_allclose(recall_at_k(from_lists, ks), recall_at_k(full, ks))

@pytest.mark.parametrize('seed', SEEDS)
@pytest.mark.parametrize('ties', ['pessimistic', 'optimistic'])
def test_scored_lists_count_ties_as_the_matrix_does(seed, ties):
    "A list that holds every video, with its scores, in any order among ties: the rank of the score matrix."
    S, t, ref = _random_problem(seed, discrete=True)   # many exact ties
    rng = np.random.default_rng(seed)
    ids = [f'v{j}' for j in range(S.shape[1])]
    lists = {}
    for i, row in enumerate(S):
        order = np.lexsort((rng.random(len(row)), -row))     # best first, ties in a random order
        lists[f'q{i}'] = {'ids': [ids[j] for j in order], 'scores': row[order].tolist()}
    targets = {f'q{i}': ids[x] if x >= 0 else None for i, x in enumerate(t)}
    refs = {f'q{i}': ids[x] if x >= 0 else None for i, x in enumerate(ref)}
    np.testing.assert_array_equal(list_ranks(lists, targets, refs, ties), rank1(S, t, ref, ties))
    plain = list_ranks({q: lst['ids'] for q, lst in lists.items()}, targets, refs)   # ids alone: positions
    lab = t >= 0
    assert (plain[lab] <= rank1(S, t, ref)[lab]).all()
    assert (plain[lab] >= rank1(S, t, ref, 'optimistic')[lab]).all()

def test_ties_are_decided_in_float64_within_the_tolerance():
    own = np.float64(0.7)
    s = own + np.array([0, TIE_TOL / 2, -TIE_TOL / 2, -2 * TIE_TOL, 2 * TIE_TOL])
    assert beats(s, own).tolist() == [True, True, True, False, True]
    assert beats(s, own, 'optimistic').tolist() == [False, False, False, False, True]
    assert not beats(np.float32(own), own)                        # float32 rounding (1.2e-8 here) is not forgiven
    S = np.array([[.5, .5 + TIE_TOL / 10, .5 - TIE_TOL / 10, .4]])   # the same tie, however the last bits fall
    assert rank1(S, [0]).tolist() == [2] and rank1(S, [1]).tolist() == [2]
    assert rank1(S, [0], ties='optimistic').tolist() == [0]

def test_common_queries():
    assert common_queries({'a': {'q1': 0, 'q2': 1}, 'b': {'q2': 3, 'q1': 2}, 'c': {}}) == ['q1', 'q2']
    assert common_queries({'a': {'q1': 0}, 'b': {'q2': 3}}) == []
    assert common_queries({}) == []

def test_lists_accept_shortlist_objects_and_missing_lists():
    r = list_ranks({'a': SimpleNamespace(ids=('x', 'y', 'z'))}, {'a': 'z', 'b': 'y'}, {'a': 'x'})
    np.testing.assert_array_equal(r, [1, np.inf])
    scored = SimpleNamespace(ids=('x', 'y', 'z', 'w'), scores=(.9, .5, .5, .1))   # a Shortlist: z ties with y
    np.testing.assert_array_equal(list_ranks({'a': scored}, {'a': 'y'}), [2])

def test_bad_inputs_name_the_item():
    S = np.zeros((3, 4))
    with pytest.raises(DataError, match='row 1'): rank1(S, [0, 4, 1])
    with pytest.raises(DataError, match='row 2'): rank1(S, [0, 1, 1.5])
    with pytest.raises(DataError, match='3 queries'): rank1(S, [0, 1])
    with pytest.raises(DataError, match='row 2'): rank1(S, [0, 1, 2], [1, 0, 2])
    with pytest.raises(DataError, match='row 1'): rank1(np.array([[0, 1.], [np.nan, 0]]), [0, 1])
    with pytest.raises(DataError, match='matrix'): rank1(np.zeros(4), [0])
    with pytest.raises(DataError, match='not numbers'): rank_metrics(['a', 1])
    with pytest.raises(ValueError): rank1(S, [0, 1, 2], ties='average')
    with pytest.raises(DataError, match='2 ids and 1 scores'): list_rank({'ids': ['x', 'y'], 'scores': [1.]}, 'y')

def test_unlabelled_and_exclusion_inputs_accept_none_and_nan():
    S = np.arange(12.).reshape(3, 4)
    r = rank1(S, [0, None, np.nan], [1, None, np.nan])   # row 0: columns 2 and 3 beat column 0, 1 is excluded
    assert r[0] == 2 and np.isnan(r[1:]).all()
    assert rank1(S, [0, 0, 0], [None, None, None])[0] == 3

def test_bootstrap_is_seeded_and_block_size_free():
    r = np.random.default_rng(1).geometric(.3, 500) - 1.
    stat = lambda x: recall_at_k(x, (1, 5))
    a = bootstrap_ci(r, stat)
    np.testing.assert_array_equal(a, bootstrap_ci(r, stat))
    np.testing.assert_array_equal(a, bootstrap_ci(r, stat, max_cells=1000))   # memory bound does not change it
    assert not np.array_equal(a, bootstrap_ci(r, stat, seed=1))
    point = stat(r)
    assert ((a[0] <= point) & (point <= a[1])).all()
    wide, narrow = bootstrap_ci(r, stat, alpha=.01), bootstrap_ci(r, stat, alpha=.5)
    assert ((wide[0] <= narrow[0]) & (narrow[1] <= wide[1])).all()

def test_evaluate_is_json_and_dict_input_equals_array():
    rng = np.random.default_rng(2)
    r = rng.geometric(.2, 200) - 1.
    r[:150] = np.inf   # the median is censored: MedR and MeanR are unknown, not numbers
    m = rank_metrics(r, n_boot=100)
    assert isinstance(m, Metrics) and m['MedR'] is None and m['MeanR'] is None and m['n_censored'] == 150
    assert json.loads(json.dumps(m, allow_nan=False)) == m
    d = rank_metrics({f'q{i}': (None if i == 0 else x) for i, x in enumerate(r)}, n_boot=100)
    assert d['n_queries'] == 200 and d['n_scored'] == 199
    assert rank_metrics(list(r[1:]), n_boot=100) == {**d, 'n_queries': 199}

def test_metrics_table_rows_and_escaping():
    t = metrics_table({'a|b': rank_metrics([0, 1, 5], ci=False), 'c': rank_metrics([0, 0, np.inf], ci=False)})
    lines = t.splitlines()
    assert len(lines) == 4 and lines[2].startswith('| a\\|b | 33.3 |') and lines[3].endswith('| 3 | 1 |')
    assert t._repr_markdown_() == t

def test_large_matrix_runs_vectorised():
    "2000 x 5000 scores: runs in array operations (no timing assertion); spot-checked against the definition."
    rng = np.random.default_rng(0)
    S = rng.standard_normal((2000, 5000)).astype(np.float32)
    t = rng.integers(0, 5000, 2000)
    ref = (t + 1) % 5000
    r = rank1(S, t, ref)
    assert r.shape == (2000,) and np.isfinite(r).all()
    assert (target_ranks(S, t, ref)[:, 1] == 0).all()                  # float32 noise: no ties
    rows = rng.choice(2000, 20, replace=False)
    np.testing.assert_array_equal(r[rows], _naive(S[rows], t[rows], ref[rows]))
    np.testing.assert_array_equal(r, rank1(S, t, ref, chunk=333))
    m = rank_metrics(r)
    assert 0 <= m['R@1'] <= m['R@5'] <= m['R@10'] <= m['R@50'] <= 100
    assert m['ci']['R@50'][0] <= m['R@50'] <= m['ci']['R@50'][1]


@pytest.mark.parametrize('seed', SEEDS)
def test_a_pair_holds_both_one_sided_ranks(seed):
    S, t, ref = _random_problem(seed, discrete=True)
    r = target_ranks(S, t, ref)
    np.testing.assert_array_equal(r[:, 0], rank1(S, t, ref, 'optimistic'))
    np.testing.assert_array_equal(r[:, 0] + r[:, 1], rank1(S, t, ref, 'pessimistic'))


@pytest.mark.parametrize('seed', range(4))
def test_random_ties_are_the_average_over_random_tie_breaks(seed):
    "R@K of the pairs against R@K averaged over 400 score matrices whose ties a random jitter broke."
    S, t, ref = _random_problem(seed, nq=60, ng=30, discrete=True)   # scores 0..4: many ties
    rng, ks = np.random.default_rng(seed), (1, 2, 5, 10)
    broken = np.mean([recall_at_k(rank1(S + rng.random(S.shape) * 1e-3, t, ref), ks) for _ in range(400)], 0)
    np.testing.assert_allclose(recall_at_k(target_ranks(S, t, ref), ks), broken, atol=1.0)
    p, o = (recall_at_k(rank1(S, t, ref, x), ks) for x in ('pessimistic', 'optimistic'))
    assert (p <= broken + 1e-9).all() and (broken <= o + 1e-9).all() and (p < o).any()


def test_a_list_read_in_any_order_of_its_ties_gives_one_pair():
    ids, scores = ['a', 'b', 'c', 'd', 'e'], [.9, .5, .5, .5, .1]
    for order in ([0, 1, 2, 3, 4], [0, 3, 2, 1, 4], [0, 2, 1, 3, 4]):
        row = {'ids': [ids[i] for i in order], 'scores': [scores[i] for i in order]}
        assert [list_rank(row, x) for x in 'bcd'] == [[1, 2]] * 3
    assert hit_at([[1, 2]], 1).tolist() == [0] and hit_at([[1, 2]], 2).tolist() == pytest.approx([1 / 3])
