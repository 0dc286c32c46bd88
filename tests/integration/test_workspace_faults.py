"""Workspace files when things go wrong, done for real: a fork process killed before its
commit, a fork the database refuses, a directory renamed into place that something took,
files the file system will not let a rollback or resume write, nor a delete remove
(``chattr +i``), and a workspace path that cannot be made.

Runs on embedded SQLite and on PostgreSQL through PgBouncer (``durable_url``).
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests import side_effects
from tests.conftest import subprocess_env, wtb_cmd
from tests.integration.test_workspace import make_bench, picture, run_recording, tracked
from wtb_ray import InvalidInput, Status
from wtb_ray.config import Settings
from wtb_ray.domain.errors import WorkspaceError
from wtb_ray.engine.bench import Bench

__all__ = ["make_bench"]  # the fixture, shared with test_workspace.py


def immutable_supported() -> bool:
    return shutil.which("chattr") is not None and os.geteuid() == 0


def test_a_fork_that_cannot_commit_leaves_no_directory_behind(tmp_path):
    """The database refuses the fork's commit (another writer holds SQLite's lock past the
    busy timeout): no fork exists, and neither do the files its restore wrote."""
    import sqlite3

    db = tmp_path / "wtb.db"
    bench = Bench.open(Settings(home=tmp_path / "home", database_url=f"sqlite:///{db}",
                                sqlite_busy_timeout_ms=300, auto_migrate=True))
    try:
        ex, _ = run_recording(bench, tmp_path / "ws")
        before = {e.id for e in bench.store.executions()}
        mine = tmp_path / "mine"
        mine.mkdir()  # an empty directory the user named: kept, and left empty
        holder = sqlite3.connect(db, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        try:
            for target in (None, str(mine)):
                with pytest.raises(sqlite3.OperationalError, match="locked"):
                    bench.fork(ex.id, run=False, workspace=target)
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert {e.id for e in bench.store.executions()} == before
        assert not any((tmp_path / "home" / "workspaces").glob("*"))
        assert mine.is_dir() and [p.name for p in mine.iterdir()] in ([], [".wtb"])
    finally:
        bench.close()


# A fork process that has restored its files and stops just before its commit, until killed.
FORK_THEN_HANG = """
import pathlib, sys, time
from wtb_ray.engine.bench import Bench

bench = Bench.open()
real = bench.store.commit

def hang(change):
    if change.new_execution is not None:
        pathlib.Path(sys.argv[2]).write_text(change.execution_id)
        time.sleep(600)
    return real(change)

bench.store.commit = hang
bench.fork(sys.argv[1], run=False)
"""


def test_a_fork_killed_before_its_commit_leaves_only_a_directory_gc_removes(
        make_bench, durable_url, tmp_path):
    """SIGKILL a fork process after its restore wrote every file, before its commit: no fork
    exists, no directory looks like a workspace, and `wtb gc` removes the leftovers once
    they are older than the grace period. The next fork is unaffected."""
    bench = make_bench()
    ws = tmp_path / "ws"
    ex, pictures = run_recording(bench, ws)
    head = bench.get(ex.id).head_checkpoint_id
    origin_now = picture(ws)
    before = {e.id for e in bench.store.executions()}
    env = subprocess_env(durable_url, WTB_HOME=str(tmp_path / "home"))
    marker = tmp_path / "restored"
    child = subprocess.Popen([sys.executable, "-c", FORK_THEN_HANG, ex.id, str(marker)],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not marker.exists():
        assert child.poll() is None, child.communicate()
        assert time.time() < deadline, "the fork never reached its commit"
        time.sleep(0.02)
    os.kill(child.pid, signal.SIGKILL)
    child.wait(30)

    fork_id = marker.read_text()
    homes = tmp_path / "home" / "workspaces"
    staging = homes / f".forking-{fork_id}"
    assert [p.name for p in homes.iterdir()] == [staging.name]
    assert picture(staging) == pictures[head]  # what the restore wrote, under its own name
    assert {e.id for e in bench.store.executions()} == before
    assert picture(ws) == origin_now

    def gc(*args):
        done = subprocess.run(wtb_cmd("gc", *args, "--json"), capture_output=True, text=True,
                              env=env)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)["unfinished_fork_dirs"]

    assert gc() == [] and staging.is_dir()  # younger than the default grace: kept
    assert gc("--grace", "0", "--dry-run") == [str(staging)] and staging.is_dir()
    assert gc("--grace", "0") == [str(staging)] and not staging.exists()

    fork = bench.fork(ex.id, run=False)
    assert [p.name for p in homes.iterdir()] == [fork.id]
    assert picture(homes / fork.id) == pictures[head]


def test_a_fork_whose_directory_cannot_be_renamed_into_place_is_copied_there(
        make_bench, tmp_path, caplog):
    """Something made the fork's directory between its restore and its commit: the fork's
    files are copied there from the staging directory (what was there goes), which goes."""
    bench = make_bench()
    ex, pictures = run_recording(bench, tmp_path / "ws")
    head = bench.get(ex.id).head_checkpoint_id
    real = bench.store.commit

    def commit_then_squat(change):
        committed = real(change)
        if change.new_execution is not None:
            squat = Path(change.new_execution.workspace["path"])
            (squat / "deep").mkdir(parents=True)
            (squat / "deep" / "stray.txt").write_text("not the fork's\n")
        return committed

    bench.store.commit = commit_then_squat
    fork = bench.fork(ex.id, run=False)
    homes = tmp_path / "home" / "workspaces"
    assert [p.name for p in homes.iterdir()] == [fork.id]
    assert picture(homes / fork.id) == pictures[head]
    assert "copying the fork's files there instead" in caplog.text
    bench.store.commit = real
    assert bench.resume(fork.id).status is Status.COMPLETED


def test_a_restore_the_file_system_refuses_is_one_line_naming_the_file_and_loses_nothing(
        make_bench, durable_url, tmp_path):
    """The workspace's data/ directory is made immutable (chattr +i: even root cannot create
    files in it), so a rollback cannot bring back data/big.bin: `wtb rollback` says so in one
    line naming the file (exit 2), the head stays, and once the directory is writable again
    the same rollback restores the checkpoint's files exactly."""


    if not immutable_supported():
        pytest.skip("needs chattr and root to make a directory immutable")
    bench = make_bench()
    ws = tmp_path / "ws"
    ex, pictures = run_recording(bench, ws)
    after_modify = bench.checkpoints(ex.id)[2]
    head = bench.get(ex.id).head_checkpoint_id
    env = subprocess_env(durable_url, WTB_HOME=str(tmp_path / "home"))
    rollback = wtb_cmd("rollback", ex.id, "--to", str(after_modify.id))
    subprocess.run(["chattr", "+i", str(ws / "data")], check=True)
    try:
        refused = subprocess.run(rollback, capture_output=True, text=True, env=env)
    finally:
        subprocess.run(["chattr", "-i", str(ws / "data")], check=True)
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.strip().splitlines() == [
        f"error: workspace file {str(ws / 'data' / 'big.bin')!r}: cannot be restored: "
        "Operation not permitted"]
    after = bench.get(ex.id)
    assert after.head_checkpoint_id == head and after.status is Status.COMPLETED
    done = subprocess.run(rollback, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert bench.get(ex.id).head_checkpoint_id == after_modify.id
    assert tracked(picture(ws)) == tracked(pictures[after_modify.id])


def test_a_resume_whose_files_cannot_be_restored_leaves_the_run_paused(make_bench, tmp_path):
    """The head's files cannot be brought back (the workspace is immutable and one of them was
    deleted while paused): resume, told to discard that edit, raises WorkspaceError naming
    it, and the run is paused again, its lease released, the reason in its history; once
    fixed, it resumes."""


    if not immutable_supported():
        pytest.skip("needs chattr and root to make a directory immutable")
    bench = make_bench()
    ws = tmp_path / "ws"
    ex, pictures = run_recording(bench, ws, break_after=["modify"])
    head = bench.get(ex.id).head_checkpoint_id
    (ws / "new.txt").unlink()
    subprocess.run(["chattr", "+i", str(ws)], check=True)
    try:
        with pytest.raises(WorkspaceError, match=r"new\.txt.*cannot be restored"):
            bench.resume(ex.id, workspace_edits="discard")
    finally:
        subprocess.run(["chattr", "-i", str(ws)], check=True)
    after = bench.get(ex.id)
    assert (after.status, after.lease_owner, after.head_checkpoint_id) == (
        Status.PAUSED, None, head)
    last = bench.history(ex.id)[-1]
    assert last.kind == "execution.paused" and "new.txt" in last.data["reason"]
    # What the failed restore left is its own doing, not edits: the resume finishes it.
    assert (ws / ".wtb" / "restoring").exists()
    assert bench.resume(ex.id).status is Status.COMPLETED
    assert picture(ws) == pictures[bench.get(ex.id).head_checkpoint_id]
    assert not (ws / ".wtb" / "restoring").exists()


def test_a_workspace_that_cannot_be_made_is_refused_before_anything_is_written(
        make_bench, tmp_path):
    bench = make_bench()
    ex, _ = run_recording(bench, tmp_path / "ws")
    (tmp_path / "a-file").write_text("not a directory\n")
    before = {e.id for e in bench.store.executions()}
    for make in (lambda: bench.fork(ex.id, run=False, workspace=str(tmp_path / "a-file" / "x")),
                 lambda: bench.create(side_effects.files, {},
                                      workspace=str(tmp_path / "a-file" / "y" / "z"))):
        with pytest.raises(InvalidInput, match="is not a directory"):
            make()
    assert {e.id for e in bench.store.executions()} == before


def test_what_deleting_an_execution_cannot_remove_of_its_directory_gc_removes_later(
        make_bench, durable_url, tmp_path):
    """A file in the execution's WTB-made directory cannot be unlinked (its directory is
    immutable): `wtb delete` still deletes the execution, says in a warning what is left and
    why, and leaves it under a name no execution has; `wtb gc` reports it again while the file
    system refuses, and removes it once it lets go."""
    if not immutable_supported():
        pytest.skip("needs chattr and root to make a directory immutable")
    bench = make_bench()
    ex = bench.run(side_effects.files, {}, workspace=True)
    homes = tmp_path / "home" / "workspaces"
    locked = homes / ex.id / "data"
    assert (locked / "small.json").is_file()
    env = subprocess_env(durable_url, WTB_HOME=str(tmp_path / "home"))
    left = homes / f".deleted-{ex.id}"

    def wtb(*args):
        done = subprocess.run(wtb_cmd(*args, "--json"), capture_output=True, text=True, env=env)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout), done.stderr

    subprocess.run(["chattr", "+i", str(locked)], check=True)
    try:
        deleted, warning = wtb("delete", ex.id)
        assert deleted["deleted"] == ex.id
        problem = f"{left / 'data' / 'small.json'}: Operation not permitted"
        assert deleted["workspace_not_removed"] == problem
        assert problem in warning and "wtb gc" in warning
        assert ex.id not in {e.id for e in bench.store.executions()}
        assert [p.name for p in homes.iterdir()] == [left.name]
        assert sorted(p.name for p in (left / "data").iterdir()) == ["small.json"]

        refused, warning = wtb("gc", "--grace", "0")
        assert refused["deleted_workspace_dirs"] == [str(left)]
        assert refused["not_removed"] == [problem] and problem in warning
        assert left.is_dir()
    finally:
        subprocess.run(["chattr", "-i", str(left / "data")], check=False)
        subprocess.run(["chattr", "-i", str(locked)], check=False)
    dry, _ = wtb("gc", "--dry-run")
    assert dry["deleted_workspace_dirs"] == [str(left)] and left.is_dir()
    done, warning = wtb("gc")  # any age: its execution is gone
    assert done["deleted_workspace_dirs"] == [str(left)] and done["not_removed"] == []
    assert not warning and list(homes.iterdir()) == []
