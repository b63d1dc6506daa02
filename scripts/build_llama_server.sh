#!/usr/bin/env bash
# Build llama.cpp's `llama-server` into the virtual environment's bin/ (the `llamacpp` backend).
#
# The source is the llama.cpp tree that llama-cpp-python's source release carries (PyPI is the one
# registry every setup reaches), pinned by version, so each setup builds the same llama.cpp. Only the
# server target is built, CPU only, without curl, SSL or the web UI; about 5 minutes on 2 cores.
# The tree's conversion scripts (convert_hf_to_gguf.py, convert_lora_to_gguf.py) are kept beside it.
#
# It is built for this machine's CPU (GGML_NATIVE), except AMX: ggml's AMX kernels need the kernel
# to grant the process the tile state, and where it does not (some VMs and sandboxes) every model
# load crashes; on a CPU with AMX the build names the CPU's other features one by one (AVX-512 does
# the work). LLAMA_CMAKE_ARGS adds cmake options, e.g. "-DGGML_NATIVE=OFF -DGGML_AVX2=ON
# -DGGML_FMA=ON -DGGML_F16C=ON" for an image that runs elsewhere.
#
#   scripts/build_llama_server.sh VENV LLAMA_CPP_PYTHON_VERSION
set -euo pipefail
venv=${1:?usage: build_llama_server.sh VENV VERSION}
version=${2:?usage: build_llama_server.sh VENV VERSION}
venv=$(cd "$venv" && pwd)
cpu_args=()
if grep -qw amx_tile /proc/cpuinfo 2>/dev/null; then
	cpu_args=(-DGGML_NATIVE=OFF)
	for pair in avx:AVX avx2:AVX2 fma:FMA f16c:F16C bmi2:BMI2 avx_vnni:AVX_VNNI avx512f:AVX512 \
		avx512vbmi:AVX512_VBMI avx512_vnni:AVX512_VNNI avx512_bf16:AVX512_BF16; do
		grep -qw "${pair%%:*}" /proc/cpuinfo && cpu_args+=("-DGGML_${pair#*:}=ON")
	done
fi
build_id="$version ${cpu_args[*]} ${LLAMA_CMAKE_ARGS:-}"
stamp="$venv/llama.cpp/.version-$version"
if "$venv/bin/llama-server" --version >/dev/null 2>&1 && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$build_id" ]; then
	exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$venv/bin/pip" download --quiet --no-deps --no-binary :all: -d "$work" "llama-cpp-python==$version"
tar -xzf "$work"/llama_cpp_python-*.tar.gz -C "$work"
source_dir=$(echo "$work"/llama_cpp_python-*/vendor/llama.cpp)
generator=()
command -v ninja >/dev/null 2>&1 && generator=(-G Ninja)  # schedules the 200 objects better than make
cmake -S "$source_dir" -B "$work/build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
	-DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_COMMON=ON -DLLAMA_BUILD_TESTS=OFF \
	-DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
	"${cpu_args[@]}" ${LLAMA_CMAKE_ARGS:-} >/dev/null
cmake --build "$work/build" --target llama-server -j "$(nproc)" >"$work/build.log" 2>&1 \
	|| { tail -40 "$work/build.log"; exit 1; }
install -m 755 "$work/build/bin/llama-server" "$venv/bin/llama-server"
rm -rf "$venv/llama.cpp"
mkdir -p "$venv/llama.cpp"
cp -r "$source_dir"/convert_hf_to_gguf.py "$source_dir"/convert_lora_to_gguf.py "$source_dir"/gguf-py \
	"$source_dir"/LICENSE "$venv/llama.cpp/"
[ -d "$source_dir/conversion" ] && cp -r "$source_dir/conversion" "$venv/llama.cpp/"
echo "$build_id" >"$stamp"
"$venv/bin/llama-server" --version 2>&1 | head -2
