"""Synthetic data: documents → teacher → filters → dataset version, and paraphrase augmentation.

The teacher is an OpenAI-compatible server under a real uvicorn, called with the official client,
whose 'model' is a rule that writes good rows and planted bad ones (see `synth_helpers`), so every
filter's decision can be checked. One slow test runs the bundled SmolLM2 as a local teacher.
"""

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import write_jsonl
from judge_server import serve
from synth_helpers import make_app, write_pdf
from tunesmith.cli import app
from tunesmith.config import load_config
from tunesmith.data import get_dataset, load_split, prepare_data
from tunesmith.data.sources import SourceError
from tunesmith.pipeline import write_demo_project
from tunesmith.registry.lifecycle import model_card
from tunesmith.synth.documents import chunk_documents, read_documents
from tunesmith.synth.filters import invented_specifics
from tunesmith.synth.prompts import PromptError, pair_prompt, parse_pairs, parse_paraphrases
from tunesmith.train import run as training
from tunesmith.workspace import open_workspace

runner = CliRunner()
DOCS = Path(__file__).parent / "data" / "synth_docs"


@pytest.fixture(scope="module")
def teacher():
    """(base URL, app) of the rule teacher, shared by the module's tests."""
    with serve(make_app()) as served:
        yield served


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    folder = tmp_path / "docs"
    folder.mkdir()
    for file in DOCS.iterdir():
        (folder / file.name).write_bytes(file.read_bytes())
    write_pdf(
        folder / "care-guide.pdf",
        [
            "Caring for house plants with a Sproutly",
            "Most house plants like their soil moisture between 30 and 60 percent.",
            "The Fernwick Garden app knows care profiles for more than 4000 plants.",
        ],
    )
    return folder


def project(tmp_path: Path, model_dir: Path, url: str, *overrides: str) -> tuple[Path, list[str]]:
    config_path = write_demo_project(tmp_path)
    settings = [
        f"model.id={model_dir}",
        f"synth.teacher.endpoint={url}",
        "synth.teacher.model=grounded",
        "synth.teacher.concurrency=2",
        *overrides,
    ]
    return config_path, settings


def cli(config_path: Path, settings: list[str], *args: str):
    """`tunesmith data ...`: `synth` takes the config as an argument (like `prepare`), others as --config."""
    where = [str(config_path)] if args[0] == "synth" else ["--config", str(config_path)]
    return runner.invoke(app, ["data", *args, *where, *(a for s in settings for a in ("--set", s))])


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_documents_of_every_type_are_read_and_chunked_with_their_headings(docs):
    (docs / "notes.docx").write_bytes(b"PK\x03\x04 not read")
    read = read_documents(str(docs))
    by_name = {d.name: d for d in read.documents}
    assert set(by_name) == {
        "bridge-faq.txt",
        "care-guide.pdf",
        "shipping-and-returns.html",
        "sproutly-manual.md",
    }
    assert any("notes.docx: skipped" in note for note in read.notes)
    html = by_name["shipping-and-returns.html"]
    assert html.title == "Shipping and returns - Fernwick Labs"
    assert "# Shipping and returns" in html.text and "## Returns" in html.text
    assert "window.analytics" not in html.text and "Shop" not in html.text  # script and nav dropped
    assert "€60" in html.text  # entities decoded
    assert "30 and 60 percent" in by_name["care-guide.pdf"].text and by_name["care-guide.pdf"].pages == 1
    assert by_name["sproutly-manual.md"].title == "Sproutly user manual"

    chunks = chunk_documents(read.documents, lambda text: len(text.split()), 40, 8)
    manual = [c for c in chunks if c.document == "sproutly-manual.md"]
    assert len(manual) > 1 and all(len(c.text.split()) <= 40 for c in manual)
    assert [c.id for c in manual] == [f"sproutly-manual.md#{i}" for i in range(len(manual))]
    text = by_name["sproutly-manual.md"].text
    assert all(text[c.start : c.end] == c.text for c in manual)  # offsets point back into the document
    assert {c.heading for c in manual} >= {"Sproutly user manual", "Charging", "Pairing and reset"}

    with pytest.raises(SourceError, match=r"cannot read \.docx as a document"):
        read_documents(str(docs / "notes.docx"))
    with pytest.raises(SourceError, match="no such file or folder"):
        read_documents(str(docs / "missing"))


def test_teacher_replies_are_parsed_in_the_shapes_models_write_them():
    qa = pair_prompt("qa")
    reply = (
        "Q: Why?\nA: Because.\n\n**Question 2:** How long?\n**Answer 2:** Two hours.\n1. Question: dangling"
    )
    assert parse_pairs(reply, qa) == [("Why?", "Because."), ("How long?", "Two hours.")]
    assert parse_pairs("Just some text about plants.", qa) == []
    instruction = pair_prompt("instruction")
    assert parse_pairs("Instruction: List the colours.\nResponse: Moss green, slate grey.", instruction) == [
        ("List the colours.", "Moss green, slate grey.")
    ]
    assert parse_paraphrases('Rewrite: One way.\nRewrite 2: "Another way."') == ["One way.", "Another way."]
    assert parse_paraphrases("1. First way.\n2. Second way.") == ["First way.", "Second way."]
    assert invented_specifics(
        "It was founded by Henrik Olsen in 1961. The Bridge costs €49.", "The Bridge costs €49."
    ) == ["Henrik", "Olsen", "1961"]


def test_a_custom_prompt_is_versioned_by_its_text_and_must_show_the_passage(tmp_path):
    template = tmp_path / "prompt.txt"
    template.write_text("Passage: {passage}\nWrite {n} questions.\nQuestion: ...\nAnswer: ...")
    prompt = pair_prompt("qa", template)
    assert prompt.version.startswith("custom-") and "Passage: the text" in prompt.render("the text", "T", 2)
    template.write_text("Write some questions about plants.")
    with pytest.raises(PromptError, match=r"no \{passage\} placeholder"):
        pair_prompt("qa", template)


def test_synth_from_documents_tags_filters_and_versions_the_rows(tmp_path, tiny_model_dir, teacher, docs):
    url, server = teacher
    config_path, settings = project(
        tmp_path, tiny_model_dir, url, "synth.judge=true", f"eval.judge.endpoint={url}"
    )
    result = cli(config_path, settings, "synth", "--from", str(docs))
    assert result.exit_code == 0, result.output
    assert "candidate rows" in result.output and "grounding" in result.output

    workspace = open_workspace(load_config(config_path, settings))
    (folder,) = (workspace.root / "synth").glob("syn-doc-*")
    report = json.loads((folder / "report.json").read_text())
    steps = {s["name"]: s for s in report["steps"]}
    rejected = jsonl(folder / "rejected.jsonl")
    reasons = Counter(r["step"] for r in rejected)
    # Every planted fault is caught by its filter, with the reason written out.
    assert steps["pii"]["changed"] >= 1 and steps["pii"]["details"]["by_type"]["EMAIL"] >= 1
    assert reasons["dedup_exact"] >= 4  # the repeated pair in each reply, and cross-chunk repeats
    assert any("not grounded" in r["reason"] and "Henrik" in json.dumps(r["row"]) for r in rejected)
    assert any(r["reason"].startswith("invented specifics:") for r in rejected)
    assert any(r["step"] == "judge" and "No, it is not so" in json.dumps(r["row"]) for r in rejected)
    assert report["kept"] == len(jsonl(folder / "synthetic.jsonl")) > 10

    version = get_dataset(workspace, _latest(workspace))
    rows = load_split(version, "train")
    assert version.counts["val"] == version.counts["test"] == 0  # synthetic rows train only
    assert all(r["origin"] == "synthetic" for r in rows)
    tag = rows[0]["synthetic"]
    assert tag["teacher"] == f"endpoint:{url}:grounded" and tag["prompt_version"] == "qa-v1"
    assert tag["run"] == folder.name and tag["chunk_id"].split("#")[0] in {d.name for d in docs.iterdir()}
    assert tag["chunk"] and tag["grounding"] >= 0.5 and tag["judge"] >= 3.5
    assert any(r["synthetic"]["document"] == "care-guide.pdf" for r in rows)
    for row in rows:  # each answer is a sentence of the chunk the row keeps
        assert row["messages"][-1]["content"].split("\n")[0] in row["synthetic"]["chunk"]
    lineage = version.meta["lineage"]
    assert lineage["source"] == "synth" and lineage["teacher"] == tag["teacher"]
    assert {d["path"] for d in lineage["documents"]} == {p.name for p in docs.iterdir()}
    assert all(len(d["sha256"]) == 64 for d in lineage["documents"])
    shown = runner.invoke(app, ["data", "show", version.id, "--config", str(config_path)])
    assert "Lineage: source=synth" in shown.output and "care-guide.pdf" in shown.output

    # The same run again asks the teacher nothing: every reply is cached.
    calls = server.state.calls
    again = cli(config_path, settings, "synth", "--from", str(docs))
    assert again.exit_code == 0, again.output
    assert server.state.calls == calls


def _latest(workspace):
    from tunesmith.data import list_datasets

    return list_datasets(workspace)[0].id


def test_synthetic_rows_join_a_real_dataset_in_train_only(tmp_path, tiny_model_dir, teacher, docs):
    url, _ = teacher
    config_path, settings = project(tmp_path, tiny_model_dir, url)
    config = load_config(config_path, settings)
    parent = prepare_data(config)
    # A test question of the parent that the teacher will also write: the synthetic copy must go.
    result = cli(config_path, settings, "synth", "--from", str(docs / "bridge-faq.txt"), "--into", parent.id)
    assert result.exit_code == 0, result.output
    version = get_dataset(open_workspace(config), _latest(open_workspace(config)))
    assert version.meta["lineage"]["into"] == parent.id
    for split in ("val", "test"):
        assert load_split(version, split) == load_split(parent, split)
    train = load_split(version, "train")
    synthetic = [r for r in train if r.get("origin") == "synthetic"]
    assert synthetic and len(train) == parent.counts["train"] + len(synthetic)
    steps = {s["name"]: s for s in version.meta["report"]["steps"]}
    assert steps["synthetic"]["details"]["rows"] == len(synthetic)
    assert f"Train on it: tunesmith train --set data.path={version.id}" in result.output

    # Training on the stored version uses it as it is, and the model card says what is synthetic.
    trained = training.train(
        load_config(config_path, [*settings, f"data.path={version.id}", "train.max_steps=1"])
    )
    assert trained.version.dataset_version_id == version.id
    card = model_card(open_workspace(config), trained.version)
    assert f"- Synthetic: {len(synthetic)} pairs from documents, written by `endpoint:{url}:grounded`" in card
    assert "validation and test rows are all real" in card

    (tmp_path / "labels.jsonl").write_text(
        "".join(
            json.dumps({"text": f"review number {i} text", "label": "ab"[i % 2]}) + "\n" for i in range(12)
        )
    )
    overrides = ["train.objective=classify", "data.path=labels.jsonl", "data.format=auto"]
    labelled = prepare_data(load_config(config_path, [*settings, *overrides]))
    refused = cli(config_path, settings, "synth", "--from", str(docs), "--into", labelled.id)
    assert refused.exit_code == 2 and "holds classification rows" in refused.output


def test_a_killed_synth_run_resumes_without_asking_the_teacher_again(tmp_path, tiny_model_dir, docs):
    slow = make_app(delay=0.3)
    with serve(slow) as (url, server):
        config_path, settings = project(
            tmp_path, tiny_model_dir, url, "synth.teacher.concurrency=1", "synth.samples_per_chunk=3"
        )
        flags = [a for s in settings for a in ("--set", s)]
        command = [
            str(Path(sys.executable).parent / "tunesmith"),
            "data",
            "synth",
            "--from",
            str(docs),
            str(config_path),
            *flags,
        ]
        process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        deadline = time.time() + 60
        while server.state.calls < 5 and time.time() < deadline:
            time.sleep(0.05)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        first = server.state.calls
        assert first >= 5, "the first run never reached the teacher"
        workspace = open_workspace(load_config(config_path, settings))
        assert not list((workspace.root / "synth").glob("syn-doc-*"))  # no half-written run folder
        result = cli(config_path, settings, "synth", "--from", str(docs))
        assert result.exit_code == 0, result.output
        report = json.loads(next((workspace.root / "synth").glob("syn-doc-*/report.json")).read_text())
        asked_again = server.state.calls - first
        assert asked_again < report["requests"]  # the replies before the kill were kept
        assert first + asked_again >= report["requests"]


def test_augmentation_balances_labels_with_label_preserving_paraphrases(tmp_path, tiny_model_dir, teacher):
    url, _ = teacher
    config_path, settings = project(
        tmp_path,
        tiny_model_dir,
        url,
        "train.objective=classify",
        "data.path=reviews.jsonl",
        "data.format=auto",
        "data.split.strategy=stratified",
    )
    good = [f"a good film with a great cast and story number {i}" for i in range(16)]
    bad = [f"a bad movie with a dull plot in part {i} of it" for i in range(6)]
    rows = [{"text": t, "label": "pos"} for t in good] + [{"text": t, "label": "neg"} for t in bad]
    write_jsonl(tmp_path / "reviews.jsonl", rows)
    parent = prepare_data(load_config(config_path, settings))
    before = Counter(r["label"] for r in load_split(parent, "train"))
    assert before["neg"] < before["pos"]

    result = cli(config_path, settings, "augment", parent.id, "--balance")
    assert result.exit_code == 0, result.output
    assert "label" in result.output and "before" in result.output
    workspace = open_workspace(load_config(config_path, settings))
    version = get_dataset(workspace, _latest(workspace))
    train = load_split(version, "train")
    synthetic = [r for r in train if r.get("origin") == "synthetic"]
    after = Counter(r["label"] for r in train)
    assert synthetic and {r["label"] for r in synthetic} == {"neg"}  # only the smaller label grows
    assert before["neg"] < after["neg"] <= before["pos"] and after["pos"] == before["pos"]
    originals = {f"{r['_location']}": r for r in load_split(parent, "train", with_meta=True)}
    for row in synthetic:
        source = originals[row["synthetic"]["source_row"]]
        assert source["label"] == row["label"] and row["text"] != source["text"]
        assert row["synthetic"]["similarity"] >= 0.7 and row["synthetic"]["prompt_version"] == "paraphrase-v1"
    for split in ("val", "test"):  # held-out rows are never paraphrased or touched
        assert load_split(version, split) == load_split(parent, split)
    folder = workspace.root / "synth" / version.meta["lineage"]["run"]
    rejected = jsonl(folder / "rejected.jsonl")
    assert any(r["step"] == "meaning" and "Tromso" in json.dumps(r["row"]) for r in rejected)
    assert (
        version.meta["lineage"]["parent"] == parent.id
        and version.meta["lineage"]["classes"]["neg"]["before"] == before["neg"]
        and version.meta["lineage"]["classes"]["neg"]["target"] == before["pos"]  # the largest label's
    )

    to_eight = cli(config_path, settings, "augment", parent.id, "--target", "8")  # --balance implied
    assert to_eight.exit_code == 0, to_eight.output
    classes = get_dataset(workspace, _latest(workspace)).meta["lineage"]["classes"]
    assert {label: c["target"] for label, c in classes.items()} == {"neg": 8, "pos": 8}


def test_augmenting_chat_rows_paraphrases_the_question_and_keeps_the_answer(
    tmp_path, tiny_model_dir, teacher
):
    url, _ = teacher
    config_path, settings = project(tmp_path, tiny_model_dir, url)
    parent = prepare_data(load_config(config_path, settings))
    result = cli(config_path, settings, "augment", parent.id, "--paraphrases", "2", "--max-rows", "6")
    assert result.exit_code == 0, result.output
    workspace = open_workspace(load_config(config_path, settings))
    version = get_dataset(workspace, _latest(workspace))
    originals = {r["_location"]: r for r in load_split(parent, "train", with_meta=True)}
    synthetic = [r for r in load_split(version, "train") if r.get("origin") == "synthetic"]
    assert synthetic
    for row in synthetic:
        source = originals[row["synthetic"]["source_row"]]
        assert row["messages"][-1] == source["messages"][-1]  # the answer is kept
        assert row["messages"][-2]["content"] != source["messages"][-2]["content"]
    refused = cli(config_path, settings, "augment", parent.id, "--balance")
    assert refused.exit_code == 2 and "have none" in refused.output


def test_teacher_errors_are_clear(tmp_path, tiny_model_dir, docs):
    config_path, settings = project(
        tmp_path, tiny_model_dir, "http://127.0.0.1:9/v1", "synth.teacher.concurrency=1"
    )
    result = cli(config_path, settings, "synth", "--from", str(docs / "bridge-faq.txt"))
    assert (
        result.exit_code == 1 and "cannot reach the teacher endpoint http://127.0.0.1:9/v1" in result.output
    )
    missing = cli(config_path, settings, "synth", "--from", str(docs / "nothing-here"))
    assert missing.exit_code == 2 and "no such file or folder" in missing.output


@pytest.mark.slow
def test_smollm2_writes_a_small_grounded_set_from_documents(tmp_path, docs):
    """The bundled SmolLM2-135M as a local teacher: modest rows, but real generation and real filters."""
    config_path = write_demo_project(tmp_path)
    settings = ["synth.teacher.max_tokens=160", "synth.samples_per_chunk=2", "synth.teacher.batch_size=8"]
    result = cli(config_path, settings, "synth", "--from", str(docs))
    assert result.exit_code == 0, result.output
    workspace = open_workspace(load_config(config_path, settings))
    (folder,) = (workspace.root / "synth").glob("syn-doc-*")
    report = json.loads((folder / "report.json").read_text())
    assert report["teacher"] == "local:smollm2-135m-instruct@default"
    assert report["requests"] == 2 * len(jsonl(folder / "chunks.jsonl"))
    assert report["candidates"] > report["kept"] > 0  # the filters removed some, and kept some
    version = get_dataset(workspace, _latest(workspace))
    rows = load_split(version, "train")
    assert rows and all(r["origin"] == "synthetic" and r["synthetic"]["grounding"] >= 0.5 for r in rows)


def test_tunesmith_serve_is_a_teacher_like_any_endpoint(serve_project, tmp_path, docs):
    """A registered version served by `tunesmith serve` writes the replies; the tiny model's are noise,
    so every one is rejected by the format filter, with its reply written out, and the run says so."""
    from tunesmith.serve import serve_in_background
    from tunesmith.store import RequestLog, session

    served = load_config(serve_project["path"], [*serve_project["settings"], "serve.poll_seconds=0.2"])
    with serve_in_background(served) as (url, _):
        config_path, settings = project(
            tmp_path, Path(served.model.id), f"{url}/v1", f"synth.teacher.model={serve_project['family']}"
        )
        settings.append("synth.teacher.max_tokens=12")
        result = cli(config_path, settings, "synth", "--from", str(docs / "bridge-faq.txt"))
    assert result.exit_code == 2 and "no synthetic row passed the filters" in result.output
    workspace = open_workspace(load_config(config_path, settings))
    (folder,) = (workspace.root / "synth").glob("syn-doc-*")
    report = json.loads((folder / "report.json").read_text())
    assert report["teacher"] == f"endpoint:{url}/v1:{serve_project['family']}"
    (rejected,) = jsonl(folder / "rejected.jsonl")
    assert rejected["step"] == "format" and rejected["row"]["chunk"] == "bridge-faq.txt#0"
    with session(open_workspace(served).engine) as s:
        logged = [
            r.prompt
            for r in s.query(RequestLog).filter(RequestLog.requested_model == serve_project["family"])
        ]
    assert any("Below is a passage" in json.dumps(p) for p in logged)  # logged like any request


def test_a_local_teacher_is_the_base_a_registered_version_or_any_model(tmp_path, tiny_model_dir):
    """One loader serves synth's teacher and judge and distillation's teacher: each accepted a
    different set of names before (synth took no model id; distillation no `base`)."""
    from tunesmith.synth.teacher import TeacherError, load_local_model

    config = load_config(write_demo_project(tmp_path), [f"model.id={tiny_model_dir}", "train.max_steps=1"])
    workspace = open_workspace(config)
    assert load_local_model(config, workspace, "base")[2] == f"{tiny_model_dir}@default"
    assert load_local_model(config, workspace, str(tiny_model_dir))[2] == str(tiny_model_dir)
    version = training.train(config).version
    assert load_local_model(config, workspace, version.name)[2] == f"{version.name}:{version.id}"
    with pytest.raises(TeacherError, match="neither `base`, a registered version"):
        load_local_model(config, workspace, "no-such-model")
