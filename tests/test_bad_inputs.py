"""Every kind of bad input through the command line: an input error is exit status 2 and one line naming the item;
a row or item that can be skipped is skipped and recorded (exit 0); never a traceback."""
import os
os.environ.setdefault('HF_HUB_OFFLINE', '1')
import json
import stat
import subprocess
import time
from pathlib import Path
import pytest
from r3covr.core import read_jsonl

CSV_HEAD = 'pth1,pth2,txt1,txt2,edit\n'
GOOD_ROWS = ''.join(f'{i}/a,{i}/b,a red ball number {i},a blue ball number {i},make it blue\n' for i in range(4))


@pytest.fixture(scope='module')
def cache(tmp_path_factory): return tmp_path_factory.mktemp('cache')


def r3covr(*args, cache, cwd=None, wait=True):
    env = {**os.environ, 'R3COVR_CACHE': str(cache), 'HF_HUB_OFFLINE': '1'}
    if not wait:
        return subprocess.Popen(['r3covr', *args], env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
    return subprocess.run(['r3covr', *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=900)


def one_line_error(p, *names):
    "Exit 2, one line on stderr, no traceback, naming every one of `names`."
    assert p.returncode == 2, (p.returncode, p.stderr[-2000:])
    assert 'Traceback' not in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr[-2000:]
    for n in names: assert n in p.stderr, (n, p.stderr)


def ok(p):
    assert p.returncode == 0 and 'Traceback' not in p.stderr, p.stderr[-3000:]
    return p


def toy(tmp_path, dataset, *more, cache):
    return r3covr('run', '--dataset', str(dataset), '--preset', 'toy', '--out', str(tmp_path/'run'), *more, cache=cache)


# ---------------------------------------------------------------- settings

@pytest.mark.parametrize('bad,names', [
    (['--set', 'batch_size=0'], ['batch_size=0']), (['--set', 'index=xyz'], ['index', 'xyz']),
    (['--set', 'template=nope'], ['template', 'nope']), (['--set', 'strategy=foo'], ['strategy', 'foo']),
    (['--set', 'frames.n=0'], ['frames.n=0']), (['--set', 'vlm.foo=1'], ['vlm.foo']),
    (['--set', 'budget=abc'], ['budget', 'abc']), (['--set', 'k=-1'], ['k=-1']),
    (['--set', 'weight=abc'], ['weight', 'abc']), (['--set', 'rerank_k=0'], ['rerank_k=0']),
    (['--set', 'budget=0'], ['budget=0']), (['--set', 'rerank=maybe'], ['rerank', 'maybe']),
    (['--n', '-1'], ['n=-1']), (['--set', 'weight'], ['weight', 'KEY=VALUE']), (['--set', 'wieght=0.3'], ['wieght']),
    (['--root', '/does-not-exist'], ['/does-not-exist']), (['--preset', 'nope'], ['nope'])])
def test_bad_setting_is_one_line_before_any_work(bad, names, cache, tmp_path):
    t0 = time.time()
    p = r3covr('run', '--preset', 'toy', '--n', '2', '--out', str(tmp_path/'run'), *bad, cache=cache)
    one_line_error(p, *names)
    assert not (tmp_path/'run').exists()                   # refused before the run folder was made
    assert time.time() - t0 < 60


# ---------------------------------------------------------------- files that cannot be read

@pytest.mark.parametrize('name,content,names', [
    ('latin.csv', CSV_HEAD.encode() + b'1/a,1/b,caf\xe9,x,make it blue\n', ['latin.csv', 'not UTF-8', 'line 2']),
    ('latin.json', b'[{"video_source": "1/a", "video_target": "1/b", "modification_text": "caf\xe9"}]',
     ['latin.json', 'not UTF-8']),
    ('header.csv', CSV_HEAD.encode(), ['header.csv', 'no usable query']),
    ('empty.json', b'[]', ['empty.json', 'no usable query']),
    ('shape.json', b'[{"webvid": [1, 2, "x"]}]', ['shape.json', 'no usable query', 'expected an object']),
    ('quote.csv', (CSV_HEAD + '1/a,1/b,x,y,"make it blue\n2/a,2/b,x,y,make it red\n').encode(),
     ['quote.csv', 'unclosed quote']),
    ('trunc.json', b'[{"video_source": "1/a", ', ['trunc.json', 'malformed JSON']),
    ('nocols.csv', b'a,b\n1,2\n', ['nocols.csv', 'missing required column'])])
def test_unreadable_dataset_is_one_line(name, content, names, cache, tmp_path):
    f = tmp_path/name; f.write_bytes(content)
    one_line_error(toy(tmp_path, f, cache=cache), *names)


# ---------------------------------------------------------------- rows skipped at load: recorded and counted

def test_bad_rows_are_skipped_recorded_and_counted(cache, tmp_path):
    bad = ('../../etc/x,9/b,x,y,make it red\n'          # climbs out of the root
           '/abs/a,9/c,x,y,make it red\n'               # absolute
           '8/a,8/b,x,y,   \n')                         # empty edit
    f = tmp_path/'rows.csv'; f.write_text(CSV_HEAD + GOOD_ROWS + bad)
    p = ok(toy(tmp_path, f, cache=cache))
    m = json.loads((tmp_path/'run'/'metrics.json').read_text())
    assert (m['n_queries'], m['n_skipped_at_load']) == (4, 3)
    assert '3 rows skipped at load' in p.stdout
    load = [e for e in read_jsonl(tmp_path/'run'/'errors.jsonl') if e['stage'] == 'load']
    assert [e['id'] for e in load] == ['row 4', 'row 5', 'row 6']
    assert 'climbs out' in load[0]['error'] and 'empty' in load[2]['error']
    one_line_error(toy(tmp_path, f, '--strict', '--out', str(tmp_path/'strict'), cache=cache),
                   '3 rows skipped at load', '--strict')


def test_challenge_file_ids_and_duplicates_and_gallery_links(cache, tmp_path):
    """A path-like query id, a duplicate id and a gallery file that links out of the folder: skipped and recorded;
    nothing written outside."""
    from r3covr.synthetic import make_synthetic
    import shutil
    syn = make_synthetic(n_queries=200)
    qs = list(syn)[:3]
    recs = [dict(id=i, video_source=q.reference, modification_text=q.edit) for i, q in enumerate(qs)]
    recs += [dict(recs[0], id='../../../../../x/PWNED'), dict(recs[1], id=1)]           # path-like id; duplicate id 1
    ch = tmp_path/'challenge.json'; ch.write_text(json.dumps([{'webvid': recs}]))
    gal = tmp_path/'gallery'; gal.mkdir()
    for v in list(syn.gallery)[:8]: shutil.copy(syn.videos[v].path, gal/f'{v}.mp4')
    (gal/'leak.mp4').symlink_to(syn.videos[list(syn.gallery)[9]].path)                  # a link out of the folder
    work = tmp_path/'cwd'; work.mkdir()
    ok(r3covr('run', '--dataset', str(ch), '--root', str(syn.root/'videos'), '--gallery', str(gal), '--preset', 'tiny',
              '--out', str(tmp_path/'run'), '--set', 'k=4', 'rerank_k=2', 'batch_size=2', cache=cache, cwd=work))

    errs = read_jsonl(tmp_path/'run'/'errors.jsonl')
    assert {e['id'] for e in errs if e['stage'] == 'load'} == {'webvid[3]', 'webvid[4]', 'gallery leak'}
    assert json.loads((tmp_path/'run'/'metrics.json').read_text())['n_skipped_at_load'] == 3
    figures = tmp_path/'run'/'figures'
    assert not list(work.iterdir()) and not Path('/x/PWNED.png').exists()
    assert not (figures/'query-webvid/../../../../../x/PWNED.png').resolve().exists()
    assert all(f.parent == figures for f in figures.iterdir()) and not any('PWNED' in f.name for f in figures.iterdir())


# ---------------------------------------------------------------- texts of any length

def test_huge_edit_is_cut_and_recorded(cache, tmp_path):
    f = tmp_path/'huge.csv'
    f.write_text(CSV_HEAD + GOOD_ROWS + '9/a,9/b,a green ball,a red ball,' + 'make it red and shiny ' * 5000 + '\n')
    ok(toy(tmp_path, f, cache=cache))
    m = json.loads((tmp_path/'run'/'metrics.json').read_text())
    assert (m['n_queries'], m['n_scored'], m['n_cut']) == (5, 5, 1)
    cut = [e for e in read_jsonl(tmp_path/'run'/'errors.jsonl') if e['stage'] == 'cut']
    assert cut[0]['id'] == '4' and cut[0]['error'].startswith('edit cut from')
    assert int(cut[0]['error'].split()[-2]) <= 512


# ---------------------------------------------------------------- the run folder

def test_files_follow_the_umask(cache, tmp_path):
    umask = os.umask(0o022); os.umask(umask)
    ok(toy(tmp_path, 'synthetic', '--n', '3', cache=cache))
    files = [tmp_path/'run'/n for n in ('config.json', 'metrics.json', 'table.md', 'ranks.json', 'rankings.jsonl')]
    for f in files + list((tmp_path/'run'/'figures').iterdir()):
        assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~umask, (f.name, oct(f.stat().st_mode))   # not mkstemp's 0600


@pytest.mark.parametrize('where', ['project', 'file', 'unwritable'])
def test_out_that_is_not_a_run_folder_is_one_line(where, cache, tmp_path):
    """`--out .` in a project folder would overwrite its config.json, metrics.json, table.md and errors.jsonl; a file
    or a folder that cannot be written was a traceback. Each is one line, exit 2, and nothing is written."""
    project = tmp_path/'project'; project.mkdir()
    mine = {n: f'my {n}' for n in ('config.json', 'metrics.json', 'table.md', 'errors.jsonl')}
    for n, text in mine.items(): (project/n).write_text(text)
    out = {'project': '.', 'file': 'table.md', 'unwritable': '/proc/self/run'}[where]
    p = r3covr('run', '--preset', 'toy', '--n', '2', '--out', out, cache=cache, cwd=project)
    one_line_error(p, out)
    assert {n: (project/n).read_text() for n in mine} == mine and sorted(os.listdir(project)) == sorted(mine)


def test_out_of_a_finished_or_killed_run_is_accepted(cache, tmp_path):
    "A folder a run wrote (even one killed before its config.json) is a run folder: the next run resumes there."
    out = tmp_path/'run'
    ok(r3covr('run', '--preset', 'toy', '--n', '2', '--out', str(out), cache=cache))
    (out/'config.json').unlink()
    ok(r3covr('run', '--preset', 'toy', '--n', '2', '--out', str(out), cache=cache))


def test_error_records_are_linear_in_the_failures(tmp_path):
    """A stage where every item fails records each one as it fails: the folder must not read errors.jsonl back once
    per failure (quadratic). Bytes read by this process: each append's own check for a torn tail (at most 64 KiB,
    `append_jsonl`) plus a few times the file's size -- not the file once per failure."""
    from r3covr.runfolder import RunFolder
    def rchar(): return int(dict(line.split(': ') for line in Path('/proc/self/io').read_text().splitlines())['rchar'])
    rf, n, why = RunFolder(tmp_path/'run'), 600, 'the model answered nothing useful: ' + 'x' * 1000
    rf.record_errors('reason', [('warm-up', 'x')])
    before = rchar()
    for i in range(n): rf.record_errors('reason', [(f'q{i:05d}', why)])
    read, size = rchar() - before, rf.path('errors').stat().st_size
    assert len(rf.errors('reason')) == n + 1 and size > 600_000
    assert read < n * 65536 + 5 * size, (read, size)      # quadratic: n / 2 = 300 times the size on top


@pytest.mark.parametrize('argv,names', [
    (['eval', 'typo.jsonl', '--dataset', 'synthetic'], ['typo.jsonl', 'no such file']),
    (['eval', 'noids.jsonl', '--dataset', 'synthetic'], ['noids.jsonl', 'record 1']),
    (['ablate', '--preset', 'toy', '--budgets', '16,abc'], ['16,abc'])])
def test_cli_argument_errors_are_one_line(argv, names, cache, tmp_path):
    (tmp_path/'noids.jsonl').write_text('{"id": "q0"}\n')
    one_line_error(r3covr(*argv, cache=cache, cwd=tmp_path), *names)
    assert not (tmp_path/'runs').exists()                  # refused before any run folder was made


def test_control_characters_in_an_error_are_escaped(cache, tmp_path):
    "A terminal escape in a name reaches the error as text ('\\x1b[31m'), so it cannot recolour or rewrite the screen."
    p = r3covr('run', '--dataset', str(tmp_path/'red\x1b[31mfile\rx.csv'), '--preset', 'toy', cache=cache)
    one_line_error(p, 'red\\x1b[31mfile\\rx.csv')
    assert '\x1b' not in p.stderr and '\r' not in p.stderr


def test_a_path_like_query_id_that_gets_in_still_names_its_figure_inside(cache, tmp_path, monkeypatch):
    "Loaders refuse path-like ids; one given through the API reaches `safe_name` and its figure stays in figures/."
    monkeypatch.setenv('R3COVR_CACHE', str(cache))
    from dataclasses import replace
    from r3covr.pipeline import dataset_of, run
    from r3covr.settings import run_config
    from r3covr.viz import RunView, save_run_figures
    ds = dataset_of(run_config(preset='toy', n=3))
    evil = ['../../../../x/PWNED', '/tmp/PWNED', 'a\x00b/../PWNED']
    ds = replace(ds, queries=tuple(replace(q, id=i) for q, i in zip(ds.queries, evil)))
    run(tmp_path/'run', ds, preset='toy', k=5, rerank_k=2)
    paths = save_run_figures(RunView(tmp_path/'run', ds=ds))
    figures = (tmp_path/'run'/'figures').resolve()
    assert any(p.name.startswith('query-') for p in paths)
    assert all(p.resolve().parent == figures for p in paths) and not Path('/x/PWNED.png').exists()
    assert not any(f.name.startswith('PWNED') for f in Path('/tmp').iterdir())
