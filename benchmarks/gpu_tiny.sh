#!/usr/bin/env bash
# The GPU plumbing check for a lent machine with no hub access: the tiny twins on CUDA (bf16), through every part
# of the package that touches a device. It proves the code paths run on a GPU; the twins' scores mean nothing.
#   bash benchmarks/gpu_tiny.sh [OUT]      # OUT: where reports and run folders go (default /tmp/gpu_tiny)
# Needs the package importable and a synthetic dataset in $R3COVR_CACHE (it is generated on first use if `av` is
# installed). Each step prints its wall time; the script exits non-zero at the first failing step. It runs on a
# CPU too (slowly). `python tools/check_benchmarks.py` (in CI) parses this script and resolves every r3covr name and
# command line in it without running a model.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-/tmp/gpu_tiny}; mkdir -p "$out"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
r3() { python3 -c 'import sys; from r3covr.cli import main; sys.exit(main(sys.argv[1:]))' "$@"; }
step() { local t0=$SECONDS; echo "== $1"; shift; "$@"; echo "   ($((SECONDS - t0)) s)"; }

step "versions" python3 - <<'PY'
import torch, transformers, open_clip, decord, faiss, numpy
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else '-'
print('torch', torch.__version__, '| cuda', torch.cuda.is_available(), gpu)
print('transformers', transformers.__version__, '| open_clip', open_clip.__version__, '| decord', decord.__version__,
      '| faiss', faiss.__version__, '| numpy', numpy.__version__)
PY
echo "== one query's videos"
vids=$(python3 - <<'PY'
from r3covr.pipeline import load_dataset
d = load_dataset('synthetic', n=1); q = d.queries[0]; v = d.videos
print(v[q.reference].path, v[q.target].path)
PY
)
step "gpu_check (tiny)" python3 "$here/gpu_check.py" --preset tiny --video "${vids% *}" --other "${vids#* }" \
    --json "$out/gpu_check.json"
step "run tiny, mean pooling" r3 run --dataset synthetic --preset tiny --n 16 --out "$out/tiny-mean"
step "run tiny, query pooling" r3 run --dataset synthetic --preset tiny --n 16 --out "$out/tiny-query" --set pooling=query
step "run tiny again (stages read back)" r3 run --dataset synthetic --preset tiny --n 16 --out "$out/tiny-mean"
step "twin batched vs one-by-one on this device" python3 - <<'PY'
import numpy as np
from r3covr.lm import Chat, video_part
from r3covr.models import create_vlm, create_encoder
from r3covr.pipeline import load_dataset
d = load_dataset("synthetic", n=6); v = d.videos
vlm, enc = create_vlm('tiny'), create_encoder('tiny')
parts = [video_part(v[q.target], n=4, size=64) for q in d.queries]
chats = [Chat(('Candidate: ', p, f'\nEdit: {q.edit}\nDoes it match? Answer yes or no.')) for p, q in zip(parts, d.queries)]
b, s = vlm.score(chats), np.array([vlm.score([c])[0] for c in chats])
print('vlm', vlm.model.device, vlm.model.dtype, '| max |P batched - P single| =', float(np.abs(b - s).max()))
t = enc.embed_texts([q.edit for q in d.queries])
print('encoder text norms', np.round(np.linalg.norm(t, axis=1), 4))
PY
