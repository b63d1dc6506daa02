"""llama.cpp's own server (`llama-server`) as a child process on a loopback port.

`llama-server` is the maintained llama.cpp engine: slots that decode together with continuous
batching (a request joins the running batch at the next step, a finished one leaves it), llama.cpp's
samplers, stop strings, incremental detokenisation and prompt caching. tunesmith runs one per GGUF
file it serves, sends it token ids, and reads its token stream (serving, and the GGUF export's
parity check, which so runs through llama.cpp itself with the tokenizer inside the file).

The binary is `$TUNESMITH_LLAMA_SERVER`, else the one beside this Python (where `make setup` builds
it), else `llama-server` on PATH.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger("tunesmith.models")
INSTALL_HINT = (
    "build it with `make setup` (scripts/build_llama_server.sh), install llama.cpp (it ships "
    "llama-server), or point TUNESMITH_LLAMA_SERVER at the binary"
)

# llama-server's sampling defaults (top_k 40, min_p 0.05, repeat_penalty 1.1) differ from OpenAI's:
# off, so temperature and top_p mean what they mean on every backend
NEUTRAL = {"top_k": 0, "min_p": 0.0, "repeat_penalty": 1.0, "cache_prompt": True}


class LlamaServerError(RuntimeError):
    """llama-server is missing, did not start, or refused a request; the message says why."""


def find_server() -> str | None:
    """The llama-server binary to run, or None when there is none."""
    named = os.environ.get("TUNESMITH_LLAMA_SERVER")
    if named:
        return named if Path(named).is_file() else None
    beside = Path(sys.executable).parent / "llama-server"
    if beside.is_file():
        return str(beside)
    return shutil.which("llama-server")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LlamaServer:
    """One `llama-server` process serving `model` with `slots` sequences decoding together.

    `context` is each slot's context length. `loras` are GGUF LoRA adapters loaded at scale 0; a
    request names the ones it applies (`complete(..., lora=index)`).
    """

    def __init__(
        self,
        model: Path,
        *,
        slots: int,
        context: int,
        loras: Sequence[Path] = (),
        log_file: Path | None = None,
        threads: int | None = None,
        start_timeout: float = 180.0,
    ) -> None:
        binary = find_server()
        if binary is None:
            raise LlamaServerError(f"llama-server was not found: {INSTALL_HINT}")
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.slots, self.context = slots, context
        command = [
            binary, "--model", str(model), "--host", "127.0.0.1", "--port", str(self.port),
            "--parallel", str(slots), "--ctx-size", str(slots * context), "--no-webui",
            "--cache-ram", "256", "--threads", str(threads or compute_threads()),
        ]  # fmt: skip
        for adapter in loras:
            command += ["--lora", str(adapter)]
        if loras:
            command.append("--lora-init-without-apply")
        self.log_file = log_file
        output = log_file.open("ab") if log_file is not None else subprocess.DEVNULL
        try:
            self.process = subprocess.Popen(
                command, stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        finally:
            if log_file is not None:
                output.close()  # type: ignore[union-attr]
        self._wait_healthy(start_timeout)

    def _wait_healthy(self, timeout: float) -> None:
        import httpx2

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise LlamaServerError(
                    f"llama-server exited with code {self.process.returncode}{self._log_tail()}"
                )
            try:
                if httpx2.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx2.HTTPError:
                pass
            time.sleep(0.1)
        self.close()
        raise LlamaServerError(f"llama-server did not become ready within {timeout:g} s{self._log_tail()}")

    def _log_tail(self) -> str:
        if self.log_file is None or not self.log_file.exists():
            return ""
        lines = self.log_file.read_text(encoding="utf-8", errors="replace").splitlines()[-15:]
        return f"; the end of {self.log_file}:\n" + "\n".join(lines)

    def __enter__(self) -> LlamaServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, path: str, body: dict[str, Any] | None = None) -> Any:
        """One request to the server's own API (GET without a body, else POST); its JSON answer."""
        import httpx2

        if body is None:
            response = httpx2.get(f"{self.url}{path}", timeout=60)
        else:
            response = httpx2.post(f"{self.url}{path}", json=body, timeout=300)
        if response.status_code != 200:
            raise LlamaServerError(
                f"llama-server {path} answered {response.status_code}: {response.text[:500]}"
            )
        return response.json()

    def chat_prompt(self, messages: list[dict[str, str]]) -> list[int]:
        """`messages` rendered by the chat template inside the GGUF file and tokenised by its tokenizer."""
        text = self.call("/apply-template", {"messages": messages})["prompt"]
        return [
            int(t)
            for t in self.call("/tokenize", {"content": text, "add_special": False, "parse_special": True})[
                "tokens"
            ]
        ]

    def greedy(self, prompt: list[int], max_tokens: int, lora: int | None = None) -> list[int]:
        """Greedy new tokens after `prompt` (through adapter `lora`), the end-of-generation token included."""
        body = {"prompt": prompt, "n_predict": max_tokens, "temperature": 0.0, "return_tokens": True}
        return [int(t) for t in self.call("/completion", {**NEUTRAL, **body, **_applied(lora)})["tokens"]]

    def top_logprobs(self, prompt: list[int], k: int, lora: int | None = None) -> dict[int, float]:
        """The `k` likeliest next tokens after `prompt` and their log-probabilities (the model's own
        distribution, before any sampling setting)."""
        body = {"prompt": prompt, "n_predict": 1, "temperature": 0.0, "n_probs": k, "return_tokens": True}
        answer = self.call("/completion", {**NEUTRAL, **body, **_applied(lora)})
        (step,) = answer["completion_probabilities"]
        return {int(t["id"]): float(t["logprob"]) for t in step["top_logprobs"]}

    def stream(
        self, prompt: list[int], params: dict[str, Any], lora: int | None = None
    ) -> Iterator[dict[str, Any]]:
        """Stream one completion of the token ids `prompt`: llama-server's chunks, each with the new
        `tokens` and `content`, the last with `stop` true and its `stop_type` (eos, word, limit).

        Closing the iterator early closes the connection, which frees the slot at the next step.
        """
        import httpx2

        body = {
            "prompt": prompt,
            "stream": True,
            "return_tokens": True,
            **NEUTRAL,
            **params,
            **_applied(lora),
        }
        timeout = httpx2.Timeout(10.0, read=None)
        with httpx2.stream("POST", f"{self.url}/completion", json=body, timeout=timeout) as response:
            if response.status_code != 200:
                raise LlamaServerError(
                    f"llama-server answered {response.status_code}: {response.read().decode()[:500]}"
                )
            for line in response.iter_lines():
                if not line.startswith("data: "):
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    raise LlamaServerError(f"llama-server: {chunk['error']}")
                yield chunk
                if chunk.get("stop"):
                    return

    def close(self) -> None:
        """Stop the server (requests still streaming from it end)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _applied(lora: int | None) -> dict[str, Any]:
    """A request's adapter: index `lora` of the server's `--lora` list at full scale, the others off."""
    return {} if lora is None else {"lora": [{"id": lora, "scale": 1.0}]}


def compute_threads() -> int:
    """The threads llama.cpp decodes with: `OMP_NUM_THREADS` when it is set (the budget torch keeps
    to as well), else every core. More threads than cores spin against each other: a llama-server
    beside a torch process that has its own core slowed fourfold."""
    budget = os.environ.get("OMP_NUM_THREADS", "")
    return int(budget) if budget.isdigit() and int(budget) > 0 else os.cpu_count() or 1
