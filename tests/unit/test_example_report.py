"""The bundled workflow with files (wtb_ray.examples.report): what each checkpoint holds, a
rollback and a fork with its variant, and the error without a workspace."""

import json
from pathlib import Path

from wtb_ray.examples.report import workflow


def test_each_checkpoint_holds_the_files_its_node_left(bench, tmp_path):
    ws = tmp_path / "ws"
    ex = bench.run(workflow, {"topic": "rings"}, workspace=str(ws))
    assert ex.status.value == "completed"
    assert bench.state(ex.id)["sources"] == ["saturn"]
    start, gathered, drafted, reviewed = bench.checkpoints(ex.id)
    paths = {c.id: [f["path"] for f in bench.files(ex.id, c.id)]
             for c in (start, gathered, drafted, reviewed)}
    assert paths[start.id] == []
    assert paths[gathered.id] == ["sources", "sources/saturn.txt"]
    assert paths[drafted.id] == ["report.md", "sources", "sources/saturn.txt"]
    assert paths[reviewed.id] == ["report.md", "review.json"]
    assert sorted(p.name for p in ws.iterdir() if p.name != ".wtb") == ["report.md",
                                                                        "review.json"]
    review = json.loads((ws / "review.json").read_text())
    assert review == {"words": bench.state(ex.id)["words"], "sources": ["saturn"]}

    diff = bench.diff(drafted.id, reviewed.id)
    assert [f["path"] for f in diff["files"]["removed"]] == ["sources/saturn.txt"]
    assert "+_1 source, " in diff["files"]["changed"][0]["diff"]

    bench.rollback(ex.id, "review")  # the draft is back, with its sources
    assert (ws / "sources" / "saturn.txt").read_text().startswith("Saturn\n\n")
    assert not (ws / "review.json").exists()
    fork = bench.fork(ex.id, at=gathered.id, variants={"draft": "detailed"})
    assert fork.status.value == "completed"
    fork_ws = Path(fork.workspace["path"])
    assert fork_ws != ws and [f["path"] for f in bench.files(fork.id)] == ["report.md",
                                                                           "review.json"]
    # The whole text of each source, not its first sentence.
    assert "bright rings made of ice and rock" in (fork_ws / "report.md").read_text()
    assert bench.state(fork.id)["words"] > review["words"]


def test_without_a_workspace_the_first_node_says_what_to_do(bench):
    ex = bench.run(workflow, {"topic": "moon"})
    assert ex.status.value == "failed"
    assert "run it with a workspace" in ex.error["message"]
