"""Garbage collection under random work, on SQLite and on PostgreSQL through PgBouncer: runs
whose nodes write, rewrite and delete files, forks of them at random checkpoints (patched),
deletions and collections in any order. After each collection every remaining checkpoint
reads back whole (its state, and its files byte for byte), and nothing only deleted
executions reached is left."""

import random

import pytest

from tests.integration.test_gc import hashes, reach
from tests.unit.test_workspace_watch import full_walk
from wtb_ray import END, Workflow
from wtb_ray.config import Settings
from wtb_ray.domain.errors import HasForks
from wtb_ray.engine.bench import Bench
from wtb_ray.storage import gc
from wtb_ray.storage.store import Store
from wtb_ray.workspace import Workspace


def scribble(state, ctx):
    """Write, rewrite or delete a few files (some shared by every run, some not), by the
    run's seed and the step."""
    rng = random.Random(state["seed"] * 1000 + ctx.step)
    for _ in range(3):
        path = ctx.workspace / f"d{rng.randrange(3)}" / f"f{rng.randrange(6)}.txt"
        if path.exists() and rng.random() < 0.25:
            path.unlink()
            continue
        path.parent.mkdir(exist_ok=True)
        line = "shared by every run\n" if rng.random() < 0.3 else f"{rng.random()}\n"
        path.write_text(line * rng.randrange(1, 3000))
    return {"n": state.get("n", 0) + 1, "value": f"{rng.random()}" * rng.randrange(1, 400)}


workflow = Workflow("gcrandom", nodes={"a": scribble, "b": scribble, "c": scribble},
                    edges={"a": "b", "b": "c", "c": END}, entry="a")


@pytest.fixture
def bench(fresh_durable_url, tmp_path):
    # A database of its own: the blobs of other tests' runs would keep some of these alive.
    b = Bench(Store.open(fresh_durable_url, auto_migrate=True),
              settings=Settings(home=tmp_path))
    yield b
    b.close()


def check_whole(bench, ids, tmp_path):
    """Every checkpoint of these executions reads back: state, and files byte for byte."""
    for ex_id in ids:
        for c in bench.checkpoints(ex_id):
            bench.state(ex_id, c.id)
            if c.workspace_tree:
                where = tmp_path / f"check-{c.id}"
                if not where.exists():
                    Workspace(where, bench.store).restore(c.workspace_tree)
                assert full_walk(bench.store, where) == c.workspace_tree


@pytest.mark.parametrize("seed", [0, 1])
def test_random_runs_forks_deletions_and_collections_lose_nothing_that_remains(
        bench, tmp_path, seed):
    rng = random.Random(seed)
    alive: list[str] = []
    gone_reach: set[str] = set()  # what deleted executions reached
    collections = 0
    for step in range(24):
        op = rng.choice(["run", "run", "fork", "fork", "delete", "collect"]) if alive else "run"
        if op == "run":
            alive.append(bench.run(workflow, {"seed": rng.randrange(10**6)},
                                   workspace=True).id)
        elif op == "fork":
            origin = rng.choice(alive)
            at = rng.choice(bench.checkpoints(origin)).id
            alive.append(bench.fork(origin, at, patch={"seed": rng.randrange(10**6)}).id)
        elif op == "delete":
            victim = rng.choice(alive)
            mine = reach(bench, victim)
            try:
                bench.delete(victim)
            except HasForks:
                continue
            alive.remove(victim)
            gone_reach |= mine
        else:
            gc.collect(bench.store, grace_seconds=0)
            collections += 1
            check_whole(bench, alive, tmp_path / f"after-{step}")
    newest = alive.pop()  # nothing forked it yet: it can always go
    gone_reach |= reach(bench, newest)
    bench.delete(newest)
    gc.collect(bench.store, grace_seconds=0)
    check_whole(bench, alive, tmp_path / "at-the-end")
    kept = set().union(*(reach(bench, ex_id) for ex_id in alive))
    stored = hashes(bench.store)
    assert kept <= stored
    only_gone = gone_reach - kept
    assert only_gone and not only_gone & stored  # what only deleted executions reached: gone
