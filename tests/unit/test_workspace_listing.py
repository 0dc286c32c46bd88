"""Directories a snapshot does not list again: one whose inode, mtime and ctime are what the
last snapshot (or restore) saw holds the names it recorded. Whatever changes a directory's
names is still seen: a file made, removed or renamed, even with the mtime put back."""

import os

import pytest

from tests.unit.aging import OLD, age
from wtb_ray.workspace import Workspace


@pytest.fixture
def listed(monkeypatch):
    """The directories listed (relative to the workspace) since the last clear."""
    calls = []
    real = os.scandir

    def counting(path):
        calls.append(str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", counting)
    return calls


def rel(root, calls):
    return sorted(os.path.relpath(c, root) for c in calls)


def make_tree(root):
    for name in ("a/x.txt", "b/y.txt", "c/d/z.txt"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(f"{name}\n")
    return [root / "a" / "x.txt", root / "b" / "y.txt", root / "c" / "d" / "z.txt"]


def age_all(root, *paths):
    """Every directory and the given files made old; age() writes its clock probe two levels
    up from the first path, so that must be a directory right under the workspace."""
    age(root / "a", root / "b", root / "c", root / "c" / "d", root, *paths)


def files_of(store, tree, where):
    Workspace(where, store).restore(tree)
    return {str(p.relative_to(where)): p.read_text() for p in sorted(where.rglob("*"))
            if p.is_file() and ".wtb" not in p.parts}


def test_a_snapshot_lists_only_the_directories_whose_names_changed(store, tmp_path, listed):
    root = tmp_path / "ws"
    files = make_tree(root)
    ws = Workspace(root, store)
    ws.snapshot()  # makes WTB's .wtb: the root changes
    age_all(root, *files)
    ws.snapshot()  # every directory is old enough now to be trusted next time
    listed.clear()
    first = ws.snapshot()
    assert rel(root, listed) == []

    (root / "b" / "y.txt").write_text("changed in place\n")  # names unchanged
    os.utime(root / "b" / "y.txt", ns=(OLD, OLD))  # mtime put back: the ctime still moves
    second = ws.snapshot()
    assert rel(root, listed) == [] and second != first
    assert files_of(store, second, tmp_path / "check2")["b/y.txt"] == "changed in place\n"

    (root / "c" / "d" / "new.txt").write_text("new\n")
    os.rename(root / "a" / "x.txt", root / "a" / "renamed.txt")
    listed.clear()
    third = ws.snapshot()
    assert rel(root, listed) == ["a", "c/d"]
    got = files_of(store, third, tmp_path / "check3")
    assert got["c/d/new.txt"] == "new\n" and "a/renamed.txt" in got and "a/x.txt" not in got


def test_a_new_file_is_seen_even_with_the_directory_mtime_put_back(store, tmp_path, listed):
    """Only the ctime (which no program can set) tells: tar and rsync put mtimes back."""
    root = tmp_path / "ws"
    files = make_tree(root)
    ws = Workspace(root, store)
    ws.snapshot()
    age_all(root, *files)
    ws.snapshot()
    assert "b/" in ws._dir_keys  # the next snapshot would trust it if nothing changed
    before = os.lstat(root / "b")
    (root / "b" / "sneaky.txt").write_text("here\n")
    os.utime(root / "b", ns=(OLD, OLD))
    after = os.lstat(root / "b")
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    listed.clear()
    tree = ws.snapshot()
    assert rel(root, listed) == ["b"]
    assert files_of(store, tree, tmp_path / "check")["b/sneaky.txt"] == "here\n"


def test_after_a_restore_only_the_directories_it_changed_are_listed_again(store, tmp_path,
                                                                          listed):
    root = tmp_path / "ws"
    files = make_tree(root)
    ws = Workspace(root, store)
    target = ws.snapshot()
    (root / "a" / "later.txt").write_text("made after the checkpoint\n")
    age_all(root, *files, root / "a" / "later.txt")
    ws.restore(target)  # removes a/later.txt: a changes, nothing else does
    listed.clear()
    assert ws.snapshot() == target
    assert rel(root, listed) == ["a"]
    age(root / "a")  # its times older than the next clock: trusted once listed again
    listed.clear()
    assert ws.snapshot() == target
    assert rel(root, listed) == ["a"]
    listed.clear()
    assert ws.snapshot() == target
    assert rel(root, listed) == []
