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
