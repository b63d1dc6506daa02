from pathlib import Path

import pytest

from tunesmith.config import ConfigError, ProjectConfig, load_config

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tunesmith.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_without_a_file():
    config = load_config()
    assert config.model.id == "smollm2-135m-instruct"
    assert config.train.method == "lora"
    assert config.train.lora.r == 16


def test_every_error_at_once_with_field_path_and_line(tmp_path):
    path = write(
        tmp_path,
        "project: demo\ntrain:\n  learning_rate: fast\n  lora:\n    r: -1\n  epochz: 3\n"
        "model:\n  dtype: float8\n",
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    issues = {issue.path: issue for issue in info.value.issues}
    assert set(issues) == {"train.learning_rate", "train.lora.r", "train.epochz", "model.dtype"}
    assert issues["train.learning_rate"].location == f"{path}:3"
    assert issues["train.lora.r"].location == f"{path}:5"
    assert "unknown field" in issues["train.epochz"].message
    assert issues["model.dtype"].location == f"{path}:8"
    assert "float8" in issues["model.dtype"].message


def test_overrides_parse_yaml_values_and_accept_short_names(tmp_path):
    path = write(tmp_path, "project: demo\n")
    config = load_config(
        path, ["train.lr=1e-4", "train.epochs=2", "train.lora.target_modules=[q_proj, v_proj]"]
    )
    assert config.train.learning_rate == pytest.approx(1e-4)
    assert config.train.num_train_epochs == 2
    assert config.train.lora.target_modules == ["q_proj", "v_proj"]


def test_bad_override_is_reported_with_the_rest(tmp_path):
    path = write(tmp_path, "project: demo\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, ["train.lr", "eval.batch_size=0"])
    paths = [issue.path for issue in info.value.issues]
    assert paths == ["train.lr", "eval.batch_size"]


def test_a_bad_value_from_an_override_is_reported_at_the_override_as_it_was_written(tmp_path):
    """Not at the file's `train:` line, and not under the field's internal name."""
    path = write(tmp_path, "project: demo\ntrain:\n  lr: 1e-4\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, ["train.epochs=-1", "serve.routes=[{model: a, canary: [{to: b, percent: 150}]}]"])
    issues = {issue.path: issue for issue in info.value.issues}
    assert set(issues) == {"train.epochs", "serve.routes.0.canary.0.percent"}, issues
    assert issues["train.epochs"].location == "--set train.epochs=-1"
    assert (
        str(issues["train.epochs"])
        == "--set train.epochs=-1: train.epochs: Input should be greater than 0 (got -1)"
    )
    assert issues["serve.routes.0.canary.0.percent"].location.startswith("--set serve.routes=")
    with pytest.raises(ConfigError) as info:  # a value from the file keeps its line
        load_config(write(tmp_path, "project: demo\ntrain:\n  epochs: -1\n"), ["train.lr=1e-4"])
    assert [str(issue.location) for issue in info.value.issues] == [f"{path}:3"]


def test_invalid_yaml_names_the_line(tmp_path):
    path = write(tmp_path, "project: demo\ntrain:\n  lr: [1,\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.issues[0].location.startswith(f"{path}:")
    assert "not valid YAML" in info.value.issues[0].message


def test_missing_explicit_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "nope.yaml")


def test_relative_paths_resolve_against_the_config_folder(tmp_path):
    (tmp_path / "sub").mkdir()
    path = tmp_path / "sub" / "tunesmith.yaml"
    path.write_text("project: demo\ndata:\n  path: rows.jsonl\n", encoding="utf-8")
    config = load_config(path)
    assert config.resolve_path(config.data.path) == tmp_path / "sub" / "rows.jsonl"
    assert config.workspace_dir == tmp_path / "sub" / ".tunesmith"
    assert config.resolved_store_url == f"sqlite:///{tmp_path / 'sub' / '.tunesmith' / 'tunesmith.db'}"


def test_store_url_from_environment_wins(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNESMITH_DB_URL", "sqlite:///elsewhere.db")
    config = load_config(write(tmp_path, "project: demo\nstore_url: sqlite:///mine.db\n"))
    assert config.resolved_store_url == "sqlite:///elsewhere.db"


def test_resolved_config_round_trips():
    config = load_config(None, ["train.lr=3e-4"])
    again = ProjectConfig.model_validate(config.resolved())
    assert again.resolved() == config.resolved()


@pytest.mark.parametrize(
    "path",
    sorted(REPO.glob("examples/*.yaml")) + sorted((REPO / "src/tunesmith").glob("*/*.yaml")),
    ids=lambda p: p.name,
)
def test_every_shipped_config_validates(path):
    text = path.read_text(encoding="utf-8").replace("{project}", "example")
    copy = Path.cwd() / path.name
    copy.write_text(text, encoding="utf-8")
    load_config(copy)


def test_shipped_configs_exist():
    assert len(list(REPO.glob("examples/*.yaml"))) >= 2


def test_effective_batch_size_counts_every_process(monkeypatch):
    train = load_config(None, ["train.batch_size=8", "train.effective_batch_size=32"]).train
    assert train.accumulation_steps == 4
    monkeypatch.setenv("WORLD_SIZE", "2")  # two processes each take a batch of 8 per micro-step
    assert train.processes == 2 and train.accumulation_steps == 2
    monkeypatch.setenv("WORLD_SIZE", "8")
    assert train.accumulation_steps == 1


def test_plugins_are_imported_once_and_a_broken_one_is_named_with_its_line(tmp_path):
    from tunesmith.monitor.scorers import SCORERS

    plugin = tmp_path / "checks.py"
    plugin.write_text(
        "from tunesmith.monitor.scorers import register_scorer\n\n"
        "@register_scorer('test_says_hello', better='higher')\n"
        "def says_hello(prompt, answer, row, ctx):\n"
        "    return float('hello' in answer.lower())\n"
    )
    config = tmp_path / "tunesmith.yaml"
    config.write_text("project: p\nplugins:\n  - checks.py\n  - json\n")
    load_config(config)
    load_config(config)  # a second load in the same process registers nothing twice
    assert SCORERS.get("test_says_hello").better == "higher"

    (tmp_path / "broken.py").write_text("raise RuntimeError('the plugin is broken')\n")
    config.write_text("project: p\nplugins:\n  - broken.py\n")
    with pytest.raises(ConfigError) as raised:
        load_config(config)
    [issue] = raised.value.issues
    assert issue.path == "plugins[0]" and issue.location == f"{config}:3"
    assert "RuntimeError: the plugin is broken" in issue.message
