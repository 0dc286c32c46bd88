"""The `wtb` command: output contracts, and bad input refused in one line with nothing written."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from wtb_ray.cli import app
from wtb_ray.storage import migrate
from wtb_ray.storage.store import Store
from wtb_ray.workspace.tree import CHUNK_SIZE

REF = "tests.workflows:chain"


@pytest.fixture
def cli(sqlite_url):
    runner = CliRunner()

    def invoke(*args):
        return runner.invoke(app, [*args, "--db", sqlite_url])

    return invoke


@pytest.fixture
def counts(sqlite_url):
    def read():
        store = Store.open(sqlite_url)
        try:
            return store.table_counts()
        finally:
            store.close()

    return read


def as_json(result):
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def test_run_show_checkpoints_history_as_json(cli):
    run = as_json(cli("run", REF, "--input", '{"seed": 7}', "--variant", "b=bonus", "--json"))
    ex = run["execution"]
    assert ex["status"] == "completed" and ex["variants"] == {"b": "bonus"}
    assert run["state"]["b"] == 1 * 2 + 100 + 1
    shown = as_json(cli("show", ex["id"], "--json"))
    assert [r["node"] for r in shown["node_runs"]] == ["a", "b", "c", "d"]
    tree = as_json(cli("checkpoints", ex["id"], "--json"))
    assert tree["head"] == ex["head_checkpoint_id"] and len(tree["checkpoints"]) == 5
    events = as_json(cli("history", ex["id"], "--json"))["events"]
    assert events[0]["kind"] == "execution.created" and events[-1]["kind"] == "execution.completed"


def test_human_output_tells_what_to_do_next(cli):
    result = cli("run", REF, "--break-after", "b")
    assert result.exit_code == 0
    assert "paused" in result.stdout and "resume with: wtb resume" in result.stderr
    ex_id = result.stderr.split()[1]
    tree = cli("checkpoints", ex_id)
    assert "after b" in tree.stdout and "<- head" in tree.stdout
    assert "node.completed" in cli("history", ex_id).stdout
    rolled = cli("rollback", ex_id, "--to", "b")
    assert "rolled back to checkpoint" in rolled.stdout


def test_a_failed_execution_exits_1_and_says_how_to_continue(cli):
    result = cli("run", "tests.workflows:failing")
    assert result.exit_code == 1
    assert "this node always fails" in result.stdout
    assert "fix the node, then: wtb resume" in result.stderr


def _prepare(cli):
    done = as_json(cli("run", REF, "--json"))["execution"]
    paused = as_json(cli("run", REF, "--break-after", "a", "--json"))["execution"]
    return done["id"], paused["id"]


def test_list_shows_executions_newest_first_and_filters_by_status(cli):
    done, paused = _prepare(cli)
    fork = as_json(cli("fork", done, "--json"))["execution"]["id"]
    listed = as_json(cli("list", "--json"))["executions"]
    assert [e["id"] for e in listed] == [fork, paused, done]
    assert listed[0]["parent_execution_id"] == done
    assert [e["id"] for e in as_json(cli("list", "--status", "paused", "--json"))
            ["executions"]] == [paused]
    assert len(as_json(cli("list", "--limit", "1", "--json"))["executions"]) == 1
    table = cli("list")
    assert table.exit_code == 0 and all(i in table.stdout for i in (done, paused, fork))


BAD_INPUT = [
    (["run", "no_such_module:wf"], "cannot import workflow module 'no_such_module'"),
    (["run", "not-a-ref"], "must look like package.module:attr"),
    (["run", "tests.workflows:nope"], "has no attribute 'nope'"),
    (["run", "tests.workflows:touch_points"], "is a function, not a Workflow"),
    (["run", REF, "--input", "{bad json"], "--input is not valid JSON"),
    (["run", REF, "--input", "[1, 2]"], "--input must be a JSON object, got list"),
    (["run", REF, "--input", "@/no/such/file.json"], "cannot read '/no/such/file.json'"),
    (["run", REF, "--variant", "b"], "--variant expects NODE=NAME, got 'b'"),
    (["run", REF, "--variant", "zz=x"], "workflow 'chain' has no node 'zz'"),
    (["run", REF, "--variant", "b=nope"], "node 'b' of workflow 'chain' has no variant 'nope'"),
    (["run", REF, "--break-before", "q"], "--break-before: workflow 'chain' has no node 'q'"),
    (["show", "unknown-id"], "execution 'unknown-id' not found"),
    (["checkpoints", "unknown-id"], "execution 'unknown-id' not found"),
    (["history", "unknown-id"], "execution 'unknown-id' not found"),
    (["resume", "{done}"], "cannot resume execution {done}: it is completed"),
    (["pause", "{done}"], "cannot pause execution {done}: it is completed"),
    (["resume", "{paused}", "--patch", "{oops"], "--patch is not valid JSON"),
    (["resume", "{paused}", "--patch", '"text"'], "--patch must be a JSON object, got str"),
    (["resume", "{paused}", "--variant", "b=nope"], "has no variant 'nope'"),
    (["rollback", "{paused}", "--to", "999999"], "checkpoint 999999 not found"),
    (["rollback", "{paused}", "--to", "nosuchnode"], "has no node 'nosuchnode'"),
    (["fork", "{done}", "--at", "999999"], "checkpoint 999999 not found"),
    (["fork", "{done}", "--patch", "[]"], "--patch must be a JSON object, got list"),
    (["run", REF, "--ignore", "*.log"], "--ignore needs --workspace DIR"),
    (["run", REF, "--workspace", "{file}"], "--workspace '{file}' is not a directory"),
    (["run", REF, "--workspace", "{dir}/ws", "--ignore", "!/"],
     "ignore pattern '!/' matches nothing"),
    (["fork", "{done}", "--workspace", "{file}"], "is not a directory"),
    (["fork", "{done}", "--workspace", "{dir}"], "for the fork is not empty"),
    (["files", "unknown-id"], "execution 'unknown-id' not found"),
    (["files", "{done}"], "execution {done} has no workspace"),
    (["diff", "999999", "1"], "checkpoint 999999 not found"),
    (["diff", "first", "1"], "checkpoint id must be an integer, got 'first'"),
    (["gc", "--keep-last", "-1"], "--keep-last must be >= 0, got -1"),
    (["gc", "--before", "yesterday"], "--before expects an ISO date or datetime"),
    (["gc", "--grace", "-5"], "--grace must be >= 0 seconds"),
    (["delete", "unknown-id"], "execution 'unknown-id' not found"),
    (["list", "--status", "done"], "--status 'done' is not one of pending, running, paused"),
]


@pytest.mark.parametrize("args, message", BAD_INPUT, ids=[" ".join(a) for a, _ in BAD_INPUT])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(cli, counts, tmp_path, args, message):
    done, paused = _prepare(cli)
    def fill(text):
        return (text.replace("{done}", done).replace("{paused}", paused)
                .replace("{file}", __file__).replace("{dir}", str(tmp_path)))

    args = [fill(a) for a in args]
    before = counts()
    result = cli(*args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert fill(message) in lines[0]
    assert counts() == before


def test_db_upgrade_reports_the_revision(cli):
    assert as_json(cli("db", "upgrade", "--json"))["to"] == migrate.HEAD


def test_files_and_diff_of_a_workspace_run(cli, tmp_path):
    ws = tmp_path / "ws"
    run = as_json(cli("run", "tests.side_effects:files", "--workspace", str(ws),
                      "--ignore", "*.log", "--json"))["execution"]
    assert run["workspace"] == {"path": str(ws), "ignore": ["*.log"]}
    tree = as_json(cli("checkpoints", run["id"], "--json"))["checkpoints"]
    after_create, after_modify = tree[1]["id"], tree[2]["id"]
    listed = as_json(cli("files", run["id"], "--at", str(after_create), "--json"))
    by_path = {f["path"]: f for f in listed["files"]}
    big = by_path["data/big.bin"]
    assert big["size"] == 2_500_000 and big["chunks"] == -(-2_500_000 // CHUNK_SIZE)
    assert by_path["latest"] == {"path": "latest", "type": "symlink", "target": "notes.txt"}
    assert by_path["run.sh"]["mode"] == "0o755" and by_path["empty"]["type"] == "dir"
    assert "scratch.log" not in by_path
    head = as_json(cli("files", run["id"], "--json"))["files"]
    assert {f["path"] for f in head} == {"data", "data/small.json", "empty", "latest", "new.txt",
                                         "run.sh"}
    diff = as_json(cli("diff", str(after_create), str(after_modify), "--json"))
    assert diff["state"]["added"] == {"modified": True}
    changed = {c["path"]: c for c in diff["files"]["changed"]}
    assert set(changed) == {"data/big.bin", "data/small.json", "latest", "notes.txt"}
    assert "+line 3\n" in changed["notes.txt"]["diff"] and changed["data/big.bin"]["diff"] is None
    assert [a["path"] for a in diff["files"]["added"]] == ["new.txt"]
    human = cli("diff", str(after_create), str(after_modify))
    assert "~ file notes.txt" in human.stdout and "+line 3" in human.stdout
    lines = human.stdout.splitlines()
    assert ("~ file data/big.bin  (content: 2500000 -> 2500000 bytes, no text diff "
            "(binary or too large))") in lines
    assert "~ file data/small.json  (mode 0o644 -> 0o600)" in lines
    assert "~ file latest  (target notes.txt -> data/small.json)" in lines
    assert "+ state modified = true" in lines
    # The last node removed the empty directory and made a file of that name.
    last = cli("diff", str(after_modify), str(tree[3]["id"])).stdout.splitlines()
    assert {"- dir empty/", "+ file empty", "- file notes.txt", "- file data/big.bin"} <= set(
        last)
    assert f"  workspace {ws} (ignoring *.log)" in cli("show", run["id"]).stdout.splitlines()
    assert "data/big.bin" in cli("files", run["id"], "--at", str(after_create)).stdout


def test_resume_over_hand_edits_says_what_changed_and_goes_on_only_when_told(cli, counts,
                                                                           tmp_path):
    ws = tmp_path / "ws"
    run = as_json(cli("run", "tests.side_effects:files", "--workspace", str(ws),
                      "--break-after", "modify", "--json"))["execution"]
    (ws / "new.txt").write_text("changed by hand\n")
    before = counts()
    shown = cli("show", run["id"]).stdout.splitlines()
    assert (f"  changed by hand since checkpoint {run['head_checkpoint_id']}: modified new.txt "
            f"(wtb diff {run['head_checkpoint_id']} shows them; resume --keep-edits or "
            "--discard-edits; rollback --discard-edits)") in shown
    assert as_json(cli("show", run["id"], "--json"))["workspace_edits"] == ["modified new.txt"]
    refused = cli("resume", run["id"])
    assert refused.exit_code == 2 and refused.stdout == ""
    assert refused.stderr.strip() == (
        f"error: cannot resume execution {run['id']}: its workspace {ws} was changed since "
        f"checkpoint {run['head_checkpoint_id']} (modified new.txt); keep them to go on from "
        'these files (wtb resume --keep-edits; "workspace_edits": "keep"), or discard them '
        '(--discard-edits; "workspace_edits": "discard")')
    assert counts() == before and (ws / "new.txt").read_text() == "changed by hand\n"
    head = run["head_checkpoint_id"]
    assert cli("diff", str(head)).stdout.splitlines() == [  # what they are, line by line
        f"checkpoint {head} -> workspace {ws} (as it is now)", "~ file new.txt",
        f"--- checkpoint-{head}/new.txt", "+++ workspace/new.txt", "@@ -1 +1 @@", "-new",
        "+changed by hand"]
    assert counts() == before
    both = cli("resume", run["id"], "--keep-edits", "--discard-edits")
    assert both.exit_code == 2
    assert "--keep-edits and --discard-edits exclude each other" in both.stderr
    done = as_json(cli("resume", run["id"], "--keep-edits", "--json"))["execution"]
    assert done["status"] == "completed"
    assert (ws / "new.txt").read_text() == "changed by hand\n"  # the last node ran on it
    history = as_json(cli("history", run["id"], "--json"))["events"]
    resumed = [e for e in history if e["kind"] == "execution.resumed"][-1]
    assert resumed["data"]["kept_edits"] == ["modified new.txt"]
    assert f"{run['head_checkpoint_id'] + 1}  step 2  patch (files kept)  -> delete" in cli(
        "checkpoints", run["id"]).stdout
    assert as_json(cli("show", run["id"], "--json"))["workspace_edits"] == []
    plain = as_json(cli("run", REF, "--json"))["execution"]
    no_files = cli("diff", str(plain["head_checkpoint_id"]))
    assert no_files.exit_code == 2
    assert no_files.stderr.strip() == f"error: execution {plain['id']} has no workspace"


def test_diff_shows_a_unified_diff_of_text_state_values(cli):
    first = as_json(cli("run", REF, "--input", '{"text": "one\\ntwo\\n"}', "--break-after",
                        "a", "--json"))["execution"]
    patched = as_json(cli("resume", first["id"], "--patch", '{"text": "one\\nthree\\n"}',
                          "--json"))["execution"]
    cps = as_json(cli("checkpoints", patched["id"], "--json"))["checkpoints"]
    patch = next(c for c in cps if c["kind"] == "patch")
    diff = as_json(cli("diff", str(patch["parent_id"]), str(patch["id"]), "--json"))
    change = diff["state"]["changed"]["text"]
    assert change["a"] == "one\ntwo\n" and "-two\n+three\n" in change["diff"]
    human = cli("diff", str(patch["parent_id"]), str(patch["id"])).stdout.splitlines()
    assert "~ state text" in human and "-two" in human and "+three" in human


def test_diff_prints_a_short_one_line_text_as_old_and_new_value(cli):
    first = as_json(cli("run", REF, "--input", '{"stage": "drafted"}', "--break-after", "a",
                        "--json"))["execution"]
    patched = as_json(cli("resume", first["id"], "--patch", '{"stage": "revised"}',
                          "--json"))["execution"]
    patch = next(c for c in as_json(cli("checkpoints", patched["id"], "--json"))["checkpoints"]
                 if c["kind"] == "patch")
    human = cli("diff", str(patch["parent_id"]), str(patch["id"])).stdout
    assert '~ state stage: "drafted" -> "revised"' in human.splitlines()
    assert "No newline" not in human  # no unified diff for it
    diff = as_json(cli("diff", str(patch["parent_id"]), str(patch["id"]), "--json"))
    assert "+revised" in diff["state"]["changed"]["stage"]["diff"]  # --json keeps it


def test_diff_prints_a_changed_number_on_one_line_and_cuts_long_values(cli):
    first = as_json(cli("run", REF, "--input", '{"n": 1, "long": 0}', "--break-after", "a",
                        "--json"))["execution"]
    patched = as_json(cli("resume", first["id"], "--patch",
                          json.dumps({"n": 2, "long": ["x" * 50] * 10}), "--json"))["execution"]
    patch = next(c for c in as_json(cli("checkpoints", patched["id"], "--json"))["checkpoints"]
                 if c["kind"] == "patch")
    lines = cli("diff", str(patch["parent_id"]), str(patch["id"])).stdout.splitlines()
    assert "~ state n: 1 -> 2" in lines
    at = lines.index("~ state long")  # too long for one line: the values below it, cut
    assert lines[at + 1] == "  0" and lines[at + 2].startswith('  -> ["xxx')
    assert lines[at + 2].endswith("...") and len(lines[at + 2]) == len("  -> ") + 200


def test_the_installed_command_imports_workflows_from_the_directory_it_runs_in(tmp_path):
    """`wtb run flows:wf` beside flows.py, with nothing on PYTHONPATH (the console script's
    import path starts at its own bin directory, not at the current one)."""
    script = Path(sys.executable).with_name("wtb")
    assert script.exists(), "the wtb script is not installed (pip install -e .)"
    (tmp_path / "flows_beside_me.py").write_text(
        "from wtb_ray import END, Workflow\n"
        "wf = Workflow('beside', nodes={'a': lambda s, c: {'n': 1}}, edges={'a': END},"
        " entry='a')\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(WTB_HOME=str(tmp_path / "home"), WTB_DATABASE_URL=f"sqlite:///{tmp_path}/w.db")
    result = subprocess.run([str(script), "run", "flows_beside_me:wf", "--json"], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["execution"]["status"] == "completed"


def test_a_table_piped_keeps_each_row_on_one_line_unless_columns_says_otherwise(cli, tmp_path,
                                                                                 sqlite_url):
    """Off a terminal (a pipe, a file, a Ray job's log) Rich would fold tables into 80
    columns; there a row stays whole, unless COLUMNS asks for a width."""
    origin = as_json(cli("run", "wtb_ray.examples.report:workflow", "--workspace",
                         str(tmp_path / "ws"), "--json"))["execution"]
    fork = as_json(cli("fork", origin["id"], "--at", "2", "--workspace",
                       str(tmp_path / "fork-ws"), "--json"))["execution"]
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    env.update(WTB_HOME=str(tmp_path / "home"), WTB_DATABASE_URL=sqlite_url)

    def listing(**extra):
        result = subprocess.run([sys.executable, "-m", "wtb_ray.cli", "list"],
                                env={**env, **extra}, capture_output=True, text=True,
                                timeout=120)
        assert result.returncode == 0, result.stderr
        return result.stdout.splitlines()

    row = next(line for line in listing() if line.startswith(fork["id"]))
    assert len(row) > 80 and "astro-report" in row and f"{origin['id']} @2" in row
    narrow = listing(COLUMNS="80")
    assert all(len(line) <= 80 for line in narrow)
    assert not any(f"{origin['id']} @2" in line for line in narrow)  # folded there
