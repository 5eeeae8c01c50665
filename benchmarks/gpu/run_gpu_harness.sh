#!/usr/bin/env bash
# The one command of the GPU harness: builds the framework-free core and its CUDA kernels with nvcc
# (no TensorFlow, no Bazel), checks them against the CPU reference, then times them.
#
#   benchmarks/gpu/run_gpu_harness.sh [harness arguments: --cases N --runs R --seed S --no-bench
#                                      --decomposed-only --decomposed-cases N --decomposed-phases
#                                      --decomposed-tiles]
#
# Environment: GPU_TABLES (folder of EvoApprox .bin tables, default .gpu_tables; NAME.decomp files from
# benchmarks/gpu/export_decompositions.py beside them are used by the decomposed kernel's checks), NVCC (default nvcc),
# BUILD_DIR (default build/gpu_harness), OUT (if set, the log is also written there).
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${BUILD_DIR:-build/gpu_harness}
nvcc=${NVCC:-nvcc}
export GPU_TABLES=${GPU_TABLES:-.gpu_tables}
mkdir -p "$build"

core=tensorflow_approx/cc/core
sources=("$core/quantize.cc" "$core/lut.cc" "$core/conv_shape.cc" "$core/conv_reference.cc" "$core/conv_cpu.cc" "$core/conv_cpu_columns.cc" "$core/conv_cpu_epilogue.cc" "$core/conv_decomposed.cc" "$core/conv_decomposed_avx2.cc" "$core/conv_decomposed_avx512.cc"
         "$core/conv_gpu.cu" "$core/conv_gpu_decomposed.cu" "$core/nan_gpu.cu" "$core/range_gpu.cu" "$core/quant_gpu.cu" benchmarks/gpu/gpu_harness.cu)
# -fmad=false and -ffp-contract=off: the codes and outputs must round exactly as the CPU build does.
flags=(-std=c++17 -O3 -I. -fmad=false -Xcompiler -ffp-contract=off
       -gencode arch=compute_90,code=sm_90 -gencode arch=compute_90,code=compute_90)
# The decomposed kernel's file also for sm_90a: its wgmma tiles (GpuDecomposedTile::kTileWgmma*) exist only
# in sm_90a device code, which the driver loads on compute capability 9.0; the sm_90 cubin keeps empty
# stubs that the host never launches. Only that file, as in tensorflow_approx/BUILD: every other kernel
# keeps exactly the device code it had.
sm90a=(-gencode arch=compute_90a,code=sm_90a)
bin=$build/gpu_harness
stamp=$(cat "${sources[@]}" $core/*.h $core/*.cuh "$0" | sha256sum | cut -c1-16)

usable() { [ -x "$bin" ] && [ "$(cat "$build/stamp" 2>/dev/null)" = "$stamp" ] && { "$bin" --help >/dev/null 2>&1; [ $? -eq 2 ]; }; }
if ! usable; then
  echo "building $bin with $($nvcc --version | tail -1)"
  pids=()
  objs=()
  for src in "${sources[@]}"; do
    obj=$build/$(basename "$src").o
    objs+=("$obj")
    extra=()
    [ "$src" = "$core/conv_gpu_decomposed.cu" ] && extra=("${sm90a[@]}")
    "$nvcc" "${flags[@]}" "${extra[@]}" -c "$src" -o "$obj" &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do wait "$pid"; done  # set -e stops at the first failed compile
  "$nvcc" "${flags[@]}" "${objs[@]}" -o "$bin"
  echo "$stamp" > "$build/stamp"
fi

if [ -n "${OUT:-}" ]; then
  "$bin" "$@" 2>&1 | tee "$OUT/gpu_harness.log"
  exit "${PIPESTATUS[0]}"
fi
exec "$bin" "$@"
