"""Check benchmarks/ without running a model, as CI does:

- every benchmark compiles, imports only `common` and r3covr (the driver, speed.py, also imports the row modules),
  and leaves `sys.path` alone;
- every r3covr name any of them imports exists -- imports inside functions included, where most of them are --,
  and every preset they name is a preset;
- the driver and gpu_check.py start (`--help`) from another folder, so no import depends on the working folder;
- benchmarks/gpu_tiny.sh parses (`bash -n`), its Python snippets compile and import only names that exist, and its
  command lines parse with the parsers that will read them (`r3covr`'s, with its run settings checked, and
  gpu_check.py's).

    python tools/check_benchmarks.py      # one line per problem and exit status 1 when something is off
"""
from __future__ import annotations
import ast
import contextlib
import importlib
import io
import importlib.util
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT/'benchmarks'
DRIVER, COMMON = 'speed', 'common'

def imports(tree:ast.AST) -> list:
    "(module, [names] or None for `import module`, line) of every import in `tree`, function bodies included."
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import): out += [(a.name, None, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            out.append((node.module, [a.name for a in node.names], node.lineno))
    return out

def missing_names(module:str, names:list|None) -> list:
    "What of `from module import names` (or `import module`) does not resolve."
    try: mod = importlib.import_module(module)
    except Exception as e: return [f'cannot import {module}: {type(e).__name__}: {e}']
    return [f'{module} has no {n!r}' for n in names or [] if not hasattr(mod, n)]

def defined(path:Path) -> set:
    "Top-level names a module defines (functions, classes, assignments, imports)."
    out = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)): out.add(node.name)
        elif isinstance(node, ast.Assign): out |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            out |= {(a.asname or a.name).split('.')[0] for a in node.names}
    return out

def presets_named(src:str) -> set:
    "Presets a source names: `create_vlm('x')`, `create_encoder('x')`, `--preset x`."
    called = re.findall(r"create_(?:vlm|encoder)\(\s*['\"]([\w.-]+)['\"]", src)
    return set(called) | set(re.findall(r'--preset\s+([\w.-]+)', src))

def check_python(where:str, src:str, stem:str|None=None) -> list:
    "Problems of one Python source: it must compile, import only common/r3covr (benchmarks), and resolve its names."
    try: tree = ast.parse(src, where)
    except SyntaxError as e: return [f'{where}:{e.lineno}: does not compile: {e.msg}']
    local = {p.stem for p in BENCH.glob('*.py')}
    out = []
    for module, names, line in imports(tree):
        top = module.split('.')[0]
        if top == 'r3covr': out += [f'{where}:{line}: {m}' for m in missing_names(module, names)]
        elif top in local:
            if stem is not None and top != COMMON and stem != DRIVER:
                out.append(f'{where}:{line}: a benchmark imports only `common` and r3covr, not {top!r}')
            if top == COMMON:
                have = defined(BENCH/'common.py')
                out += [f'{where}:{line}: common has no {n!r}' for n in names or [] if n not in have]
    return out

def check_presets(where:str, src:str) -> list:
    from r3covr.models import list_presets
    known = set(list_presets())
    return [f'{where}: no preset {p!r} (presets: {", ".join(sorted(known))})' for p in presets_named(src) - known]

def starts(script:Path) -> list:
    "Problems running `script --help` from an empty folder (its imports must not depend on the working folder)."
    with tempfile.TemporaryDirectory() as td:
        r = subprocess.run([sys.executable, str(script), '--help'], cwd=td, capture_output=True, text=True)
    return [] if r.returncode == 0 else [f'{script.name} --help: exit {r.returncode}: {r.stderr.strip()[-500:]}']

def snippets(sh:str) -> list:
    "(line, Python source) of a shell script's `python3 - <<'X'` heredocs and `python3 -c '...'` one-liners."
    out, lines = [], sh.splitlines()
    for i, line in enumerate(lines):
        m = re.search(r"python3? - <<'?(\w+)'?", line)
        if m:
            end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == m.group(1))
            out.append((i + 2, '\n'.join(lines[i + 1:end])))
        out += [(i + 1, c) for c in re.findall(r"python3? -c '([^']*)'", line)]
    return out

def commands(sh:str, name:str) -> list:
    "(line, argv) of each call of `name` (a shell function or a script path ending in it) in a shell script."
    out = []
    for i, line in enumerate(sh.replace('\\\n', ' ').splitlines()):
        m = re.search(rf'(?:^|[\s/]){re.escape(name)}"?\s+(.*)$', line)
        if m and not line.lstrip().startswith(('#', f'{name}()')): out.append((i + 1, shlex.split(m.group(1))))
    return out

def parses(parser, argv:list):
    "`parser.parse_args(argv)`, or None where it does not parse (argparse's complaint kept off the output)."
    with contextlib.redirect_stderr(io.StringIO()):
        try: return parser.parse_args(argv)
        except SystemExit: return None

def check_r3(where:str, argv:list) -> list:
    "Problems of an `r3covr` command line: the CLI's parser, then its run settings."
    from r3covr.cli import parser, run_settings
    from r3covr.settings import run_config
    args = parses(parser(), argv)
    if args is None: return [f'{where}: r3covr {shlex.join(argv)}: the command line does not parse']
    try: run_config(**run_settings(args))
    except Exception as e: return [f'{where}: r3covr {shlex.join(argv)}: {type(e).__name__}: {e}']
    return []

def check_gpu_check_call(where:str, argv:list) -> list:
    "Problems of a gpu_check.py command line, parsed by its own parser (the module loads without running anything)."
    spec = importlib.util.spec_from_file_location('gpu_check', BENCH/'gpu_check.py')
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    if parses(mod.parser(), argv) is None: return [f'{where}: gpu_check.py {shlex.join(argv)}: does not parse']
    return []

def check_gpu_tiny(path:Path) -> list:
    sh, out = path.read_text(), []
    r = subprocess.run(['bash', '-n', str(path)], capture_output=True, text=True)
    if r.returncode: out.append(f'{path.name}: bash -n: {r.stderr.strip()}')
    for line, src in snippets(sh): out += check_python(f'{path.name}:{line} (python)', src)
    for line, argv in commands(sh, 'r3'): out += check_r3(f'{path.name}:{line}', argv)
    for line, argv in commands(sh, 'gpu_check.py'): out += check_gpu_check_call(f'{path.name}:{line}', argv)
    if not commands(sh, 'r3') or not commands(sh, 'gpu_check.py'):
        out.append(f'{path.name}: found no r3covr or gpu_check.py command line to check')
    return out + check_presets(path.name, sh)

def main() -> int:
    problems, files = [], sorted(BENCH.glob('*.py'))
    for f in files:
        src = f.read_text()
        problems += check_python(f'benchmarks/{f.name}', src, f.stem) + check_presets(f'benchmarks/{f.name}', src)
        if re.search(r'sys\.path\.(insert|append|extend)|sys\.path\s*=', src):
            problems.append(f'benchmarks/{f.name}: edits sys.path (a script finds its neighbours in its own folder)')
    problems += starts(BENCH/'speed.py') + starts(BENCH/'gpu_check.py')
    problems += check_gpu_tiny(BENCH/'gpu_tiny.sh')
    for p in problems: print(p)
    print(f"{len(files)} benchmark files and gpu_tiny.sh: {'OK' if not problems else f'{len(problems)} problems'}")
    return 1 if problems else 0

if __name__ == '__main__': sys.exit(main())
