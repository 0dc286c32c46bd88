"""The cyclic garbage collector is paused while a workspace is snapshotted or restored (a
full collection it triggered took a third of a fork's restore), and runs again after."""

import gc
import threading

from wtb_ray.workspace import IgnoreRules, Workspace, collector


class Recording(IgnoreRules):
    """Rules that note, at each path a pass looks at, whether the collector could run."""

    def __init__(self) -> None:
        super().__init__(["*.tmp"])  # with a pattern, files are asked about too
        self.enabled: list[bool] = []

    def ignored(self, rel: str, name: str, is_dir: bool) -> bool:
        self.enabled.append(gc.isenabled())
        return super().ignored(rel, name, is_dir)


def test_the_collector_is_paused_during_a_snapshot_and_a_restore(store, tmp_path):
    root = tmp_path / "ws"
    for d in range(4):
        (root / f"d{d}").mkdir(parents=True)
        for i in range(20):
            (root / f"d{d}" / f"f{i}.txt").write_text(f"{d} {i}\n")
    ws, fork = Workspace(root, store), Workspace(tmp_path / "fork", store)
    ws.rules, fork.rules = Recording(), Recording()
    assert gc.isenabled()
    tree = ws.snapshot()
    (root / "d0" / "f0.txt").unlink()  # the rollback below removes f-later.txt: rules asked
    (root / "d0" / "f-later.txt").write_text("later")
    ws.snapshot_for_commit()
    ws.restore(tree)
    fork.restore(tree, sources=[str(root)])
    (root / "d1" / "new.txt").write_text("new")
    fork.restore(tree)  # nothing to write: only the removal of what the tree lacks
    assert len(ws.rules.enabled) > 80 and not any(ws.rules.enabled)
    assert gc.isenabled()
    assert fork.snapshot() == tree
    assert len(fork.rules.enabled) > 80 and not any(fork.rules.enabled)


def test_pauses_nest_across_threads_and_keep_a_disabled_collector_off():
    entered, release = threading.Event(), threading.Event()

    def other():
        with collector.paused:
            entered.set()
            release.wait(5)

    with collector.paused:
        assert not gc.isenabled()
        thread = threading.Thread(target=other)
        thread.start()
        assert entered.wait(5)
    assert not gc.isenabled()  # the other thread's pause still holds
    release.set()
    thread.join(5)
    assert gc.isenabled()

    gc.disable()
    try:
        with collector.paused:
            pass
        assert not gc.isenabled()  # it was off before: it stays off
    finally:
        gc.enable()


def test_a_restore_leaves_no_pile_of_per_file_objects_for_the_collector(store, tmp_path):
    """A restore frees its per-file lists before the collector runs again: kept till the
    call returned, the first allocation after the pause collected all of them (~1 ms in a
    fork of 200 MB) and promoted them towards a full collection."""
    files = 1500
    root = tmp_path / "ws"
    for d in range(10):
        (root / f"d{d}").mkdir(parents=True)
        for i in range(files // 10):
            (root / f"d{d}" / f"f{i}.txt").write_text(f"{d} {i}\n")
    tree = Workspace(root, store).snapshot()
    young: list[int] = []  # objects in the youngest generation as each collection starts

    def note(phase: str, info: dict) -> None:
        if phase == "start":
            young.append(len(gc.get_objects(generation=0)))

    fork = Workspace(tmp_path / "fork", store)
    gc.callbacks.append(note)
    try:
        fork.restore(tree, sources=[str(root)])
    finally:
        gc.callbacks.remove(note)
    assert sorted(p.name for p in (tmp_path / "fork" / "d3").iterdir()) == sorted(
        f"f{i}.txt" for i in range(files // 10))
    assert all(n < files for n in young), young
