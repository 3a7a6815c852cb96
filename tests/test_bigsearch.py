"Search over a feature store: what a notebook is the wrong place for -- damaged or foreign index files, replaced rows."
import faiss
import numpy as np
import pytest
from r3covr.bigsearch import (build_store_index, global_rows, open_store_index, search_store, store_target_ranks,
                              vectors_key)
from r3covr.core import R3Error
from r3covr.store import FeatureStore, exact_topk

def unit(n:int, d:int=32, seed:int=0) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)

@pytest.fixture
def store(tmp_path):
    s = FeatureStore.create(tmp_path/'store', 'toy', 'ab12', dims=32)
    v = unit(3000)
    for lo in range(0, 3000, 1000): s.add([f'v{j}' for j in range(lo, lo + 1000)], ['s'] * 1000, v[lo:lo + 1000])
    return s

def one_line(f) -> str:
    with pytest.raises(R3Error) as e: f()
    assert '\n' not in str(e.value)
    return str(e.value)

def test_damaged_index_file_is_refused_then_rebuilt(store):
    built = build_store_index(store)
    raw = bytearray(built.path.read_bytes()); raw[len(raw) // 2] ^= 0xFF
    built.path.write_bytes(bytes(raw))
    assert one_line(lambda: open_store_index(store)) == f'{built.path.name}: sha256 does not match its JSON'
    assert one_line(lambda: search_store(store, unit(2), 5)).endswith('sha256 does not match its JSON')
    again = build_store_index(store)
    assert not again.reused and open_store_index(store).reused

def test_truncated_or_foreign_files(store):
    built = build_store_index(store)
    built.path.write_bytes(built.path.read_bytes()[:100])                    # a copy cut short
    assert 'sha256 does not match' in one_line(lambda: open_store_index(store))
    assert not build_store_index(store).reused
    built.path.with_suffix('.json').write_text('{"format": "something-else"}')
    assert one_line(lambda: open_store_index(store)) == f'{built.path.stem}.json: not a store index this r3covr reads'
    assert not build_store_index(store).reused
    built.path.with_suffix('.json').write_text('not json')                  # garbled JSON: refused, then rebuilt
    assert 'malformed JSON' in one_line(lambda: open_store_index(store))
    assert not build_store_index(store).reused

def test_no_index_or_several(store, tmp_path):
    assert one_line(lambda: open_store_index(store)) == "store 'store': 0 saved indexes in index/ (build_store_index " \
                                                      'makes one)'
    build_store_index(store); build_store_index(store, nlist=16)
    assert '2 saved indexes' in one_line(lambda: search_store(store, unit(2), 5))
    small = FeatureStore.create(tmp_path/'small', 'toy', 'ab12', dims=32)
    small.add(['a'], ['s'], unit(1))
    assert 'search so few with exact_topk' in one_line(lambda: build_store_index(small))

def test_replaced_rows_and_failures(store):
    "Only each id's newest row is indexed; a failure recorded does not make the index stale."
    new = unit(200, seed=7)
    store.add([f'v{j}' for j in range(0, 2000, 10)], ['s2'] * 200, new)     # 200 videos re-embedded, a new shard
    store.fail(['gone'], ['s'], ['file not found'])
    index = build_store_index(store)
    ivf = faiss.extract_index_ivf(index.index)
    listed = np.concatenate([faiss.rev_swig_ptr(ivf.invlists.get_ids(i), ivf.invlists.list_size(i)).copy()
                             for i in range(ivf.nlist)])
    assert sorted(listed.tolist()) == sorted(global_rows(store, store.ids).tolist())   # 3000 rows, not 3200
    assert index.ntotal == len(store) == 3000
    scores, ids = search_store(store, new[:20], 1, index, nprobe=16)
    assert ids[:, 0].tolist() == [f'v{j}' for j in range(0, 200, 10)]       # the new vectors are found...
    np.testing.assert_allclose(scores[:, 0], np.einsum('ij,ij->i', new[:20], store.vectors(ids[:, 0])), atol=1e-6)
    old = unit(3000)[[0, 10, 20]]                                           # ...the replaced ones are not
    _, ids = search_store(store, old, 5, index, nprobe=16)
    assert not {'v0', 'v10', 'v20'} & set(ids.ravel())
    store.fail(['gone2'], ['s'], ['undecodable'])
    assert vectors_key(store) == index.meta['vectors_key'] and build_store_index(store).reused

def test_target_ranks_with_replaced_rows(store):
    store.add(['v5'], ['s2'], unit(1, seed=3))
    q = unit(4, seed=9)
    ranks = store_target_ranks(store, q, ['v5', 'v6', None, ['v7', 'v8']], ['v1', None, None, 'v9'], block_rows=700)
    V = store.vectors(store.ids).astype(np.float64)
    S = q.astype(np.float64) @ V.T
    col = {i: j for j, i in enumerate(store.ids)}
    def brute(i, targets, ref):
        own = max(S[i, col[t]] for t in targets)
        others = [j for j, x in enumerate(store.ids) if x not in targets and x != ref]
        return [(S[i, others] > own + 1e-9).sum(), (np.abs(S[i, others] - own) <= 1e-9).sum()]
    assert ranks[0].tolist() == brute(0, ['v5'], 'v1')
    assert ranks[1].tolist() == brute(1, ['v6'], None)
    assert np.isnan(ranks[2]).all()
    assert ranks[3].tolist() == brute(3, ['v7', 'v8'], 'v9')

def test_search_matches_exact_on_tiny_lists(store):
    q = unit(20, seed=11)
    _, exact = exact_topk(store, q, 10)
    index = build_store_index(store)
    _, ids = search_store(store, q, 10, index, nprobe=index.meta['params']['nlist'], rescore=3000)
    assert ids.tolist() == exact.tolist()                                    # every list, every candidate: exact
