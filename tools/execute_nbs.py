"""Run the notebooks as `nbdev_test` does (same skipped cells: `#| eval: false` and the `tst_flags`, gpu and slow) and
save what they display, so a reader on GitHub sees real outputs. Outputs are trimmed to stay small: no stderr
(progress bars, warnings), no live widget views (their static fallback stays), long text cut.

    HF_HUB_OFFLINE=1 python tools/execute_nbs.py                 # every notebook under nbs/
    HF_HUB_OFFLINE=1 python tools/execute_nbs.py nbs/05_retrieve.ipynb
    nbdev_clean                                                    # afterwards: strips metadata and counts
"""
from __future__ import annotations
import os
import sys
import time
from pathlib import Path
from execnb.nbio import read_nb, write_nb
from execnb.shell import CaptureShell
from fastcore.xtras import working_directory
from nbdev.config import get_config
from nbdev.process import extract_directives

MAX_TEXT = 2_000     # characters of one text output kept
WIDGET = 'application/vnd.jupyter.widget-view+json'

def skip(cell, flags:set) -> bool:
    "Whether `nbdev_test` would skip this cell."
    if cell.cell_type != 'code': return True
    d = extract_directives(cell, remove=False) or {}
    if d.get('eval:', [''])[0].lower() == 'false': return True
    return bool(flags & d.keys()) or 'nbdev_export(' in cell.source

def trim(outputs:list) -> list:
    "Outputs worth committing: no stderr, no widget views, long text shortened."
    out = []
    for o in outputs:
        if o.get('output_type') == 'stream' and o.get('name') == 'stderr': continue
        if 'data' in o:
            o['data'] = {k: v for k, v in o['data'].items() if k != WIDGET}
            if not o['data']: continue
            for k in ('text/plain', 'text/markdown'):
                t = o['data'].get(k)
                t = ''.join(t) if isinstance(t, list) else t
                if isinstance(t, str) and len(t) > MAX_TEXT: o['data'][k] = t[:MAX_TEXT] + '\n...'
        if o.get('output_type') == 'stream':
            t = ''.join(o.get('text', ''))
            if len(t) > MAX_TEXT: o['text'] = t[:MAX_TEXT] + '\n...\n'
        out.append(o)
    return out

def execute(path:Path, flags:set):
    nb = read_nb(path)
    shell = CaptureShell(path)
    with working_directory(path.parent): shell.run_all(nb, exc_stop=True, preproc=lambda c: skip(c, flags))
    for c in nb.cells:
        if c.cell_type == 'code': c.outputs = trim(c.get('outputs', []))
    write_nb(nb, path)

def main(paths:list):
    os.environ.setdefault('HF_HUB_OFFLINE', '1')
    cfg = get_config()
    flags = set(cfg.get('tst_flags', '').split())
    paths = [Path(p) for p in paths] or sorted(cfg.path('nbs_path').rglob('*.ipynb'))
    for p in paths:
        if p.name.startswith('_') or '.ipynb_checkpoints' in p.parts: continue
        t0 = time.time(); execute(p.resolve(), flags)
        print(f'{p}: {time.time() - t0:.0f} s, {p.stat().st_size // 1024} KiB', flush=True)

if __name__ == '__main__': main(sys.argv[1:])
