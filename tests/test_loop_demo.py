"""`make loop-demo` (examples/closed_loop/loop.py), run as a user runs it, on the tiny model.

The demo's claims about quality (the shadow's facts beat production's, the rollout promotes the
candidate) need the bundled model and 11 minutes; they are shown by `make loop-demo` itself. Here
the same script runs end to end on the tiny model in about two minutes, so that a change to any
command, route or module it uses breaks a test: v1 trained and served, traffic and feedback through
the real server, `improve` twice, the offline gate, a forced canary rolled back by an alert that
reaches a webhook, the timeline and the HTML report.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_loop_demo_runs_end_to_end(tiny_byte_model_dir: Path, tmp_path: Path) -> None:
    workdir = tmp_path / "loop"
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "closed_loop" / "loop.py"),
            "--workdir",
            str(workdir),
            "--model",
            str(tiny_byte_model_dir),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    out = done.stdout
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    steps = dict((what, ok == "OK") for ok, what in re.findall(r"^(OK|NO)\s+(.+)$", out, re.MULTILINE))
    assert steps, out[-3000:]
    # the tiny model states no facts, so its candidate cannot clear the demo's key_fact gate (min 0.3):
    # round 1 stops at the gate, which refuses it; the shadow and rollout steps need `make loop-demo`
    assert steps == {
        "improve put a gated candidate in shadow": False,
        "the offline gate refused the bad candidate": True,
        "the alert rolled the canary back": True,
        "the alert reached the webhook": True,
        "the HTML page of online scores per version was written": True,
    }, out[-4000:]
    assert done.returncode == 1  # and it says so: a step that did not show fails the demo
    assert f"{len(steps) - 1} of {len(steps)} steps showed what they should" in out
    assert "NOT SHOWN: improve put a gated candidate in shadow" in out

    # the refusal names its reason; the timeline names who moved each alias and why
    assert "gate threshold FAIL: key_fact" in out
    timeline = out.split("=== Timeline")[1]
    assert re.search(r"production -> fernwick-support-v1 +promote FORCED by \S+: first release", timeline)
    assert re.search(r"canary +-> fernwick-support-v3 +promote FORCED", timeline)
    rollback = r"canary +-> fernwick-support-v1 +rollback by tunesmith-monitor: alert canary-facts"
    assert re.search(rollback, timeline)
    assert "webhook received: [tunesmith] score:fact of fernwick-support-v3" in out

    page = (workdir / "loop-report.html").read_text(encoding="utf-8")
    assert "fernwick-support-v3" in page and "fact" in page
