#!/usr/bin/env bash
# build-cuda.sh: build the CUDA backend of the ggml that the pinned
# github.com/ollama/ollama module vendors (libggml-base.so and
# libggml-cuda.so), with ollama's own CMakeLists.txt, for this machine's GPU
# only, and install it where the runner loads backends from.
#
# The runner (bin/infer, or any binary linking ./runner) has the CPU backend
# compiled in; at start llama.BackendInit dlopens GPU backends from
# <directory of the executable>/../lib/ollama, or from the entries of
# OLLAMA_LIBRARY_PATH (ollama only accepts entries that contain "lib/ollama"
# or are the executable's own directory). It loads silently: a backend that
# fails to load is skipped without a word, so this script checks that the
# library it built loads.
#
# Environment:
#   CUDA_ARCHITECTURES  CMake CUDA architectures; default: the local GPU's
#                       compute capability from nvidia-smi (e.g. 90-real on
#                       an H100/H200), else "native".
#   PREFIX              install under $PREFIX/lib/ollama; default: the repo
#                       root, so that bin/infer finds ../lib/ollama.
#   GGML_SRC            a directory holding ollama's CMakeLists.txt and
#                       ml/backend/ggml/ggml; default: the module cache's
#                       copy of the version go.mod pins (needs go).
#   GGML_SRC_TAR        or a tarball of that (make gpu-bundle writes one),
#                       for machines without Go.
#   BUILD_DIR           default: $PREFIX/build/cuda (reused: a second run
#                       only rebuilds what changed).
#   JOBS                parallel compile jobs; default: nproc.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
PREFIX=${PREFIX:-$repo}
BUILD_DIR=${BUILD_DIR:-$PREFIX/build/cuda}
JOBS=${JOBS:-$(nproc)}

die() { echo "build-cuda: $*" >&2; exit 1; }
say() { echo "build-cuda: $(date -u +%H:%M:%S) $*" >&2; }

# nvcc is often installed but not on PATH.
if ! command -v nvcc >/dev/null 2>&1; then
	for d in ${CUDA_HOME:+$CUDA_HOME/bin} /usr/local/cuda/bin /opt/cuda/bin; do
		if [ -x "$d/nvcc" ]; then PATH=$d:$PATH; break; fi
	done
fi
command -v nvcc >/dev/null 2>&1 || die "nvcc not found (not on PATH, CUDA_HOME or /usr/local/cuda): install the CUDA toolkit to build the GPU backend; the default build (make build) is CPU-only"
command -v cmake >/dev/null 2>&1 || die "cmake not found: install CMake 3.21 or newer to build the GPU backend"
export CUDACXX=${CUDACXX:-$(command -v nvcc)}

if [ -z "${CUDA_ARCHITECTURES:-}" ]; then
	# "9.0" -> "90-real": machine code for this GPU only, no PTX to embed.
	cc=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d ' .' || true)
	if [[ "$cc" =~ ^[0-9]+$ ]]; then
		CUDA_ARCHITECTURES="$cc-real"
	else
		CUDA_ARCHITECTURES=native
	fi
fi

# The sources: ollama's top-level CMakeLists.txt plus the vendored ggml. The
# module cache is read-only, so they are copied into the build directory.
src=$BUILD_DIR/src
if [ -n "${GGML_SRC_TAR:-}" ]; then
	[ -f "$GGML_SRC_TAR" ] || die "GGML_SRC_TAR=$GGML_SRC_TAR: no such file"
	rm -rf "$src" && mkdir -p "$src"
	tar -xzf "$GGML_SRC_TAR" -C "$src"
	chmod -R u+w "$src"
else
	if [ -z "${GGML_SRC:-}" ]; then
		command -v go >/dev/null 2>&1 || die "neither GGML_SRC, GGML_SRC_TAR nor a Go toolchain to find the ollama module's sources"
		GGML_SRC=$(cd "$repo" && go mod download -json github.com/ollama/ollama | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
	fi
	[ -f "$GGML_SRC/CMakeLists.txt" ] && [ -d "$GGML_SRC/ml/backend/ggml/ggml" ] ||
		die "GGML_SRC=$GGML_SRC does not hold CMakeLists.txt and ml/backend/ggml/ggml"
	rm -rf "$src" && mkdir -p "$src/ml/backend/ggml"
	# -p keeps the times, so that a rebuild from the same sources compiles
	# nothing (tar keeps them too).
	cp -p "$GGML_SRC/CMakeLists.txt" "$src/"
	cp -rp "$GGML_SRC/ml/backend/ggml/ggml" "$src/ml/backend/ggml/"
	chmod -R u+w "$src"
fi

gen=()
command -v ninja >/dev/null 2>&1 && gen=(-G Ninja)
say "nvcc $(nvcc --version | sed -n 's/.*release \([0-9.]*\).*/\1/p'), CUDA architectures $CUDA_ARCHITECTURES, $JOBS jobs, build in $BUILD_DIR"
# Configure once per build directory, architecture and working compiler: a
# second run only rebuilds what changed. check_language(CUDA) leaves
# CMAKE_CUDA_COMPILER NOTFOUND when nvcc cannot compile for this host (an
# unsupported host compiler, say).
configured() {
	[ -f "$BUILD_DIR/CMakeCache.txt" ] &&
		grep -q "^CMAKE_CUDA_ARCHITECTURES:.*=$CUDA_ARCHITECTURES\$" "$BUILD_DIR/CMakeCache.txt" &&
		grep -q '^CMAKE_CUDA_COMPILER:[A-Z]*=/' "$BUILD_DIR/CMakeCache.txt"
}
if ! configured; then
	rm -f "$BUILD_DIR/CMakeCache.txt"
	# $ORIGIN: libggml-cuda.so finds libggml-base.so beside itself, wherever
	# lib/ollama is (ollama's server sets LD_LIBRARY_PATH instead); then the
	# toolkit's libraries (cudart, cuBLAS) where the loader's default path
	# lacks them. Directories that do not exist are skipped at load.
	cuda_home=$(cd "$(dirname "$CUDACXX")/.." && pwd)
	cmake -S "$src" -B "$BUILD_DIR" "${gen[@]}" \
		-DCMAKE_BUILD_TYPE=Release \
		-DCMAKE_CUDA_ARCHITECTURES="$CUDA_ARCHITECTURES" \
		-DCMAKE_BUILD_WITH_INSTALL_RPATH=ON \
		-DCMAKE_INSTALL_RPATH="\$ORIGIN;$cuda_home/lib64;$cuda_home/targets/$(uname -m)-linux/lib" \
		>&2
	configured || die "CMake found no working CUDA compiler ($CUDACXX): see 'Looking for a CUDA compiler' above and the logs under $BUILD_DIR/CMakeFiles"
fi

say "building ggml-cuda"
cmake --build "$BUILD_DIR" --target ggml-cuda -j "$JOBS" >&2

lib=$PREFIX/lib/ollama
mkdir -p "$lib"
cp -a "$BUILD_DIR"/lib/ollama/libggml-base.so* "$BUILD_DIR"/lib/ollama/libggml-cuda.so "$lib/"

# ggml loads backends silently: prove here that this one loads, where a GPU
# driver is there to load it with (a docker build has none).
if ! nvidia-smi -L >/dev/null 2>&1; then
	say "no GPU driver here: not checking that the library loads"
elif command -v python3 >/dev/null 2>&1; then
	python3 -c 'import ctypes, sys; ctypes.CDLL(sys.argv[1])' "$lib/libggml-cuda.so" ||
		die "$lib/libggml-cuda.so was built but does not load (a CUDA library missing from the loader path?)"
elif ldd "$lib/libggml-cuda.so" | grep -q 'not found'; then
	ldd "$lib/libggml-cuda.so" >&2
	die "$lib/libggml-cuda.so needs libraries the loader cannot find"
fi
say "installed $(cd "$lib" && ls | tr '\n' ' ')in $lib"
