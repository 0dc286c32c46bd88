"""A diff of many changed text files: unified diffs while the text budget lasts, read a batch
of files per transaction; the files past the budget are listed, marked and counted."""

import pytest

from wtb_ray import END, Workflow
from wtb_ray.cli.files import _print_diff
from wtb_ray.engine import diff as diffs

FILES = 12
LINES = 40
SIZE = LINES * 18  # bytes in each text file (18 a line)


def rewrite(state, ctx):
    """Rewrite every text file (its last line names the step), and a file too large for a
    text diff (never read for one)."""
    for i in range(FILES):
        lines = [f"file {i:02d} line {j:04d}\n" for j in range(LINES - 1)]
        (ctx.workspace / f"f{i:02d}.txt").write_text("".join(lines) + f"step {state['n']:012d}\n")
    big = bytes([0, state["n"]]) * (diffs.TEXT_DIFF_MAX // 2 + 1)
    (ctx.workspace / "blob.bin").write_bytes(big)
    return {"n": state["n"] + 1}


workflow = Workflow("rewrite", nodes={"a": rewrite, "b": rewrite}, edges={"a": "b", "b": END},
                    entry="a")


@pytest.fixture
def two_checkpoints(bench):
    ex = bench.start(bench.create(workflow, {"n": 0}, workspace=True).id)
    after_a, after_b = bench.checkpoints(ex.id)[-2:]
    return bench, after_a, after_b


def test_every_text_file_gets_its_diff_across_batches(two_checkpoints, monkeypatch):
    bench, a, b = two_checkpoints
    monkeypatch.setattr(diffs, "FETCH_BYTES", 4 * SIZE)  # two files (both sides) at a time
    reads = []
    real_run = bench.store.run

    def counting(fn, *args, **kw):  # the store's transactions, by what they run
        reads.append(fn.__name__)
        return real_run(fn, *args, **kw)

    monkeypatch.setattr(bench.store, "run", counting)
    result = diffs.diff(bench.store, a, b)
    changed = {c["path"]: c for c in result["files"]["changed"]}
    assert set(changed) == {f"f{i:02d}.txt" for i in range(FILES)} | {"blob.bin"}
    for i in range(FILES):
        assert changed[f"f{i:02d}.txt"]["diff"].endswith("-step 000000000000\n"
                                                          "+step 000000000001\n")
    assert changed["blob.bin"]["diff"] is None and "diff_left_out" not in changed["blob.bin"]
    assert result["text_diffs_left_out"] == 0
    assert reads.count("fetch") == FILES // 2  # not one transaction a file


def test_past_the_budget_files_are_listed_marked_and_counted(two_checkpoints, capsys):
    bench, a, b = two_checkpoints
    result = diffs.diff(bench.store, a, b, text_budget=3 * 2 * SIZE + 2 * SIZE - 1)
    changed = result["files"]["changed"]
    texts = [c for c in changed if c["path"].endswith(".txt")]
    assert [c["path"] for c in texts if c["diff"]] == ["f00.txt", "f01.txt", "f02.txt"]
    assert all(c["diff"] is None and c["diff_left_out"] for c in texts[3:])
    assert result["text_diffs_left_out"] == FILES - 3
    _print_diff(result)
    lines = capsys.readouterr().out.splitlines()
    assert (f"~ file f05.txt  (content: {SIZE} -> {SIZE} bytes, no text diff (past the diff's "
            "text limit))") in lines
    assert lines[-1] == (f"({FILES - 3} changed file(s) shown without a text diff: a diff reads "
                         f"at most {diffs.TEXT_DIFF_TOTAL >> 20} MiB of changed files)")
