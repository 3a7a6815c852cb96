"""One run at a time in a run folder: the lock is the kernel's (`flock` on `run.lock`, held for the whole run), so a
killed run's lock is free at once, a live run's lock is never taken over whatever its file says, a second run is
refused in one line naming the holder (or waits), the lock is re-entrant within a process, and `ablate` writes its
folders under their locks."""
import os
os.environ.setdefault('HF_HUB_OFFLINE', '1')
import json
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
import pytest
from r3covr.core import R3Error, read_jsonl
from r3covr.runfolder import RunFolder

HOLD = '''
import sys, time
from r3covr.runfolder import RunFolder
with RunFolder(sys.argv[1]).locked():
    print('held', flush=True)
    sys.stdin.read() if sys.argv[2] == 'stdin' else time.sleep(float(sys.argv[2]))
'''

TRY = '''
import sys
from r3covr.runfolder import RunFolder
try:
    with RunFolder(sys.argv[1]).locked(): print('locked')
except Exception as e: print(type(e).__name__, e)
'''


@contextmanager
def holder(folder, hold='stdin'):
    "Another process holding `folder`'s lock until the block ends (or for `hold` seconds)."
    p = subprocess.Popen([sys.executable, '-c', HOLD, str(folder), hold], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == 'held'
    try: yield p
    finally:
        p.stdin.close(); p.wait(timeout=120)


def other_process_tries(folder) -> str:
    "What another process gets when it tries to lock `folder`."
    return subprocess.run([sys.executable, '-c', TRY, str(folder)], capture_output=True, text=True,
                          timeout=120).stdout.strip()


def refused_by(folder, pid) -> str:
    return f'{folder} is in use by process {pid} on {socket.gethostname()}'


def test_a_live_holder_is_never_taken_over_whatever_its_file_says(tmp_path):
    "The file is information only: emptied, naming another host, or garbage, the holder's lock still refuses."
    rf = RunFolder(tmp_path/'run')
    with holder(rf.dir) as h:
        t0 = time.time()
        with pytest.raises(R3Error) as e:
            with rf.locked(): pass
        assert time.time() - t0 < 5 and len(str(e.value).splitlines()) == 1                   # at once, one line
        assert str(e.value).startswith(refused_by(rf.dir, h.pid)), str(e.value)
        for content in ['', json.dumps(dict(pid=1, host='another-host', since='then')), '{garbage']:
            rf.path('lock').write_text(content)                 # the window before the write; NFS; a damaged file
            with pytest.raises(R3Error, match='is in use by'):
                with rf.locked(): pass
        assert h.poll() is None
    with rf.locked(): assert json.loads(rf.path('lock').read_text())['pid'] == os.getpid()


def test_a_lock_file_naming_this_very_process_does_not_refuse_it(tmp_path):
    "A container restarted with the same pid and hostname: the old file names us, and nobody holds the lock."
    rf = RunFolder(tmp_path/'run'); rf.dir.mkdir()
    rf.path('lock').write_text(json.dumps(dict(pid=os.getpid(), host=socket.gethostname(), since='earlier')))
    with rf.locked(): assert json.loads(rf.path('lock').read_text())['since'] != 'earlier'


def test_the_lock_file_is_never_deleted_and_a_release_frees_only_its_own_lock(tmp_path):
    rf = RunFolder(tmp_path/'run')
    with rf.locked(): pass
    assert rf.path('lock').exists() and rf.path('lock').read_text() == ''                 # kept, emptied
    with holder(rf.dir) as h:                                                            # another run holds it now
        assert other_process_tries(rf.dir).startswith(f'R3Error {refused_by(rf.dir, h.pid)}')
    assert other_process_tries(rf.dir) == 'locked'


def test_a_killed_holder_frees_the_lock_and_racing_resumers_never_share_it(tmp_path):
    "kill -9 a holder, then eight processes race for its folder at once: their held intervals never overlap."
    rf = RunFolder(tmp_path/'run')
    h = subprocess.Popen([sys.executable, '-c', HOLD, str(rf.dir), 'stdin'], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    assert h.stdout.readline().strip() == 'held'
    os.kill(h.pid, signal.SIGKILL); h.wait()
    assert json.loads(rf.path('lock').read_text())['pid'] == h.pid                      # the dead run's file is left
    race = ('import sys, time, json, os\nfrom pathlib import Path\nfrom r3covr.runfolder import RunFolder\n'
            'from r3covr.core import R3Error\nprint("ready", flush=True)\n'
            'while not Path(sys.argv[2]).exists(): time.sleep(0.001)\n'
            'try:\n    with RunFolder(sys.argv[1]).locked():\n        t0 = time.time(); time.sleep(1.5)\n'
            '        print(json.dumps(["won", os.getpid(), t0, time.time()]))\n'
            'except R3Error as e: print(json.dumps(["refused", os.getpid(), str(e)]))\n')
    go = tmp_path/'go'
    ps = [subprocess.Popen([sys.executable, '-c', race, str(rf.dir), str(go)], stdout=subprocess.PIPE, text=True)
          for _ in range(8)]
    for p in ps: assert p.stdout.readline().strip() == 'ready'
    go.touch()
    res = [json.loads(p.communicate(timeout=120)[0]) for p in ps]
    won = sorted((r[2], r[3]) for r in res if r[0] == 'won')
    refused = [r[2] for r in res if r[0] == 'refused']
    assert won and refused, res
    assert all(a[1] <= b[0] for a, b in zip(won, won[1:])), won                       # one holder at any time
    pids = {r[1] for r in res if r[0] == 'won'}
    assert all(any(f'in use by process {pid} ' in m for pid in pids) for m in refused), refused


def test_nested_lock_in_one_process_neither_deadlocks_nor_releases_early(tmp_path):
    rf = RunFolder(tmp_path/'run')
    with rf.locked():
        with RunFolder(tmp_path/'run').locked():                           # e.g. ablate holds base/, run locks it
            inner = other_process_tries(rf.dir)
        after_inner = other_process_tries(rf.dir)
    assert inner.startswith(f'R3Error {refused_by(rf.dir, os.getpid())}'), inner
    assert after_inner == inner                                            # still held after the inner block
    assert other_process_tries(rf.dir) == 'locked'


def test_wait_waits_for_the_holder_and_says_so(tmp_path, capsys):
    rf = RunFolder(tmp_path/'run')
    with holder(rf.dir, hold='2') as h:
        t0 = time.time()
        with pytest.raises(R3Error, match='is in use by process'):
            with rf.locked(wait=0.3): pass
        assert time.time() - t0 >= 0.3
        with rf.locked(wait=120): waited = time.time() - t0
        assert waited > 1.0                                                # until the holder let go
    assert f'waiting: {refused_by(rf.dir, h.pid)}' in capsys.readouterr().err


def test_a_bad_lock_wait_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv('R3COVR_LOCK_WAIT', 'soon')
    with pytest.raises(R3Error, match='R3COVR_LOCK_WAIT must be a number of seconds'):
        with RunFolder(tmp_path/'run').locked(): pass


def test_cli_second_run_is_refused_while_the_first_holds_the_folder(tmp_path):
    """Through the command line: a run frozen while it holds its folder (SIGSTOP) is not overtaken -- a second run is
    refused in one line naming it, a third with R3COVR_LOCK_WAIT waits for it -- and no record is written twice."""
    cache, out = tmp_path/'cache', tmp_path/'run'
    cmd = ['r3covr', 'run', '--preset', 'toy', '--n', '60', '--set', 'batch_size=1', 'rerank_k=4', '--out', str(out)]
    env = {**os.environ, 'R3COVR_CACHE': str(cache), 'HF_HUB_OFFLINE': '1'}
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    def holds():
        try: return json.loads((out/'run.lock').read_text())['pid'] == first.pid
        except (OSError, ValueError): return False
    deadline = time.time() + 300
    while not holds() and first.poll() is None and time.time() < deadline: time.sleep(0.005)
    os.kill(first.pid, signal.SIGSTOP)
    try:
        assert first.poll() is None and holds(), 'the first run finished before it could be stopped'
        second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        third = subprocess.Popen(cmd, env={**env, 'R3COVR_LOCK_WAIT': '600'}, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE, text=True)
        time.sleep(3)
        assert third.poll() is None                                        # waiting, not running beside the first
    finally: os.kill(first.pid, signal.SIGCONT)
    assert first.wait(timeout=300) == 0
    third_err = third.communicate(timeout=300)[1]
    assert second.returncode == 2 and len(second.stderr.strip().splitlines()) == 1, second.stderr
    assert refused_by(out, first.pid) in second.stderr and 'Traceback' not in second.stderr
    assert third.returncode == 0 and f'waiting: {refused_by(out, first.pid)}' in third_err, third_err[-2000:]
    for f in out.glob('*-*.jsonl'):
        ids = [r['id'] for r in read_jsonl(f)]
        assert len(ids) == len(set(ids)), f.name                          # one writer: nothing done twice


def test_ablate_holds_its_folder_and_base_while_it_writes_there(tmp_path, monkeypatch):
    "After the base run returns, ablate still reranks into base/: another process is refused both folders then."
    import r3covr.ablate as ablate_module
    seen, real = [], ablate_module.rerank
    def spy(cfg, ds, models, folder, *rest):
        if not seen: seen.append((other_process_tries(folder.dir), other_process_tries(tmp_path/'abl')))
        return real(cfg, ds, models, folder, *rest)
    monkeypatch.setattr(ablate_module, 'rerank', spy)
    res = ablate_module.ablate(tmp_path/'abl', budgets=[], rerank_ks=[2, 4], weights=[0], modes=[], route_weights=[],
                               preset='toy', n=4, k=6, routes=['direct', 'description'])
    assert [r['setting'] for r in res['rows']].count('rerank K') == 2
    base, top = seen[0]
    assert base.startswith(f"R3Error {refused_by(tmp_path/'abl'/'base', os.getpid())}"), base
    assert top.startswith(f"R3Error {refused_by(tmp_path/'abl', os.getpid())}"), top
    assert other_process_tries(tmp_path/'abl'/'base') == 'locked'                          # released at the end


def test_a_filesystem_without_locks_is_one_line(tmp_path, monkeypatch):
    "sshfs and some object-store mounts answer flock with an error: refused in one line, never run unprotected."
    import errno
    import fcntl
    def no_locks(fd, op): raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))
    monkeypatch.setattr(fcntl, 'flock', no_locks)
    with pytest.raises(R3Error, match='this filesystem has no working locks'):
        with RunFolder(tmp_path/'run').locked(): pass


@pytest.mark.parametrize('where', ['file', 'project', 'proc'])
def test_locked_refuses_what_is_not_a_run_folder(where, tmp_path):
    "Every entry point locks first: a file, a folder holding other things, a folder that cannot be written."
    if where == 'file': d = tmp_path/'notes.txt'; d.write_text('mine')
    elif where == 'project': d = tmp_path; (d/'config.json').write_text('{"name": "mine"}')
    else: d = Path('/proc/self/run')
    with pytest.raises(R3Error) as e:
        with RunFolder(d).locked(): pass
    assert len(str(e.value).splitlines()) == 1 and str(d) in str(e.value)
    if where != 'proc': assert not (tmp_path/'run.lock').exists()


@pytest.mark.parametrize('cmd', ['run', 'ablate'])
def test_cli_draws_its_figures_under_the_lock(cmd, tmp_path, monkeypatch):
    "The figures of `run` and the plot of `ablate` are written while the folder is still locked."
    import r3covr.viz as viz
    from r3covr.cli import main
    seen, name = [], {'run': 'save_run_figures', 'ablate': 'plot_ablation'}[cmd]
    real = getattr(viz, name)
    def spy(*a, **kw):
        seen.append(other_process_tries(tmp_path/'out'))
        return real(*a, **kw)
    monkeypatch.setattr(viz, name, spy)
    monkeypatch.setenv('R3COVR_CACHE', str(tmp_path/'cache'))
    sweep = ['--budgets', '', '--ks', '2', '--weights', '0', '--modes', '', '--route-weights', '']
    more = sweep if cmd == 'ablate' else []
    assert main([cmd, '--preset', 'toy', '--n', '3', '--out', str(tmp_path/'out'), *more]) == 0
    assert seen and seen[0].startswith(f"R3Error {refused_by(tmp_path/'out', os.getpid())}"), seen
