"""README.md from nbs/index.ipynb: its markdown cells in order, image paths made relative to the repository root.

    python tools/readme.py            # writes README.md
    python tools/readme.py --check    # exits 1 when README.md is not what index.ipynb says
"""
from __future__ import annotations
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

def readme_text(nb_path:Path=ROOT/'nbs'/'index.ipynb') -> str:
    "The README's text: the notebook's markdown cells joined by blank lines, `](images/` read from nbs/."
    cells = json.loads(nb_path.read_text(encoding='utf-8'))['cells']
    text = '\n\n'.join(''.join(c['source']) for c in cells if c['cell_type'] == 'markdown') + '\n'
    return re.sub(r'\]\((?!https?:)(images/)', r'](nbs/\1', text)

if __name__ == '__main__':
    text, dest = readme_text(), ROOT/'README.md'
    if '--check' in sys.argv:
        same = dest.exists() and dest.read_text(encoding='utf-8') == text
        print('README.md matches nbs/index.ipynb' if same else
              'README.md differs from nbs/index.ipynb: run tools/readme.py')
        sys.exit(0 if same else 1)
    dest.write_text(text, encoding='utf-8')
