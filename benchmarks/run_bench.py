"""The `rerun` row of the speed table: a whole `r3covr demo` (the `cpu` preset) from an empty run folder and gallery
cache, then the same command again on the warm folder, where every stage is read back. Run it through the driver:
`python benchmarks/speed.py --only rerun`.
"""
from __future__ import annotations
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from common import best_of, record

def bench_rerun(ds, a) -> list:
    "`r3covr demo` from an empty run folder, then the same command again on the warm folder (every stage cached)."
    from r3covr.core import cache_dir
    cli = 'import sys; from r3covr.cli import main; sys.exit(main(sys.argv[1:]))'
    cmd = [sys.executable, '-c', cli, 'demo', '--n', str(a.n_rerun)]
    with tempfile.TemporaryDirectory() as td:
        env = dict(os.environ, R3COVR_CACHE=str(Path(td)/'cache'))
        for keep in ('models', 'digests', 'synthetic'):      # unpacked weights and data stay; no gallery cache
            (Path(td)/'cache').mkdir(exist_ok=True); (Path(td)/'cache'/keep).symlink_to(cache_dir(keep))
        go = lambda: subprocess.run(cmd + ['--out', str(Path(td)/'run')], env=env, capture_output=True, text=True,
                                    check=True).stdout
        t1, out1 = best_of(go)
        t2, out2 = best_of(go)
    table_of = lambda out: [line for line in out.splitlines() if line.startswith('|')]
    return [record('rerun', f'`r3covr demo --n {a.n_rerun}` (cpu preset), process start to exit',
                   'empty run folder and gallery cache', 'same command, warm folder', t1, t2,
                   'same table' if table_of(out1) == table_of(out2) else 'TABLES DIFFER')]

ROWS = {'rerun': bench_rerun}
