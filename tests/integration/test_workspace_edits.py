"""Hand edits to a pending, paused or completed execution's workspace are never lost without
being asked for: a start, resume or rollback over them is refused naming them, unless told to
keep them (the run goes on from them, recorded in a patch checkpoint) or to discard them (named in
the history). On embedded SQLite and on PostgreSQL through PgBouncer (``durable_url``).
"""

import pickle
import shutil
from pathlib import Path

import pytest

from tests import side_effects, workflows
from tests.integration.test_workspace import make_bench, picture, run_recording
from wtb_ray import InvalidInput, Status
from wtb_ray.domain.errors import InvalidTransition, StorageError, WorkspaceEdited

__all__ = ["make_bench"]  # the fixture, shared with test_workspace.py


def paused_after_modify(bench, ws, **kwargs):
    ex, pictures = run_recording(bench, ws, break_after=["modify"], **kwargs)
    assert ex.status is Status.PAUSED
    return ex, pictures


def edit(ws):
    """A file modified, one added, one removed: what a person might do while it waits."""
    with open(ws / "notes.txt", "a") as f:
        f.write("a line typed by hand\n")
    (ws / "extra.txt").write_text("added by hand\n")
    (ws / "data" / "small.json").unlink()


EDITS = ["removed data/small.json", "added extra.txt", "modified notes.txt"]  # in path order


def test_a_resume_over_hand_edits_is_refused_naming_them_and_nothing_is_touched(make_bench,
                                                                             tmp_path):
    bench = make_bench()
    ws = tmp_path / "ws"
    ex, _ = paused_after_modify(bench, ws)
    edit(ws)
    edited = picture(ws)
    before = (bench.get(ex.id), len(bench.history(ex.id)), bench.store.table_counts())
    with pytest.raises(WorkspaceEdited) as caught:
        bench.resume(ex.id)
    err = caught.value
    assert err.changes == EDITS and err.total == 3
    assert err.checkpoint_id == before[0].head_checkpoint_id
    assert str(ws) in str(err) and "--keep-edits" in str(err) and "--discard-edits" in str(err)
    assert isinstance(err, InvalidTransition)  # 409 over HTTP
    assert str(pickle.loads(pickle.dumps(err))) == str(err)  # it crosses Ray intact
    # Nothing moved: the files, the execution, its history, the stored blobs.
    assert picture(ws) == edited
    after = bench.get(ex.id)
    assert (after.status, after.version, after.head_checkpoint_id, after.lease_owner) == (
        Status.PAUSED, before[0].version, before[0].head_checkpoint_id, None)
    assert len(bench.history(ex.id)) == before[1]
    assert bench.store.table_counts() == before[2]


def test_keep_edits_goes_on_from_them_recorded_in_a_patch_checkpoint(make_bench, tmp_path):
    bench = make_bench()
    ws = tmp_path / "ws"
    ex, _ = paused_after_modify(bench, ws)
    head = bench.get(ex.id).head_checkpoint_id
    edit(ws)
    edited = picture(ws)
    done = bench.resume(ex.id, workspace_edits="keep")
    assert done.status is Status.COMPLETED
    assert (ws / "extra.txt").read_text() == "added by hand\n"  # the last node ran on them
    kept = [c for c in bench.checkpoints(ex.id) if c.parent_id == head]
    assert [(c.kind, c.step) for c in kept] == [("patch", bench.store.checkpoint(head).step)]
    resumed = [e for e in bench.history(ex.id) if e.kind == "execution.resumed"][-1]
    assert resumed.data["kept_edits"] == EDITS and resumed.data["edits"] == 3
    bench.rollback(ex.id, kept[0].id)  # the kept files, byte for byte
    assert picture(ws) == edited
    # Once recorded they are no longer hand edits: resuming asks nothing.
    assert bench.resume(ex.id).status is Status.COMPLETED


def test_discard_edits_puts_back_the_head_files_and_names_them_in_the_history(make_bench,
                                                                              tmp_path):
    bench = make_bench()
    ws = tmp_path / "ws"
    ex, pictures = paused_after_modify(bench, ws)
    head = bench.get(ex.id).head_checkpoint_id
    edit(ws)
    done = bench.resume(ex.id, workspace_edits="discard")
    assert done.status is Status.COMPLETED
    assert not (ws / "extra.txt").exists()
    resumed = [e for e in bench.history(ex.id) if e.kind == "execution.resumed"][-1]
    assert resumed.data["discarded_edits"] == EDITS and resumed.data["edits"] == 3
    assert all(c.kind != "patch" for c in bench.checkpoints(ex.id))
    bench.rollback(ex.id, head)
    assert picture(ws) == pictures[head]


def test_a_rollback_over_hand_edits_is_refused_unless_they_are_discarded(make_bench, tmp_path):
    bench = make_bench()
    ws = tmp_path / "ws"
    ex, pictures = paused_after_modify(bench, ws)
    first = bench.checkpoints(ex.id)[1]  # after create
    edit(ws)
    edited = picture(ws)
    with pytest.raises(WorkspaceEdited) as caught:
        bench.rollback(ex.id, first.id)
    assert "--keep-edits" not in str(caught.value) and "--discard-edits" in str(caught.value)
    assert picture(ws) == edited and bench.get(ex.id).status is Status.PAUSED
    with pytest.raises(InvalidInput, match="workspace_edits for a rollback is one of 'discard'"):
        bench.rollback(ex.id, first.id, workspace_edits="keep")
    rolled = bench.rollback(ex.id, first.id, workspace_edits="discard")
    assert rolled.head_checkpoint_id == first.id
    assert picture(ws) == pictures[first.id]
    event = bench.history(ex.id)[-1]
    assert event.kind == "execution.rolled_back" and event.data["discarded_edits"] == EDITS


def test_a_missing_workspace_is_brought_back_without_asking(make_bench, tmp_path):
    """Nothing there can be lost (removed whole, or on another machine): the resume makes
    it again; a file removed inside one is an edit."""
    bench = make_bench()
    ws = tmp_path / "ws"
    ex, pictures = paused_after_modify(bench, ws)
    head = bench.get(ex.id).head_checkpoint_id
    (ws / "new.txt").unlink()
    with pytest.raises(WorkspaceEdited, match=r"\(removed new\.txt\)"):
        bench.resume(ex.id)
    shutil.rmtree(ws)
    assert bench.resume(ex.id).status is Status.COMPLETED
    bench.rollback(ex.id, head)
    assert picture(ws) == pictures[head]


def test_a_fork_left_paused_takes_edits_before_it_runs(make_bench, tmp_path):
    """Fork, adjust the fork's files by hand, go on from them: the origin is untouched."""
    bench = make_bench()
    ws = tmp_path / "ws"
    ex, _ = paused_after_modify(bench, ws)
    origin = picture(ws)
    fork = bench.fork(ex.id, run=False)
    fork_ws = Path(fork.workspace["path"])
    (fork_ws / "extra.txt").write_text("only in the fork\n")
    with pytest.raises(WorkspaceEdited, match=r"\(added extra\.txt\)"):
        bench.resume(fork.id)
    assert bench.resume(fork.id, workspace_edits="keep").status is Status.COMPLETED
    assert (fork_ws / "extra.txt").read_text() == "only in the fork\n"
    assert picture(ws) == origin and bench.get(ex.id).status is Status.PAUSED


def test_a_created_run_edited_before_its_start_is_refused_unless_told(make_bench, tmp_path):
    """``create`` records the directory as it is; a change made before ``start`` is a hand
    edit like any other: refused, then kept (recorded, the run goes on from it) or discarded
    (the created files put back)."""
    bench = make_bench()
    runs = {}
    for choice in ("keep", "discard"):
        ws = tmp_path / choice
        ws.mkdir()
        (ws / "brief.txt").write_text("as given\n")
        ex = bench.create(side_effects.files, {}, workspace=ws)
        assert ex.status is Status.PENDING
        (ws / "brief.txt").write_text("changed by hand\n")
        with pytest.raises(WorkspaceEdited) as caught:
            bench.start(ex.id)
        assert caught.value.changes == ["modified brief.txt"]
        assert 'workspace_edits="keep"' in str(caught.value)
        assert "--keep-edits" not in str(caught.value)  # no CLI or HTTP start to name
        assert (ws / "brief.txt").read_text() == "changed by hand\n"
        assert bench.get(ex.id).status is Status.PENDING
        assert bench.start(ex.id, workspace_edits=choice).status is Status.COMPLETED
        runs[choice] = (ex, ws)
    ex, ws = runs["keep"]
    assert (ws / "brief.txt").read_text() == "changed by hand\n"
    started = [e for e in bench.history(ex.id) if e.kind == "execution.started"][-1]
    assert started.data["kept_edits"] == ["modified brief.txt"]
    first = min(c.id for c in bench.checkpoints(ex.id))
    assert [c.kind for c in bench.checkpoints(ex.id) if c.parent_id == first] == ["patch"]
    ex, ws = runs["discard"]
    assert (ws / "brief.txt").read_text() == "as given\n"
    started = [e for e in bench.history(ex.id) if e.kind == "execution.started"][-1]
    assert started.data["discarded_edits"] == ["modified brief.txt"]


def test_a_checkpoint_is_compared_with_its_directory_as_it_is_now(make_bench, tmp_path):
    """`wtb diff CHECKPOINT`: what changed in the directory since, text files as unified
    diffs of their bytes on disk, and nothing written to the store."""
    bench = make_bench()
    ws = tmp_path / "ws"
    ex, _ = paused_after_modify(bench, ws)
    head = bench.get(ex.id).head_checkpoint_id
    nothing = bench.diff_workspace(head)
    assert nothing["files"] == {"added": [], "removed": [], "changed": []}
    edit(ws)
    before = bench.store.table_counts()
    result = bench.diff_workspace(head)
    assert (result["a"], result["b"], result["state"], result["workspace"]) == (
        head, None, None, str(ws))
    assert [f["path"] for f in result["files"]["added"]] == ["extra.txt"]
    assert [f["path"] for f in result["files"]["removed"]] == ["data/small.json"]
    (notes,) = result["files"]["changed"]
    assert notes["path"] == "notes.txt" and (notes["a"]["size"], notes["b"]["size"]) == (
        len("line 1\nline 2\nline 3\n"), len("line 1\nline 2\nline 3\na line typed by hand\n"))
    assert notes["diff"].startswith(f"--- checkpoint-{head}/notes.txt\n+++ workspace/notes.txt\n")
    assert notes["diff"].endswith(" line 3\n+a line typed by hand\n")
    assert bench.store.table_counts() == before
    # Against an earlier checkpoint: everything the last node did as well.
    first = min(c.id for c in bench.checkpoints(ex.id))
    added = {f["path"] for f in bench.diff_workspace(first)["files"]["added"]}
    assert {"extra.txt", "new.txt", "notes.txt", "data/big.bin"} <= added
    shutil.rmtree(ws)
    with pytest.raises(InvalidInput, match=f"workspace '{ws}' of execution {ex.id} is not on "
                                           "this machine"):
        bench.diff_workspace(head)
    plain = bench.run(workflows.chain, {"seed": 1})
    with pytest.raises(InvalidInput, match=f"execution {plain.id} has no workspace"):
        bench.diff_workspace(plain.head_checkpoint_id)


def test_resuming_a_paused_run_whose_files_are_as_recorded_asks_nothing(make_bench, tmp_path):
    bench = make_bench()
    ws = tmp_path / "ws"
    ex, _ = paused_after_modify(bench, ws, workspace_ignore=["*.log"])
    (ws / "scratch.log").write_text("ignored paths are never edits\n")
    done = bench.resume(ex.id)
    assert done.status is Status.COMPLETED
    resumed = [e for e in bench.history(ex.id) if e.kind == "execution.resumed"][-1]
    assert "edits" not in resumed.data


def test_an_unknown_choice_is_refused_naming_it(make_bench, tmp_path):
    bench = make_bench()
    ex, _ = paused_after_modify(bench, tmp_path / "ws")
    with pytest.raises(InvalidInput, match="workspace_edits for a resume is one of 'keep', "
                                           "'discard', not 'merge'"):
        bench.resume(ex.id, workspace_edits="merge")



def test_a_completed_run_edited_by_hand_is_not_rolled_back_over_them(make_bench, tmp_path):
    """Fixing a finished run's output by hand, then rolling back to run a node again."""
    bench = make_bench()
    ws = tmp_path / "ws"
    ex, pictures = run_recording(bench, ws)
    assert ex.status is Status.COMPLETED
    after_create = bench.checkpoints(ex.id)[1]
    (ws / "run.sh").write_text("#!/bin/sh\necho fixed by hand\n")
    with pytest.raises(WorkspaceEdited, match=r"\(modified run\.sh\); discard them"):
        bench.rollback(ex.id, after_create.id)
    assert bench.get(ex.id).status is Status.COMPLETED
    assert (ws / "run.sh").read_text() == "#!/bin/sh\necho fixed by hand\n"
    bench.rollback(ex.id, after_create.id, workspace_edits="discard")
    assert picture(ws) == pictures[after_create.id]
    assert bench.history(ex.id)[-1].data["discarded_edits"] == ["modified run.sh"]


def test_a_rollback_whose_head_could_not_be_moved_is_finished_without_asking(make_bench,
                                                                            tmp_path):
    """The files were put back but the commit moving the head failed: what the directory
    holds then is the rollback's doing, not hand edits; running it again finishes it."""
    bench = make_bench()
    ws = tmp_path / "ws"
    ex, pictures = paused_after_modify(bench, ws)
    head = bench.get(ex.id).head_checkpoint_id
    first = bench.checkpoints(ex.id)[1]
    real = bench.store.commit

    def down(change):
        raise StorageError("the database went away")

    bench.store.commit = down
    try:
        with pytest.raises(StorageError):
            bench.rollback(ex.id, first.id)
    finally:
        bench.store.commit = real
    assert picture(ws) == pictures[first.id] and bench.get(ex.id).head_checkpoint_id == head
    rolled = bench.rollback(ex.id, first.id)
    assert rolled.head_checkpoint_id == first.id and "edits" not in bench.history(ex.id)[-1].data
    assert picture(ws) == pictures[first.id] and not (ws / ".wtb" / "restoring").exists()
    bench.resume(ex.id)  # and the head's files are no edits either
