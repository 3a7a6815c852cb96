"""Lines over 120 characters in what ships: the notebooks' code cells (the source) and the modules exported from them.

ruff checks line length everywhere else. One line nbdev writes itself is long: nbdev 2 wraps the exported `__all__`
list at 120 characters and only then puts `__all__ = ` in front of its first line (the width is fixed in nbdev).
`--fix` wraps those lists again, prefix included; run it after `nbdev_export`.

    python tools/long_lines.py            # prints each long line, exits 1 when there is one
    python tools/long_lines.py --fix      # after nbdev_export: `__all__` lists wrapped within 120 characters
"""
from __future__ import annotations
import ast
import json
import re
import sys
import textwrap
from pathlib import Path

LIMIT = 120

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
        out += [(f'{f.relative_to(root)}:{j + 1}', len(s)) for j, s in enumerate(f.read_text().splitlines())
                if len(s) > LIMIT]
    return out

ALL = re.compile(r'^__all__ = (\[[^\]]*\])', re.M)

def wrap_all(text:str) -> str:
    "`text` of a module with its `__all__ = [...]` list wrapped within `LIMIT` characters, the prefix counted."
    def wrap(m):
        names = str(ast.literal_eval(m.group(1)))
        tw = textwrap.TextWrapper(width=LIMIT, initial_indent='__all__ = ', subsequent_indent=' ' * 11,
                                  break_long_words=False)
        return '\n'.join(tw.wrap(names))
    return ALL.sub(wrap, text, count=1)

def fix(root:Path) -> list:
    "Wrap the `__all__` list of every exported module under `root`; the files changed."
    changed = []
    for f in sorted((root/'r3covr').glob('[a-z]*.py')):
        old = f.read_text(); new = wrap_all(old)
        if new != old: f.write_text(new); changed.append(f)
    return changed

if __name__ == '__main__':
    root = Path(__file__).resolve().parent.parent
    if '--fix' in sys.argv[1:]:
        for f in fix(root): print(f'{f.relative_to(root)}: __all__ wrapped')
    found = long_lines(root)
    for place, n in found: print(f'{place}: {n} characters')
    if any(line.startswith('__all__ = [') for f in (root/'r3covr').glob('[a-z]*.py')
           for line in f.read_text().splitlines() if len(line) > LIMIT):
        print('nbdev_export writes __all__ wider than this; wrap it: python tools/long_lines.py --fix')
    sys.exit(1 if found else 0)
