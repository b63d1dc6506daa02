#!/usr/bin/env bash
# Build llama.cpp's `llama-server` into the virtual environment's bin/ (the `llamacpp` backend).
#
# The source is the llama.cpp tree that llama-cpp-python's source release carries (PyPI is the one
# registry every setup reaches), pinned by version, so each setup builds the same llama.cpp. Only the
# server target is built, CPU only, without curl, SSL or the web UI; about 5 minutes on 2 cores.
# The tree's conversion scripts (convert_hf_to_gguf.py, convert_lora_to_gguf.py) are kept beside it.
#
# It is built for this machine's CPU (GGML_NATIVE); LLAMA_CMAKE_ARGS adds cmake options, e.g.
# "-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON" for an image that runs elsewhere.
#
#   scripts/build_llama_server.sh VENV LLAMA_CPP_PYTHON_VERSION
set -euo pipefail
venv=${1:?usage: build_llama_server.sh VENV VERSION}
version=${2:?usage: build_llama_server.sh VENV VERSION}
venv=$(cd "$venv" && pwd)
if "$venv/bin/llama-server" --version >/dev/null 2>&1 && [ -f "$venv/llama.cpp/.version-$version" ]; then
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
	${LLAMA_CMAKE_ARGS:-} >/dev/null
cmake --build "$work/build" --target llama-server -j "$(nproc)" >"$work/build.log" 2>&1 \
	|| { tail -40 "$work/build.log"; exit 1; }
install -m 755 "$work/build/bin/llama-server" "$venv/bin/llama-server"
rm -rf "$venv/llama.cpp"
mkdir -p "$venv/llama.cpp"
cp -r "$source_dir"/convert_hf_to_gguf.py "$source_dir"/convert_lora_to_gguf.py "$source_dir"/gguf-py \
	"$source_dir"/LICENSE "$venv/llama.cpp/"
[ -d "$source_dir/conversion" ] && cp -r "$source_dir/conversion" "$venv/llama.cpp/"
touch "$venv/llama.cpp/.version-$version"
"$venv/bin/llama-server" --version 2>&1 | head -2
