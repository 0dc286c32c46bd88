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


@pytest.mark.parametrize("watch", [True, False], ids=["watched", "unwatched"])
def test_rollback_to_each_checkpoint_restores_the_workspace_exactly(make_bench, tmp_path,
                                                                     watch):
    """Watched (each checkpoint examines what inotify says changed) or not (each examines
    every file), the checkpoints hold the same files."""
    bench = make_bench(workspace_watch=watch)
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "seed.txt").write_text("there before the run\n")
    start = picture(ws)
    ex, pictures = run_recording(bench, ws, workspace_ignore=["*.log"])
    assert ex.status is Status.COMPLETED
    cps = bench.checkpoints(ex.id)
    pictures[cps[0].id] = start
    assert len(pictures) == 4 and len({repr(sorted(p.items())) for p in pictures.values()}) == 4
    (ws / "stray.txt").write_text("made after the run\n")  # a hand edit: dropped when told
    for ckpt in [cps[2], cps[0], cps[3], cps[1], cps[3]]:  # back, further back, forward again
        bench.rollback(ex.id, ckpt.id, workspace_edits="discard" if ckpt is cps[2] else None)
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
    done = bench.resume(ex.id, workspace_edits="discard")  # else refused: test_workspace_edits
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
    resumed = bench.resume(fork.id, workspace_edits="keep")
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
