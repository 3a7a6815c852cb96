"""The feature store under damage a notebook should not stage: a shard file or ids file cut short, a garbled or foreign
manifest, a writer killed between its shard and its manifest (leaving temporary and unlisted files), a stale second
writer adding after that crash, and writers in several processes adding to one store at once."""
import json
import re
import multiprocessing
import os
import numpy as np
import pytest
from r3covr.core import R3Error
import r3covr.store as store_mod
from r3covr.store import FeatureStore, MANIFEST, exact_topk, sha256_file


def unit(n, d=8, seed=0):
    v = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def make(folder, shards=2, rows=5, dtype='float16'):
    "A store with `shards` shards of `rows` videos each: ids v0, v1, ..., signature 's' + id."
    s = FeatureStore.create(folder, 'toy', 'ab12cd34ef56', 8, dtype, settings=dict(view='frames'))
    for k in range(shards):
        ids = [f'v{k * rows + j}' for j in range(rows)]
        s.add(ids, ['s' + i for i in ids], unit(rows, seed=k))
    return s


def pairs(ids): return [(i, 's' + i) for i in ids]


def files(folder): return sorted(p.name for p in folder.iterdir())


# -- damaged shards: healed, or refused naming the file --------------------------------------------------------------

@pytest.mark.parametrize('verify', [True, False])
def test_truncated_shard_is_set_aside_and_its_ids_are_missing(tmp_path, verify):
    make(tmp_path/'st')
    npy = tmp_path/'st'/'shard-00000.npy'
    npy.write_bytes(npy.read_bytes()[:150])                       # cut inside the vectors (header is 128 bytes)
    with pytest.raises(R3Error, match=f'^{npy}: '):               # refused, naming the file, when asked not to heal
        FeatureStore.open(tmp_path/'st', heal=False, verify=verify)
    s = FeatureStore.open(tmp_path/'st', verify=verify)          # without the checksum, the short file is caught too
    assert s.missing(pairs(f'v{j}' for j in range(10))) == pairs(f'v{j}' for j in range(5))
    (d,) = s.manifest['dropped']
    assert (d['name'], d['file'], d['ids']) == ('shard-00000', 'shard-00000.npy', [f'v{j}' for j in range(5)])
    assert ('sha256' if verify else 'unreadable') in d['why']
    assert 'shard-00000.npy.damaged' in files(tmp_path/'st') and 'shard-00000.npy' not in files(tmp_path/'st')
    assert s.add([f'v{j}' for j in range(5)], ['s' + f'v{j}' for j in range(5)], unit(5, seed=0)) == 'shard-00002'
    # ^ not shard-00000 again: a name a manifest once listed is never reused
    again = FeatureStore.open(tmp_path/'st', heal=False)          # healed for good: nothing damaged is listed now
    assert len(again) == 10 and again.manifest['counts'] == dict(vectors=10, rows=10, failures=0)
    np.testing.assert_allclose(again.vectors(['v0']), unit(5, seed=0)[:1], atol=1e-3)


def test_truncated_ids_file_is_set_aside(tmp_path):
    make(tmp_path/'st')
    ids = tmp_path/'st'/'shard-00001.ids.json'
    ids.write_bytes(ids.read_bytes()[:20])
    s = FeatureStore.open(tmp_path/'st', verify=False)             # no checksum: the JSON itself is found broken
    (d,) = s.manifest['dropped']
    assert (d['file'], d['why'], d['ids']) == ('shard-00001.ids.json', 'not valid JSON', [])   # ids unreadable
    assert s.ids == [f'v{j}' for j in range(5)]


def test_missing_shard_file_is_healed(tmp_path):
    make(tmp_path/'st')
    (tmp_path/'st'/'shard-00001.npy').unlink()
    s = FeatureStore.open(tmp_path/'st')
    assert s.manifest['dropped'][0]['why'] == 'missing' and len(s) == 5


def test_a_shard_of_the_wrong_shape_is_damage(tmp_path):
    make(tmp_path/'st', dtype='float32')
    npy = tmp_path/'st'/'shard-00000.npy'
    np.save(npy, unit(5, d=4))                                    # a valid .npy, but not what the manifest says
    with pytest.raises(R3Error, match=r'holds \(5, 4\) float32, the manifest says \(5, 8\) float32'):
        FeatureStore.open(tmp_path/'st', heal=False, verify=False)


# -- the manifest: refused, naming the file ----------------------------------------------------------------------------

@pytest.mark.parametrize('text, says', [
    ('{"format": "r3covr-feature-store", "vers', 'malformed JSON'),
    (b'\xff\xfe{}', 'not UTF-8'),
    ('[1, 2]', 'not a feature store manifest'),
    ('{"format": "r3covr-feature-store", "version": 7}', 'format version 7; this r3covr reads version 1'),
])
def test_garbled_manifest_is_refused(tmp_path, text, says):
    make(tmp_path/'st')
    m = tmp_path/'st'/MANIFEST
    m.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(R3Error) as e: FeatureStore.open(tmp_path/'st')
    assert str(e.value).startswith(str(m)) and says in str(e.value)
    assert len(str(e.value).splitlines()) == 1


def test_manifest_fields_are_checked(tmp_path):
    make(tmp_path/'st')
    m = tmp_path/'st'/MANIFEST
    good = json.loads(m.read_text())
    for bad, says in [({**good, 'shards': [{**good['shards'][0], 'name': '../shard-00000'}]}, 'shards[0]'),
                      ({**good, 'dims': 'eight'}, 'dims'), ({**good, 'dtype': 'int8'}, 'dtype'),
                      ({k: v for k, v in good.items() if k != 'failures'}, 'failures')]:
        m.write_text(json.dumps(bad))
        with pytest.raises(R3Error, match=f'missing or malformed .*{re.escape(says)}'): FeatureStore.open(tmp_path/'st')


def test_no_manifest_is_no_store(tmp_path):
    with pytest.raises(R3Error, match=f'^{tmp_path/"nowhere"/MANIFEST}: no feature store manifest'):
        FeatureStore.open(tmp_path/'nowhere')
    assert not (tmp_path/'nowhere').exists()                      # opening creates nothing


# -- crashes and second writers -----------------------------------------------------------------------------------

def test_second_add_after_a_crash_between_shard_and_manifest(tmp_path, monkeypatch):
    folder = tmp_path/'st'
    a, b = make(folder, shards=1), FeatureStore.open(folder)        # b: a second writer, opened before the crash
    def killed(path, obj, **kw): raise KeyboardInterrupt          # the process dies before its manifest is written
    with monkeypatch.context() as mp:
        mp.setattr(store_mod, 'write_json', killed)
        with pytest.raises(KeyboardInterrupt): a.add(['x0', 'x1'], ['sx0', 'sx1'], unit(2))
    (folder/'.shard-00002.npy.k3j9x').write_bytes(b'\x93NUMPY\x01')   # and another one mid-write of its shard
    (folder/'.manifest.json.p0q1r2').write_text('{"format"')
    assert 'shard-00001.npy' in files(folder)                     # written, never listed
    assert FeatureStore.open(folder, heal=False).ids == [f'v{j}' for j in range(5)]   # readers ignore all of it
    assert b.add(['y0'], ['sy0'], unit(1)) == 'shard-00001'       # the leftovers are swept; their names were never
    assert files(folder) == ['.lock', MANIFEST, 'shard-00000.ids.json', 'shard-00000.npy',   # listed, so free again
                             'shard-00001.ids.json', 'shard-00001.npy']
    s = FeatureStore.open(folder, heal=False)
    assert s.missing(pairs(['v0', 'x0', 'y0'])) == [('x0', 'sx0')]
    assert s.ids == [*(f'v{j}' for j in range(5)), 'y0']   # the crashed add is simply to be done again
    assert s.manifest['counts'] == dict(vectors=6, rows=6, failures=0)


def test_a_stale_writer_keeps_the_other_writers_shards(tmp_path):
    folder = tmp_path/'st'
    a = make(folder, shards=1)
    b = FeatureStore.open(folder)
    a.add(['a1'], ['sa1'], unit(1))
    a.fail(['bad'], ['sbad'], ['undecodable'])
    b.add(['b1'], ['sb1'], unit(1))                               # b read the manifest before a's add and fail
    assert b.has('a1', 'sa1') and b.has('b1') and b.manifest['failures'][0]['id'] == 'bad'
    s = FeatureStore.open(folder, heal=False)
    assert [x['name'] for x in s.manifest['shards']] == ['shard-00000', 'shard-00001', 'shard-00002']
    assert all(sha256_file(folder/f'{x["name"]}.npy') == x['sha256']['npy'] for x in s.manifest['shards'])


def _writer(args):
    folder, w = args
    s = FeatureStore.open(folder)
    for k in range(5):
        ids = [f'w{w}-{k}-{j}' for j in range(3)]
        s.add(ids, ['s'] * 3, unit(3, seed=100 * w + k))
    return w


def test_concurrent_writers_in_processes(tmp_path):
    folder = tmp_path/'st'
    FeatureStore.create(folder, 'toy', 'ab12cd34ef56', 8)
    with multiprocessing.get_context('fork').Pool(4) as pool:
        assert sorted(pool.map(_writer, [(folder, w) for w in range(4)])) == [0, 1, 2, 3]
    s = FeatureStore.open(folder, heal=False)                     # every shard listed once, every checksum right
    assert len(s.manifest['shards']) == 20 and len({x['name'] for x in s.manifest['shards']}) == 20
    assert len(s) == 60 and s.manifest['counts']['vectors'] == 60
    np.testing.assert_allclose(s.vectors(['w2-4-0', 'w2-4-2']), unit(3, seed=204)[[0, 2]], atol=1e-3)
    assert [n for n in os.listdir(folder) if n.startswith('.') and n != '.lock'] == []


# -- what add refuses, and blocks with holes ---------------------------------------------------------------------------

def test_add_refuses_what_does_not_fit(tmp_path):
    s = make(tmp_path/'st', shards=0)
    for ids, sigs, v, says in [(['a', 'b'], ['s'], unit(2), '2 ids, 1 signatures'),
                               (['a'], ['s'], unit(1, d=4), 'the store holds 8-d vectors'),
                               (['a', 'a'], ['s', 's'], unit(2), 'given twice'),
                               (['a'], ['s'], np.full((1, 8), 1e5), "'a' is not finite as float16")]:
        with pytest.raises(R3Error, match=says): s.add(ids, sigs, v)
    assert s.add([], [], np.zeros((0, 8))) is None and files(tmp_path/'st') == ['.lock', MANIFEST]


def test_blocks_skip_replaced_rows_and_topk_matches_brute_force(tmp_path):
    s = make(tmp_path/'st', shards=3, rows=7, dtype='float32')
    s.add(['v3', 'v9'], ['new', 'new'], unit(2, seed=9))          # rows in the middle of shards 0 and 1 replaced
    blocks = list(s.iter_blocks(4))
    ids = [i for b, _ in blocks for i in b]
    assert sorted(ids) == sorted(s.ids) and max(len(b) for b, _ in blocks) <= 4
    allv = np.concatenate([v for _, v in blocks])
    np.testing.assert_array_equal(allv, s.vectors(ids))
    q = unit(3, seed=5)
    sc, top = exact_topk(s, q, k=6, block_rows=4)
    S = q @ allv.T
    want = np.argsort(-S, axis=1)[:, :6]
    assert top.tolist() == np.array(ids)[want].tolist()
    np.testing.assert_allclose(sc, np.take_along_axis(S, want, 1), rtol=1e-6)
    sc, top = exact_topk(s, q, k=100)                            # k above the store's size: all of it, sorted
    assert top.shape == (3, len(s)) and (np.diff(sc, axis=1) <= 0).all()
