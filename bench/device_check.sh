#!/usr/bin/env bash
# The GPU checks, as one prepared script for a lent GPU machine (the `device` tool; its lease is minutes):
#   1. the CUDA path of every training method and of the pseudolabel rounds (tests/prompting/test_cuda_path.py:
#      bf16 autocast on the GPU against fp32 on the CPU),
#   2. `make bench` with --device cuda on tiny-clip (the shipped weights) and on the ViT-B-16 architecture with
#      random weights, figures written as JSON to $OUT (bring them back and keep them with the README's table),
#   3. the test-time tuning bench (bench/testtime.py) with --device cuda on the same two architectures,
#   4. zero-shot evaluation against CLIP_benchmark (bench/clip_benchmark_compare.py) with --device cuda on tiny-clip,
#      ViT-B-32 and ViT-B-16 (PromptLab bf16 autocast, CLIP_benchmark with its amp).
# Every bench records its runs, with the device, in the warehouse of $OUT/workspace (benchmark_results,
# latest_benchmark); bring it back and read it with
#   duckdb -readonly device-out/workspace/warehouse/promptlab.duckdb "SELECT * FROM latest_benchmark"
#
# That machine has its own Python (3.12) and torch but not the project's other packages, and reaches no registry.
# Bring them as one archive of unpacked wheels, made here (split in parts when the tree and it exceed one call's
# transfer limit):
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d wheels \
#       open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.4 duckdb==1.5.6 polars==1.44.2 polars-runtime-32==1.44.2 \
#       clip_benchmark==1.6.2 scikit-learn==1.9.1 scipy==1.17.1 joblib==1.6.0 threadpoolctl==3.8.0 tqdm==4.70.1
#   mkdir site && for w in wheels/*.whl; do unzip -qo "$w" -d site; done && tar -C site -cf - . | xz -9 > site.tar.xz
# and run: PROMPTLAB_SITE_ARCHIVE=/path/to/site.tar.xz bash bench/device_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/device-out}
mkdir -p "$OUT"
SITE=/tmp/promptlab-site
if [ -n "${PROMPTLAB_SITE_ARCHIVE:-}" ]; then
  mkdir -p "$SITE" && tar -C "$SITE" -xJf "$PROMPTLAB_SITE_ARCHIVE" || { echo "cannot unpack $PROMPTLAB_SITE_ARCHIVE"; exit 2; }
fi
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PYTHON=${PYTHON:-python3}
status=0
{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  "$PYTHON" -c "import torch, open_clip, polars, duckdb; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
torch.cuda.get_device_name(0), 'open_clip', open_clip.__version__, 'cpus', __import__('os').cpu_count())"
} 2>&1 | tee "$OUT/device.txt"

echo "== 1. CUDA path tests"
"$PYTHON" -m pytest -q -p no:cacheprovider tests/prompting/test_cuda_path.py 2>&1 | tee "$OUT/cuda_path_tests.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

echo "== 2. bench on cuda"
workspace=$OUT/workspace
mkdir -p "$workspace/world" && cp -r assets_catalog/pretrained/tiny-clip "$workspace/world/tiny-clip"
for architecture in tiny-clip ViT-B-16; do
  "$PYTHON" -m bench.throughput --device cuda --architecture "$architecture" --workspace "$workspace" \
      --in-process --output "$OUT/bench-$architecture-cuda.json" 2>&1 | tee "$OUT/bench-$architecture-cuda.log"
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
done

echo "== 3. test-time tuning bench on cuda (TPT: batched + cached against the reference loop)"
"$PYTHON" -m bench.testtime --device cuda --workspace "$workspace" --images tiny-clip=100 --images ViT-B-16=20 \
    --output "$OUT/bench-testtime-cuda.json" 2>&1 | tee "$OUT/bench-testtime-cuda.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

echo "== 4. zero-shot evaluation against CLIP_benchmark on cuda"
"$PYTHON" -m bench.clip_benchmark_compare --device cuda --backbones tiny-clip,ViT-B-32,ViT-B-16 --threads 8 \
    --workspace "$workspace" --output "$OUT/clip-benchmark-cuda.json" 2>&1 | tee "$OUT/clip-benchmark-cuda.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
exit $status
