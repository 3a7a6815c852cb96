"""Lines over 120 characters in what ships: the notebooks' code cells (the source) and the modules exported from them.

ruff checks line length everywhere else. One line is not ours to wrap: nbdev 2 wraps the exported `__all__` list at
120 characters and only then puts `__all__ = ` in front of its first line (the width is fixed in nbdev), so that
first line can reach 130. Rewrapping it would leave the modules out of step with `nbdev_export`, which the package
promises never to be, so that one generated line (right after nbdev's `# %% auto #0` marker) is not counted; it
names exports, it hides no function's length.

    python tools/long_lines.py            # prints each long line, exits 1 when there is one
"""
from __future__ import annotations
import json
import sys
from pathlib import Path

LIMIT = 120

def nbdev_all(lines:list, j:int) -> bool:
    "Whether line `j` of a module is the first line of the `__all__` nbdev writes after its `# %% auto #0` marker."
    return j > 0 and lines[j - 1] == '# %% auto #0' and lines[j].startswith('__all__ = [')

def long_lines(root:Path) -> list:
    "(place, length) of every line over `LIMIT` in the notebooks' code cells and the exported modules under `root`."
    out = []
    for f in sorted((root/'nbs').rglob('*.ipynb')):
        if '.ipynb_checkpoints' in f.parts: continue
        for i, c in enumerate(json.loads(f.read_text())['cells']):
            if c['cell_type'] != 'code': continue
            out += [(f'{f.relative_to(root)} cell {i} line {j + 1}', len(s))
                    for j, s in enumerate(''.join(c['source']).splitlines()) if len(s) > LIMIT]
    for f in sorted((root/'r3covr').glob('[a-z]*.py')):
        lines = f.read_text().splitlines()
        out += [(f'{f.relative_to(root)}:{j + 1}', len(s)) for j, s in enumerate(lines)
                if len(s) > LIMIT and not nbdev_all(lines, j)]
    return out

if __name__ == '__main__':
    found = long_lines(Path(__file__).resolve().parent.parent)
    for place, n in found: print(f'{place}: {n} characters')
    sys.exit(1 if found else 0)
