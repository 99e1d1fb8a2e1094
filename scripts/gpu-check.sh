#!/usr/bin/env bash
# gpu-check.sh: the one-call device check. On a Linux machine with an NVIDIA
# GPU, nvcc and CMake, but no Go toolchain and no network, from the repo
# root:
#
#   bash scripts/gpu-check.sh          # with .gpu-bundle/ carried along
#   bash scripts/gpu-check.sh --dry    # CPU-only dry run of the same flow
#
# .gpu-bundle/ is made here by `make gpu-bundle` (the gpubench binary,
# gzipped, and the pinned ollama module's ggml sources, ~4.5 MB together).
#
# Steps, each time-boxed, with timestamps:
#   1. record the machine (nvidia-smi, nvcc, cmake, cores, memory, disk);
#   2. start writing the random-weight F16 models (~1B: 2.1 GB, ~8B:
#      16.1 GB) in the background, so that the writes overlap the build;
#   3. build the CUDA backend for this GPU only (scripts/build-cuda.sh) into
#      $WORK/lib/ollama, beside $WORK/bin/gpubench;
#   4. wait for the models; an 8B model not written in time is skipped;
#   5. run gpubench (no Postgres, no NATS: the runner engine alone): cold
#      start per phase, tokens/s at 1, 16 and 64 streams, time per output
#      token p50/p99, GPU memory; two ~1B engines side by side.
# Results and logs go to $OUT (the device tool's folder; default
# .gpu-check-out/): results.json, results.md, check.log, env.txt,
# build.log, writes.log, bench.log. With no nvcc or no GPU it runs the CPU
# dry mode instead. Whole run: under 8 minutes (LIMIT seconds, 470).
#
# To test the GPU path's logic on a machine without a GPU:
#   GPU_CHECK_FORCE=1 BUILD_CMD=true SIZES=tiny \
#   BENCH_ARGS='-gpu-layers 0 -streams 1,2 -tokens 8 -context 128' bash scripts/gpu-check.sh
set -uo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
OUT=${OUT:-$repo/.gpu-check-out}
WORK=${WORK:-/tmp/gpu-check}
BUNDLE=${BUNDLE:-$repo/.gpu-bundle}
LIMIT=${LIMIT:-470}
BUILD_LIMIT=${BUILD_LIMIT:-330}
SIZES=${SIZES:-1b,8b}
BUILD_CMD=${BUILD_CMD:-bash scripts/build-cuda.sh}
BENCH_ARGS=${BENCH_ARGS:-}
mkdir -p "$OUT" "$WORK/bin"
exec > >(tee -a "$OUT/check.log") 2>&1

t0=$(date +%s)
elapsed() { echo $(( $(date +%s) - t0 )); }
left() { echo $(( LIMIT - $(elapsed) )); }
step() { echo "=== $(date -u +%H:%M:%S) +$(elapsed)s: $*"; }

dry=0
[ "${1:-}" = "--dry" ] && dry=1

step "unpacking $BUNDLE"
if [ ! -f "$BUNDLE/gpubench.gz" ] || [ ! -f "$BUNDLE/ggml-src.tar.gz" ]; then
	echo "gpu-check: $BUNDLE/gpubench.gz or ggml-src.tar.gz missing: run 'make gpu-bundle' on the build machine and carry .gpu-bundle" >&2
	exit 1
fi
cat "$BUNDLE/MANIFEST" 2>/dev/null
bench=$WORK/bin/gpubench
gunzip -c "$BUNDLE/gpubench.gz" > "$bench" && chmod +x "$bench" || { echo "gpu-check: cannot unpack gpubench" >&2; exit 1; }

step "machine"
{
	date -u
	uname -a
	nproc
	free -g
	df -h "$WORK"
	command -v nvidia-smi >/dev/null && nvidia-smi
	command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,compute_cap,memory.used,memory.total,driver_version --format=csv
	{ command -v nvcc || ls /usr/local/cuda/bin/nvcc; } 2>/dev/null && { nvcc --version 2>/dev/null || /usr/local/cuda/bin/nvcc --version; }
	command -v cmake >/dev/null && cmake --version
	ldd --version | head -1
} > "$OUT/env.txt" 2>&1
grep -E 'H[0-9]+|NVIDIA|release|cmake version|^[0-9]+$' "$OUT/env.txt" | head -8

if [ $dry = 0 ] && [ -z "${GPU_CHECK_FORCE:-}" ]; then
	if ! { command -v nvcc >/dev/null || [ -x /usr/local/cuda/bin/nvcc ]; } || ! nvidia-smi -L >/dev/null 2>&1; then
		echo "gpu-check: no nvcc or no GPU here: running the CPU dry mode"
		dry=1
	fi
fi

if [ $dry = 1 ]; then
	step "CPU dry run (tiny model, no offload)"
	timeout "$(left)" "$bench" -dry -v -out "$OUT" -models "$WORK/models" > "$OUT/bench.log" 2>&1
	rc=$?
	# The ggml devices the runner engine loaded, as runners report them
	# in their heartbeats (here: the CPU only).
	grep '^gpubench: device' "$OUT/bench.log"
	tail -5 "$OUT/bench.log"
	step "dry run finished (rc $rc)"
	cat "$OUT/results.md" 2>/dev/null
	exit $rc
fi

# The models (2.1 + 16.1 GB) go to /dev/shm when it has room: RAM, so a
# slow disk cannot hold up the writes (the file would sit in the page cache
# either way, and the cold start reads it from there).
avail() { df --output=avail -B1G "$1" 2>/dev/null | tail -1 | tr -d ' '; }
models=${MODELS:-}
if [ -z "$models" ]; then
	if [ "$(avail /dev/shm)" -ge 24 ] 2>/dev/null; then
		models=/dev/shm/gpu-check-models
	else
		models=$WORK/models
	fi
fi
mkdir -p "$models"
if [[ ",$SIZES," == *",8b,"* ]] && ! [ "$(avail "$models")" -ge 20 ] 2>/dev/null; then
	step "only $(avail "$models") GB free in $models: the 8b model (16.1 GB) is skipped"
	SIZES=$(echo ",$SIZES," | sed 's/,8b,/,/; s/^,//; s/,$//')
fi
step "writing models ($SIZES) into $models in the background"
pids=()
declare -A writer
for s in ${SIZES//,/ }; do
	# Each size in its own process: two cores instead of one.
	timeout "$((LIMIT - 90))" "$bench" -write-only -sizes "$s" -models "$models" >> "$OUT/writes.log" 2>&1 &
	writer[$s]=$!
	pids+=($!)
done

step "building the CUDA backend (at most ${BUILD_LIMIT}s)"
PREFIX=$WORK BUILD_DIR=$WORK/build GGML_SRC_TAR=$BUNDLE/ggml-src.tar.gz \
	timeout "$BUILD_LIMIT" $BUILD_CMD > "$OUT/build.log" 2>&1
brc=$?
grep '^build-cuda:' "$OUT/build.log"
if [ $brc != 0 ]; then
	step "CUDA build FAILED (rc $brc; 124 = over ${BUILD_LIMIT}s); last lines of build.log:"
	grep -E 'error|Error' "$OUT/build.log" | head -20
	tail -20 "$OUT/build.log"
	kill "${pids[@]}" 2>/dev/null
	step "running the CPU dry mode instead, to check the rest of the flow"
	timeout 60 "$bench" -dry -out "$OUT" -models "$WORK/models" > "$OUT/bench.log" 2>&1
	exit 1
fi
step "CUDA backend built: $(ls "$WORK/lib/ollama" 2>/dev/null | tr '\n' ' ')"

# Wait for the writes, leaving the benchmark at least 110 s; a model not
# written by then is skipped rather than the whole check running over.
sizes=""
for s in ${SIZES//,/ }; do
	pid=${writer[$s]}
	while kill -0 "$pid" 2>/dev/null && [ "$(left)" -gt 110 ]; do sleep 1; done
	if kill -0 "$pid" 2>/dev/null; then
		kill "$pid"
		step "model $s not written in time: skipped"
		continue
	fi
	if wait "$pid"; then
		sizes=${sizes:+$sizes,}$s
	else
		step "writing model $s failed (see writes.log): skipped"
	fi
done
cat "$OUT/writes.log"
[ -n "$sizes" ] || { step "no model written"; exit 1; }

step "benchmark ($sizes), $(left)s left"
export OLLAMA_LIBRARY_PATH=$WORK/lib/ollama
# -budget stops starting new measurements with ~40 s to spare; timeout is
# the hard stop. results.json is rewritten after every model.
timeout "$(( $(left) - 5 ))" "$bench" -v -out "$OUT" -models "$models" -sizes "$sizes" \
	-budget "$(( $(left) - 45 ))s" $BENCH_ARGS > "$OUT/bench.log" 2>&1
rc=$?
grep -E '^gpubench:|ggml_cuda_init|Device 0|offloaded|CUDA0 model buffer|gpu_layers' "$OUT/bench.log" | head -40
step "benchmark finished (rc $rc; 124 = hard time limit)"
cat "$OUT/results.md" 2>/dev/null
# The models and the build stay: a second run on the same (still warm)
# machine reuses both and only benchmarks (~1-2 minutes).
exit $rc
