"""Fork cost: workspaces of many files, 1% of their bytes changed between checkpoints, against
a full copy (`cp -r`) of the same directory measured in the same run. Embedded SQLite store.

For each size: a workspace of many files (a fifth in a few large files; half text-like, half
random bytes) is recorded at the start checkpoint; then a node changes 1% of its bytes per step
(whole small files rewritten, a region of a large file patched, a file added and one deleted).

Each measured round takes one 1% step, one `cp -r` of the workspace and one fork (the two in
alternating order), and ratios are medians of per-round ratios:

* checkpoint: time from the node's return to its checkpoint committed (workspace snapshot,
  upload of new chunks, boundary commit) / that round's `cp -r` time. Each step is a resume,
  whose restore starts watching the directory (unless WTB_WORKSPACE_WATCH=0);
* fork bytes: growth of the database (its page count, WAL included) for a fork plus its
  first checkpoint after a 1% change of its own / bytes of the full copy;
* fork + restore: `bench.fork(..., run=False)`, which writes the fork's workspace directory
  from the store / that round's `cp -r` time.

The copy and the fork each start after `sync` (nothing left to write back from before).
Nothing is deleted until every size is measured (~3.5 GB at the default sizes): ext4
without a journal (as on the VMs here) passes over each inode freed in the last minute or
more (six while its table is not yet written back) before it reuses one, looking each one
up, so every file a round deleted made every later file creation slower (up to ~1 ms each,
against ~20 us), and `cp -r` (which creates a file per file) slower with it; that flattered
the checkpoint ratio. Each round also times creating empty files where the copy goes
(``create_us``): what is left of that effect from before the run shows there.

Targets: checkpoint <= 0.1x, fork bytes <= 0.05x, fork + restore <= 1.0x. The last line is JSON.

    python bench/fork_cost.py [--sizes-mb 10 200] [--steps 3] [--rounds 7]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import report
from wtb_ray import END, Route, Workflow
from wtb_ray.config import Settings
from wtb_ray.engine.bench import Bench

WORDS = ["loss", "epoch", "step", "grad", "norm", "lr", "warmup", "token", "batch", "eval",
         "accuracy", "model", "layer", "attention", "head", "query", "key", "value", "agent",
         "tool", "call", "result", "error", "retry", "plan", "thought", "answer", "prompt"]
# Creating an empty file took 20-30 us here on a quiet file system; more means recent deletions.
SLOW_CREATE_US = 50
_marks: dict[str, float] = {}
_changed: list[int] = []


def text_pool(rng: random.Random, size: int) -> bytes:
    lines = []
    total = 0
    while total < size:
        line = " ".join(rng.choices(WORDS, k=12)) + f" {rng.random():.6f}\n"
        lines.append(line)
        total += len(line)
    return "".join(lines).encode()[:size]


def make_workspace(root: Path, size: int, seed: int) -> list[Path]:
    """~size bytes in many files under 16 directories; returns the files."""
    rng = random.Random(seed)
    pool = text_pool(rng, 8 << 20)
    files = []
    written = 0
    big_budget = size // 5
    for i in range(4):  # a few large files: "weights", "dataset shards"
        path = root / "artifacts" / f"big{i}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.randbytes(big_budget // 4))
        files.append(path)
        written += big_budget // 4
    i = 0
    while written < size:
        n = min(rng.randint(16 << 10, 192 << 10), size - written)
        path = root / f"dir{i % 16:02d}" / f"file{i:05d}.{'txt' if i % 2 else 'bin'}"
        path.parent.mkdir(parents=True, exist_ok=True)
        if i % 2:
            start = rng.randrange(len(pool) - n)
            path.write_bytes(pool[start:start + n])
        else:
            path.write_bytes(rng.randbytes(n))
        files.append(path)
        written += n
        i += 1
    return files


def mutate(state, ctx):
    """The node: one 1% change. The checkpoint's clock starts once the change's function has
    returned, its locals freed (at 200 MB freeing its list of ~1,600 paths took ~0.6 ms)."""
    update = change_one_percent(state, ctx)
    _marks["node_done"] = time.perf_counter()
    return update


def change_one_percent(state, ctx):
    """Change ~1% of the workspace's bytes: rewrite small files, patch a large one."""
    rng = random.Random(state["n"] * 7919 + len(state.get("tag", "")))
    root = ctx.workspace
    budget = state["total"] // 100
    big = root / "artifacts" / "big0.bin"
    patch = min(budget // 4, big.stat().st_size)
    with open(big, "r+b") as f:
        f.seek(rng.randrange(max(1, big.stat().st_size - patch)))
        f.write(rng.randbytes(patch))
    changed = patch
    small = sorted(p for p in root.glob("dir*/*") if p.is_file())
    while changed < budget and small:  # whole files rewritten; the last one in part
        path = small.pop(rng.randrange(len(small)))
        n = min(path.stat().st_size, budget - changed)
        with open(path, "r+b") as f:
            f.write(rng.randbytes(n))
        changed += n
    (root / f"step-{state['n']}-{state.get('tag', '')}.log").write_bytes(rng.randbytes(8 << 10))
    _changed.append(changed)
    return {"n": state["n"] + 1}


workflow = Workflow(
    "fork-cost", nodes={"mutate": mutate},
    edges={"mutate": Route(lambda s: "mutate" if s["n"] < s["until"] else END,
                           ["mutate", END])},
    entry="mutate", max_steps=10_000)


def db_bytes(path: Path) -> int:
    """The database's size (what its file would be, WAL checkpointed), read without
    checkpointing: truncating the WAL here cost the next commit ~0.3 ms, inside a timed fork."""
    conn = sqlite3.connect(path)
    try:
        pages, page_size = (conn.execute(f"PRAGMA {p}").fetchone()[0]
                            for p in ("page_count", "page_size"))
    finally:
        conn.close()
    return pages * page_size


def settle() -> None:
    """Write back what earlier steps left dirty, so that a timed copy or fork does not pay
    for the other's writeback (on a small VM that dominated either figure by turns)."""
    os.sync()


def create_us(probe: Path, n: int = 100) -> float:
    """Median time to create an empty file in a new directory ``probe``, in microseconds: a
    large part of what a copy of many files costs (the files are left: see the top)."""
    probe.mkdir()
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        os.close(os.open(probe / str(i), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def cp_time(src: Path, dst: Path) -> float:
    settle()
    t0 = time.perf_counter()
    subprocess.run(["cp", "-r", str(src), str(dst)], check=True)
    return time.perf_counter() - t0


def measure(size_mb: float, steps: int, rounds: int, tmp: Path) -> dict[str, float]:
    size = int(size_mb * (1 << 20))
    db = tmp / "wtb.db"
    bench = Bench.open(Settings(home=tmp / "home", database_url=f"sqlite:///{db}"))
    ws = tmp / "ws"
    ws.mkdir()
    make_workspace(ws, size, seed=int(size_mb))
    total = sum(p.stat().st_size for p in ws.rglob("*") if p.is_file())

    commit_times: list[float] = []
    bench.bus.subscribe(lambda e: commit_times.append(time.perf_counter() - _marks["node_done"]),
                        {"node.completed"})
    t0 = time.perf_counter()
    ex = bench.create(workflow, {"n": 0, "until": 10**9, "total": total}, workspace=str(ws),
                      break_after=["mutate"])
    initial = time.perf_counter() - t0
    for _ in range(steps):  # warm up: every step after the first sees the last one's files
        ex = bench.resume(ex.id) if ex.status.value == "paused" else bench.start(ex.id)

    def stored() -> int:
        bench.store.packer.drain()  # chunks compressed after their commit are in
        return db_bytes(db)

    checkpoints, copies, forks, fork_bytes, creates = [], [], [], [], []
    for r in range(rounds):
        ex = bench.resume(ex.id)  # one 1% step; its checkpoint is timed
        checkpoints.append(commit_times[-1])
        n = bench.state(ex.id)["n"]

        def fork(r=r, n=n, origin=ex.id):
            before = stored()
            settle()
            t0 = time.perf_counter()
            f = bench.fork(origin, run=False, patch={"until": n + 1, "tag": f"f{r}"})
            elapsed = time.perf_counter() - t0
            bench.resume(f.id)  # the fork's first checkpoint after a 1% change of its own
            fork_bytes.append(stored() - before)
            return elapsed

        def copy(r=r) -> float:
            # Probed here, before the copy's sync: not between a write and a timed checkpoint.
            creates.append(create_us(tmp / f"create-probe-{r}"))
            return cp_time(ws, tmp / f"copy-{r}")

        # Alternate who goes first: on a shared machine the second writer of 200 MB in a row
        # is often the slower one.
        if r % 2:
            forks.append(fork())
            copies.append(copy())
        else:
            copies.append(copy())
            forks.append(fork())
    bench.close()
    med = statistics.median
    return {
        "total_bytes": total, "initial_s": initial, "checkpoint_s": med(checkpoints),
        "copy_s": med(copies), "fork_restore_s": med(forks), "fork_bytes": med(fork_bytes),
        "changed_bytes": med(_changed), "create_us": med(creates),
        "ratio_checkpoint_time": med(c / k for c, k in zip(checkpoints, copies, strict=True)),
        "ratio_fork_bytes": med(fork_bytes) / total,
        "ratio_fork_restore_time": med(f / k for f, k in zip(forks, copies, strict=True)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes-mb", type=float, nargs="+", default=[10, 200])
    parser.add_argument("--steps", type=int, default=3, help="1%% steps before measuring")
    parser.add_argument("--rounds", type=int, default=7,
                        help="measured rounds: a 1%% step, a full copy, a fork")
    args = parser.parse_args()
    rows: list[tuple[str, str]] = []
    figures: dict[str, float] = {}
    made: list[Path] = []  # removed once every size is measured (see the top)
    try:
        for size_mb in args.sizes_mb:
            _changed.clear()
            made.append(tmp := Path(tempfile.mkdtemp(prefix="wtb-fork-cost-")))
            size_rows, size_figures = measured(size_mb, measure(size_mb, args.steps,
                                                                args.rounds, tmp))
            rows += size_rows
            figures.update(size_figures)
    finally:
        for tmp in made:
            shutil.rmtree(tmp, ignore_errors=True)
    report(rows + slow_creation(figures), figures)


def slow_creation(figures: dict[str, float]) -> list[tuple[str, str]]:
    """A row saying so if creating a file was slow where the copies went (see the top)."""
    slow = [key for key, us in figures.items()
            if key.startswith("create_us_") and us > SLOW_CREATE_US]
    if not slow:
        return []
    return [("note", f"creating a file took over {SLOW_CREATE_US} us ({', '.join(slow)}): "
                     "many files were deleted here in the last minutes (see the top of this "
                     "script), which slows cp -r and the fork and flatters the checkpoint "
                     "ratio; run again once nothing has been deleted for 6 minutes")]


def measured(size_mb: float, m: dict[str, float]
             ) -> tuple[list[tuple[str, str]], dict[str, float]]:
    """One size's rows to print and figures to report."""
    tag = f"{size_mb:g}mb"
    figures: dict[str, float] = {}
    rows = [
        (f"[{tag}] workspace", f"{m['total_bytes']:,} bytes; 1% step changes "
                               f"{m['changed_bytes']:,.0f} bytes"),
        (f"[{tag}] cp -r (full copy)", f"{m['copy_s'] * 1000:.1f} ms  (creating a file "
                                       f"here: {m['create_us']:.0f} us)"),
        (f"[{tag}] first checkpoint (all files)", f"{m['initial_s'] * 1000:.1f} ms"),
        (f"[{tag}] checkpoint after a 1% change",
         f"{m['checkpoint_s'] * 1000:.1f} ms  ({m['ratio_checkpoint_time']:.3f}x)"),
        (f"[{tag}] fork + first 1% checkpoint, bytes",
         f"{m['fork_bytes']:,.0f}  ({m['ratio_fork_bytes']:.4f}x)"),
        (f"[{tag}] fork + workspace restore",
         f"{m['fork_restore_s'] * 1000:.1f} ms  ({m['ratio_fork_restore_time']:.3f}x)"),
    ]
    for key in ("checkpoint_time", "fork_bytes", "fork_restore_time"):
        figures[f"ratio_{key}_{tag}"] = m[f"ratio_{key}"]
    figures[f"copy_ms_{tag}"] = m["copy_s"] * 1000
    figures[f"checkpoint_ms_{tag}"] = m["checkpoint_s"] * 1000
    figures[f"fork_restore_ms_{tag}"] = m["fork_restore_s"] * 1000
    figures[f"fork_bytes_{tag}"] = m["fork_bytes"]
    figures[f"create_us_{tag}"] = m["create_us"]
    return rows, figures


if __name__ == "__main__":
    os.environ.setdefault("WTB_AUTO_MIGRATE", "1")
    main()
