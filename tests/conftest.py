"""Shared fixtures: a tiny random-weight Llama with a ChatML tokenizer, built here (no download)."""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two workers on two cores: one compute thread each, or they fight for the cores.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Modules with slow tests first, slow tests first in each: the long ones start while the short fill in.

    A module's tests stay together, so its module-scoped fixtures are built once per worker.
    """
    modules = list(dict.fromkeys(item.nodeid.split("::")[0] for item in items))
    slow = {item.nodeid.split("::")[0] for item in items if item.get_closest_marker("slow")}
    rank = {module: (module not in slow, index) for index, module in enumerate(modules)}
    items.sort(key=lambda item: (rank[item.nodeid.split("::")[0]], item.get_closest_marker("slow") is None))


CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def train_killed_at_checkpoint(command: list[str], project: Path, step: int, timeout: float = 300) -> None:
    """Run the `tunesmith train` `command` for the project in `project`, and kill -9 it (with every
    process it started, as when the machine dies) once its run has saved checkpoint `step`."""
    import contextlib
    import signal
    import subprocess
    import time

    import psutil

    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    runs, deadline = project / ".tunesmith" / "runs", time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if any((p / "trainer_state.json").exists() for p in runs.glob(f"*/trainer/checkpoint-{step}")):
            # Every process is frozen first, then killed: killed one by one, a survivor could see a
            # peer die and record the run as failed, which a machine that dies never does.
            parent = psutil.Process(process.pid)
            family = [parent, *parent.children(recursive=True)]  # torchrun's own sessions too
            for member in family:
                with contextlib.suppress(psutil.NoSuchProcess):
                    member.suspend()
            os.killpg(process.pid, signal.SIGKILL)
            for member in family:
                with contextlib.suppress(psutil.NoSuchProcess):
                    member.kill()
            break
        time.sleep(0.01)
    output = process.communicate()[0].decode()
    assert process.returncode == -signal.SIGKILL, f"the run finished before it could be killed:\n{output}"


def logged_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The rows a run logged to its metrics.jsonl, in order."""
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def write_jsonl(path: Path, rows: Any) -> Path:
    """`rows` (dicts, or lines already written) as a JSONL file at `path`."""
    path.write_text(
        "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8"
    )
    return path


def demo_rows() -> list[dict]:
    text = resources.files("tunesmith").joinpath("demo", "fernwick.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines()]


def demo_project(tmp_path: Path, model_dir: Path, name: str, rows: int, **sections: dict[str, Any]) -> Path:
    """A project over the first `rows` demo rows and the model in `model_dir`: its config file, with
    `sections` (data=..., train=...) merged into it."""
    import yaml

    data = tmp_path / "qa.jsonl"
    write_jsonl(data, demo_rows()[:rows])
    config = {"project": name, "model": {"id": str(model_dir)}, **sections}
    config["data"] = {"path": str(data), **sections.get("data", {})}
    path = tmp_path / "tunesmith.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer Llama (about 0.1M parameters) and a word-level tokenizer trained on the demo text."""
    return _tiny_llama(tmp_path_factory.mktemp("tiny-llama"), byte_level=False)


@pytest.fixture(scope="session")
def tiny_byte_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same tiny Llama with a byte-level BPE tokenizer (as GPT-2, SmolLM2...): it can spell any text."""
    return _tiny_llama(tmp_path_factory.mktemp("tiny-byte-llama"), byte_level=True)


def _tiny_llama(directory: Path, *, byte_level: bool) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    corpus = [m["content"] for row in demo_rows() for m in row["messages"]]
    specials = ["<unk>", "<|im_start|>", "<|im_end|>"]
    if byte_level:
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer: Any = trainers.BpeTrainer(
            vocab_size=600, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        )
    else:
        tokenizer = Tokenizer(models.WordLevel(unk_token="<unk>"))
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
        )
        trainer = trainers.WordLevelTrainer(special_tokens=specials)
    tokenizer.train_from_iterator([*corpus, "system user assistant"], trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="<unk>",
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
    )
    fast.chat_template = CHATML
    fast.save_pretrained(directory)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512 if byte_level else 256,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        tie_word_embeddings=True,
    )
    LlamaForCausalLM(config).save_pretrained(directory)
    return directory


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test gets its own working folder and cannot touch the user's store."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TUNESMITH_DB_URL", raising=False)
    monkeypatch.setenv("TUNESMITH_USER", "tester")


@pytest.fixture(scope="session")
def postgres_server():
    """A real PostgreSQL server on 127.0.0.1 for this test session (Debian `postgresql` binaries).

    Yields a function that creates an empty database and returns its SQLAlchemy URL. Runs the
    server as the `postgres` user when the tests run as root (PostgreSQL refuses root).
    """
    import os
    import shutil
    import socket
    import subprocess

    found = sorted(map(str, Path("/usr/lib/postgresql").glob("*/bin/initdb"))) or [
        shutil.which("initdb") or ""
    ]
    initdb = found[-1]
    if not initdb or not Path(initdb).exists():
        pytest.skip("PostgreSQL server binaries are not installed (make setup installs Debian postgresql)")
    pytest.importorskip("psycopg", reason="psycopg is not installed (the postgres extra)")
    import tempfile

    bindir = Path(initdb).parent
    # not under pytest's tmp folder: that one is private to root, and the server runs as postgres
    root = Path(tempfile.mkdtemp(prefix="tunesmith-pg-"))
    data, sockets = root / "data", root / "sockets"
    sockets.mkdir()
    prefix: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(sockets, "postgres")
        prefix = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    def run(*args: str) -> None:
        subprocess.run([*prefix, *args], check=True, capture_output=True, text=True, timeout=120)

    run(str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "tunesmith", "--no-sync")
    options = f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 -c fsync=off"
    run(str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(root / "log"), "-w", "start")
    count = {"n": 0}

    def new_database() -> str:
        count["n"] += 1
        name = f"tunesmith_test_{count['n']}"
        run(str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "tunesmith", name)
        return f"postgresql+psycopg://tunesmith@127.0.0.1:{port}/{name}"

    try:
        yield new_database
    finally:
        subprocess.run(
            [*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"],
            capture_output=True,
            timeout=60,
            check=False,
        )
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def serve_project(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> dict:
    """Two LoRA versions of the tiny model; the first in production, the second the candidate.

    Tests that move aliases put production back on the first version when they are done.
    """
    from tunesmith.config import load_config
    from tunesmith.pipeline import write_demo_project
    from tunesmith.registry.aliases import promote
    from tunesmith.train.run import train
    from tunesmith.workspace import open_workspace

    root = tmp_path_factory.mktemp("serve-project")
    config_path = write_demo_project(root)
    settings = [f"model.id={tiny_model_dir}", "train.method=lora", "train.epochs=1", "train.lr=5e-2"]
    settings += ["serve.auth=none", "ui.auth=none"]  # open on 127.0.0.1; the tests of keys set auth=keys
    first = train(load_config(config_path, settings)).version
    second = train(load_config(config_path, [*settings, "train.seed=1", "train.lr=1e-1"])).version
    config = load_config(config_path, settings)
    promote(open_workspace(config), config.registry, first, "production", force=True, reason="test")
    names = {"first": first.name, "second": second.name, "family": first.family}
    return {"path": config_path, "settings": settings, **names}
