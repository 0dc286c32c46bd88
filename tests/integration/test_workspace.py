"""Workspace files follow checkpoints: rollback and fork restore them byte for byte.

Runs on embedded SQLite and on PostgreSQL through PgBouncer (``durable_url``).
"""

import hashlib
import os
import stat
from pathlib import Path

import pytest

from tests import side_effects
from wtb_ray import END, InvalidInput, Status, Workflow
from wtb_ray.config import Settings
from wtb_ray.engine.bench import Bench
from wtb_ray.storage.store import Store


def picture(root) -> dict:
    """Every path under ``root`` (but WTB's .wtb) with its type, bytes' hash and mode."""
    root = Path(root)
    seen = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            if rel == ".wtb" or rel.startswith(".wtb/"):
                continue
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                seen[rel] = ("link", os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                seen[rel] = ("dir",)
            else:
                seen[rel] = ("file", hashlib.sha256(path.read_bytes()).hexdigest(),
                             stat.S_IMODE(st.st_mode))
    return seen


def tracked(pic: dict) -> dict:
    return {k: v for k, v in pic.items() if k != "scratch.log"}


@pytest.fixture
def make_bench(durable_url, tmp_path):
    opened = []

    def make(**settings):
        bench = Bench(Store.open(durable_url, auto_migrate=True),
                      settings=Settings(home=tmp_path / "home", **settings))
        opened.append(bench)
        return bench

    yield make
    for bench in opened:
        bench.close()


def run_recording(bench, workspace, **kwargs):
    """Run ``files``, taking a picture of the workspace after each checkpoint commits."""
    pictures = {}
    bench.bus.subscribe(lambda e: pictures.__setitem__(e.checkpoint_id, picture(workspace)),
                        {"node.completed"})
    ex = bench.run(side_effects.files, {}, workspace=workspace, **kwargs)
    return ex, pictures


def test_rollback_to_each_checkpoint_restores_the_workspace_exactly(make_bench, tmp_path):
    bench = make_bench()
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "seed.txt").write_text("there before the run\n")
    start = picture(ws)
    ex, pictures = run_recording(bench, ws, workspace_ignore=["*.log"])
    assert ex.status is Status.COMPLETED
    cps = bench.checkpoints(ex.id)
    pictures[cps[0].id] = start
    assert len(pictures) == 4 and len({repr(sorted(p.items())) for p in pictures.values()}) == 4
    (ws / "stray.txt").write_text("made after the run\n")
    for ckpt in [cps[2], cps[0], cps[3], cps[1], cps[3]]:  # back, further back, forward again
        bench.rollback(ex.id, ckpt.id)
        assert tracked(picture(ws)) == tracked(pictures[ckpt.id])
        assert bench.get(ex.id).head_checkpoint_id == ckpt.id
    assert (ws / "scratch.log").read_text() == "ignored\n"  # ignored: never recorded nor touched
    assert "scratch.log" not in {f["path"] for f in bench.files(ex.id, cps[1].id)}


def test_resume_continues_from_the_head_files(make_bench, tmp_path):
    bench = make_bench()
    ws = tmp_path / "ws"
    ex, pictures = run_recording(bench, ws, break_after=["modify"])
    assert ex.status is Status.PAUSED
    head = bench.get(ex.id).head_checkpoint_id
    (ws / "notes.txt").write_text("edited while paused\n")  # not part of any checkpoint
    (ws / "junk").mkdir()
    done = bench.resume(ex.id)
    assert done.status is Status.COMPLETED
    bench.rollback(ex.id, head)
    assert picture(ws) == pictures[head]


def test_a_run_leaves_its_stat_index_for_the_next_resume_or_fork(make_bench, tmp_path,
                                                                  monkeypatch):
    """The index the run's checkpoints built is saved when the run stops: the next resume
    or fork knows every file's bytes without reading them from the store."""
    from wtb_ray.workspace import TreeReader
    from wtb_ray.workspace import index as index_module
    from wtb_ray.workspace.index import StatIndex

    bench = make_bench()
    ws = tmp_path / "ws"
    ex, _ = run_recording(bench, ws, break_after=["modify"])
    assert ex.status is Status.PAUSED
    # Read the file, as another process would.
    monkeypatch.setattr(index_module, "_parsed", index_module._Parsed(4))
    index = StatIndex.load(ws)
    on_disk = {str(p.relative_to(ws)) for p in ws.rglob("*")
               if p.is_file() and not p.is_symlink() and ".wtb" not in p.parts}
    assert on_disk and set(index.quick) == on_disk
    head = bench.store.checkpoint(bench.get(ex.id).head_checkpoint_id)
    files = {path: entry[3] for path, entry in TreeReader(bench.store).walk(
        head.workspace_tree) if entry[0] == "f"}
    assert {rel: [h for _, h in pairs] for rel, pairs in index.quick.items()} == files


def test_a_fork_gets_a_workspace_of_its_own(make_bench, tmp_path):
    bench = make_bench()
    ws = tmp_path / "ws"
    ex, pictures = run_recording(bench, ws)
    after_create = bench.checkpoints(ex.id)[1]
    origin_now = picture(ws)
    fork = bench.fork(ex.id, at=after_create.id, run=False)
    fork_ws = Path(fork.workspace["path"])
    assert fork_ws == tmp_path / "home" / "workspaces" / fork.id
    assert picture(fork_ws) == pictures[after_create.id]
    assert bench.files(fork.id) == bench.files(ex.id, after_create.id)
    (fork_ws / "notes.txt").write_text("the fork's own notes\n")
    resumed = bench.resume(fork.id)
    assert resumed.status is Status.COMPLETED
    assert picture(ws) == origin_now  # the origin's files did not move
    mine = tmp_path / "mine"
    second = bench.fork(ex.id, at=after_create.id, run=False, workspace=str(mine))
    assert picture(mine) == pictures[after_create.id] and second.workspace["path"] == str(mine)
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "keep.txt").write_text("the user's\n")
    with pytest.raises(InvalidInput, match="not empty"):
        bench.fork(ex.id, run=False, workspace=str(theirs))
    assert (theirs / "keep.txt").read_text() == "the user's\n"  # refused, nothing touched


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
    import json
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import subprocess_env, wtb_cmd

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
    import shutil
    import subprocess

    from tests.conftest import subprocess_env, wtb_cmd

    if shutil.which("chattr") is None or os.geteuid() != 0:
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
    deleted while paused): resume raises WorkspaceError naming it, and the run is paused
    again, its lease released, the reason in its history; once fixed, it resumes."""
    import shutil
    import subprocess

    from wtb_ray.domain.errors import WorkspaceError

    if shutil.which("chattr") is None or os.geteuid() != 0:
        pytest.skip("needs chattr and root to make a directory immutable")
    bench = make_bench()
    ws = tmp_path / "ws"
    ex, pictures = run_recording(bench, ws, break_after=["modify"])
    head = bench.get(ex.id).head_checkpoint_id
    (ws / "new.txt").unlink()
    subprocess.run(["chattr", "+i", str(ws)], check=True)
    try:
        with pytest.raises(WorkspaceError, match=r"new\.txt.*cannot be restored"):
            bench.resume(ex.id)
    finally:
        subprocess.run(["chattr", "-i", str(ws)], check=True)
    after = bench.get(ex.id)
    assert (after.status, after.lease_owner, after.head_checkpoint_id) == (
        Status.PAUSED, None, head)
    last = bench.history(ex.id)[-1]
    assert last.kind == "execution.paused" and "new.txt" in last.data["reason"]
    assert bench.resume(ex.id).status is Status.COMPLETED
    assert picture(ws) == pictures[bench.get(ex.id).head_checkpoint_id]


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


def test_unchanged_files_are_stored_once_across_steps_and_executions(make_bench, tmp_path):
    bench = make_bench()
    ex, _ = run_recording(bench, tmp_path / "one")
    counts = bench.store.table_counts()
    again, _ = run_recording(bench, tmp_path / "two")
    assert bench.store.table_counts()["blobs"] == counts["blobs"]  # same bytes: nothing new
    assert bench.files(again.id) == bench.files(ex.id)


def test_a_big_file_change_stores_only_the_chunks_that_changed(make_bench, tmp_path):
    bench = make_bench()
    ws = tmp_path / "ws"
    ex, _ = run_recording(bench, ws, break_after=["create"])
    before = bench.store.table_counts()["blobs"]
    wf = Workflow("patch1", nodes={"modify": _patch_one_chunk}, edges={"modify": END},
                  entry="modify")
    fork = bench.fork(ex.id, run=False, workspace=str(tmp_path / "f"))
    bench.resume(fork.id, workflow=wf)
    # one new chunk for big.bin, and new trees for data/ and the root
    assert bench.store.table_counts()["blobs"] == before + 3


def _patch_one_chunk(state, ctx):
    with open(ctx.workspace / "data" / "big.bin", "r+b") as f:
        f.seek(2_200_000)
        f.write(b"patched")


def test_a_file_over_the_limit_fails_the_node_naming_the_file(make_bench, tmp_path):
    bench = make_bench(workspace_max_file_bytes=1_000_000)
    ex = bench.run(side_effects.files, {}, workspace=tmp_path / "ws")
    assert ex.status is Status.FAILED
    assert ex.error["node"] == "create" and "data/big.bin" in ex.error["message"]
    assert "over the size limit of 1000000 bytes" in ex.error["message"]
    assert bench.checkpoints(ex.id)[-1].kind == "start"
    (tmp_path / "ws" / "data" / "big.bin").unlink()  # the partial files go back on resume
    fixed = Workflow("files", nodes={"create": lambda s: None, "modify": lambda s: None,
                                     "delete": lambda s: None},
                     edges={"create": "modify", "modify": "delete", "delete": END},
                     entry="create")
    assert bench.resume(ex.id, workflow=fixed).status is Status.COMPLETED
    assert picture(tmp_path / "ws") == {}


def test_resume_after_a_failed_node_starts_from_the_entry_files(make_bench, tmp_path):
    bench = make_bench()
    calls = []

    def flaky(state, ctx):
        calls.append(sorted(p.name for p in ctx.workspace.iterdir() if p.name != ".wtb"))
        (ctx.workspace / "half-written.tmp").write_text("partial")
        if len(calls) == 1:
            raise RuntimeError("crashed half way")
        (ctx.workspace / "result.txt").write_text("ok")

    wf = Workflow("flaky", nodes={"work": flaky}, edges={"work": END}, entry="work")
    ex = bench.run(wf, {}, workspace=True)
    assert ex.status is Status.FAILED
    assert bench.resume(ex.id).status is Status.COMPLETED
    assert calls == [[], []]  # the second attempt did not see the first one's leftovers
    assert sorted(f["path"] for f in bench.files(ex.id)) == ["half-written.tmp", "result.txt"]
