import re
from pathlib import Path

from typer.testing import CliRunner

from tunesmith.cli import app

REPO = Path(__file__).resolve().parents[1]
VERBS = [
    "init",
    "validate",
    "models",
    "data",
    "train",
    "eval",
    "registry",
    "serve",
    "monitor",
    "improve",
    "ui",
    "quickstart",
]
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, list(args), catch_exceptions=False)


def test_help_lists_every_stage_verb():
    result = invoke("--help")
    assert result.exit_code == 0
    for verb in VERBS:
        assert re.search(rf"│ {verb}\s", result.output), verb


def cli_reference() -> list[str]:
    """One README line per verb and sub-verb: `tunesmith VERB` — the first line of its help."""
    import typer

    group = typer.main.get_command(app)
    lines = []
    for name, command in group.commands.items():
        lines.append(f"`tunesmith {name}` — {command.help.splitlines()[0]}")
        for sub_name, sub in getattr(command, "commands", {}).items():
            lines.append(f"`tunesmith {name} {sub_name}` — {sub.help.splitlines()[0]}")
    return lines


def test_readme_cli_reference_matches_help():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    missing = [line for line in cli_reference() if line not in readme]
    assert not missing, "README CLI reference is out of date; update these lines:\n" + "\n".join(missing)


def test_init_then_validate(tmp_path):
    assert invoke("init", str(tmp_path / "p")).exit_code == 0
    result = invoke("validate", str(tmp_path / "p" / "tunesmith.yaml"), "--set", "train.lr=1e-4")
    assert result.exit_code == 0
    assert "ok" in result.output


def test_validate_reports_every_error_and_exits_2(tmp_path):
    path = tmp_path / "tunesmith.yaml"
    path.write_text("train:\n  lr: -1\n  method: magic\n", encoding="utf-8")
    result = invoke("validate", str(path))
    assert result.exit_code == 2
    assert f"{path}:2: train.lr: Input should be greater than 0" in result.output
    assert f"{path}:3: train.method" in result.output


def test_models_list_and_show():
    listed = invoke("models", "list")
    assert "smollm2-135m-instruct" in listed.output and "minilm-l6" in listed.output
    shown = invoke("models", "show", "smollm2-135m-instruct")
    assert "8,192 tokens" in shown.output and "apache-2.0" in shown.output


def test_models_show_missing_folder_is_a_clear_error(tmp_path):
    result = invoke("models", "show", str(tmp_path / "nothing"))
    assert result.exit_code == 1
    assert "neither a catalogue id" in result.output


def test_data_prepare_without_a_path_says_which_field(tmp_path):
    result = invoke("data", "prepare")
    assert result.exit_code == 2
    assert "data.path is not set" in result.output


def test_every_kind_of_bad_data_exits_2_naming_the_file_from_every_command(tmp_path, tiny_model_dir):
    """Bad input is exit 2 with where and what to do, whichever command meets it and whichever
    stage raises it (a source that cannot be read, a data error, a prompt file's line)."""
    import gzip

    rows = b"".join(b'{"prompt": "q%d", "completion": "a"}\n' % i for i in range(50))
    empty, cut = tmp_path / "empty.jsonl", tmp_path / "cut.jsonl.gz"
    empty.write_bytes(b"")
    cut.write_bytes(gzip.compress(rows)[:-30])
    good = tmp_path / "good.jsonl"
    good.write_bytes(rows)
    model = f"model.id={tiny_model_dir}"
    cases = [
        (("data", "prepare", "--set", f"data.path={empty}", "--set", model), f"{empty}: the file is empty"),
        (("data", "validate", "--set", f"data.path={cut}", "--set", model), str(cut)),
        (("validate", "--set", f"data.path={empty}", "--set", model), "the file is empty"),
        (("validate", "--set", f"data.path={cut}", "--set", model), str(cut)),
        (("train", "--set", f"data.path={cut}", "--set", model), str(cut)),
        (
            ("data", "prepare", "--set", f"data.path={good}", "--set", model, "--map", "text=body"),
            "the columns are: prompt, completion",
        ),
        (
            ("data", "prepare", "--set", f"data.path={tmp_path / 'absent.jsonl'}", "--set", model),
            "absent.jsonl",
        ),
    ]
    for args, where in cases:
        result = runner.invoke(app, list(args), catch_exceptions=False)  # a traceback fails the test
        text = " ".join(result.output.split())
        assert result.exit_code == 2, (args, text)
        assert where in text and "Traceback" not in text, (args, text)


def test_train_rejects_unknown_trainer_args(tmp_path, tiny_model_dir):
    from conftest import demo_rows  # noqa: F401 - the demo file exists

    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"prompt": "q", "completion": "a"}\n' * 1, encoding="utf-8")
    result = invoke(
        "train",
        "--set",
        f"data.path={rows}",
        "--set",
        f"model.id={tiny_model_dir}",
        "--set",
        "train.args.not_a_field=1",
    )
    assert result.exit_code == 1
    assert "train.args.not_a_field: not a field of TRL's SFTConfig" in result.output


def test_train_registers_a_version_that_registry_lists(tmp_path, tiny_model_dir):
    rows = tmp_path / "rows.jsonl"
    rows.write_text(
        "".join(f'{{"prompt": "What is {i} plus one?", "completion": "{i + 1}"}}\n' for i in range(30)),
        encoding="utf-8",
    )
    assert invoke("init", str(tmp_path)).exit_code == 0
    config = str(tmp_path / "tunesmith.yaml")
    empty = invoke("registry", "list", "--config", config)
    assert "no versions in" in empty.output and "`tunesmith train` registers one" in " ".join(
        empty.output.split()
    )
    result = invoke(
        "train", config, "--set", f"data.path={rows}", "--set", f"model.id={tiny_model_dir}",
        "--set", "train.epochs=1", "--set", "train.batch_size=4",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    project = tmp_path.name.lower()
    assert f"Registered {project}-v1" in " ".join(result.output.split())
    listed = invoke("registry", "list", "--config", config)
    assert f"{project}-v1" in listed.output
    shown = invoke("registry", "show", f"{project}-v1", "--config", config)
    assert "prompt_completion" not in shown.output  # the version records the dataset id, not the rows
    assert "dataset_version: ds-" in shown.output and "weights_sha256:" in shown.output


def test_validate_checks_the_data_against_the_objective(tmp_path):
    data = tmp_path / "reviews.jsonl"
    data.write_text(
        "".join(
            f'{{"text": "review number {i}", "label": "{"pos" if i % 2 else "neg"}"}}\n' for i in range(20)
        )
    )
    config = tmp_path / "tunesmith.yaml"
    config.write_text(
        f"project: reviews\ndata:\n  path: {data}\ntrain:\n  objective: sft\n", encoding="utf-8"
    )
    result = runner.invoke(app, ["validate", str(config)])
    said = " ".join(result.output.split())
    assert result.exit_code == 2, said
    assert f"train.objective=sft needs sft rows, but {data} holds classification rows" in said
    assert "set train.objective: classify" in said
    fixed = runner.invoke(app, ["validate", str(config), "--set", "train.objective=classify"])
    assert fixed.exit_code == 0, fixed.output


def test_a_bad_since_is_bad_input_in_every_command_that_takes_one(tmp_path):
    config = tmp_path / "tunesmith.yaml"
    config.write_text("project: p\n", encoding="utf-8")
    for argv in (
        ["improve", "--config", str(config), "--since", "3 weeks"],
        ["monitor", "report", "--config", str(config), "--since", "3 weeks"],
        ["feedback", "collect", "p-v1", "--from-production", "--since", "3 weeks", "--config", str(config)],
    ):
        out = runner.invoke(app, argv)
        assert out.exit_code == 2, (argv, out.output)
        assert "--since '3 weeks': use a number and m, h or d, e.g. 24h" in " ".join(out.output.split()), argv


def test_an_empty_list_says_what_is_missing_and_how_to_make_one(tmp_path):
    config = tmp_path / "tunesmith.yaml"
    config.write_text("project: p\n", encoding="utf-8")
    expected = {
        ("data", "list", str(config)): "no dataset versions yet: `tunesmith data prepare` stores one",
        ("feedback", "list", "--config", str(config)): "no feedback sessions yet",
        ("serve", "keys", "list", "--config", str(config)): "`tunesmith serve keys create NAME --admin`",
        ("monitor", "alerts", "--config", str(config)): "no alert has fired",
    }
    for argv, said in expected.items():
        out = runner.invoke(app, list(argv))
        assert out.exit_code == 0 and said in " ".join(out.output.split()), (argv, out.output)
