import json

import pytest

from tests import workflows
from wtb_ray.batch.plan import check_against, plan_cells
from wtb_ray.batch.spec import load_spec, parse_spec
from wtb_ray.domain.errors import InvalidInput

BASE = {"workflow": "tests.workflows:matrix",
        "variants": {"a": ["default", "add10"], "b": ["default", "triple"]},
        "cases": [{"id": "one", "input": {"x": 1}}, {"id": "two", "input": {"x": 2}}]}


def spec_with(**changes):
    data = json.loads(json.dumps(BASE))
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    return data


def test_a_valid_spec_expands_to_every_cell():
    spec = parse_spec(spec_with(repeats=2))
    cells = plan_cells(spec)
    assert len(spec.choices()) == 4 and len(cells) == 4 * 2 * 2
    assert {c.combo for c in cells} == {json.dumps(c, sort_keys=True, separators=(",", ":"))
                                        for c in spec.choices()}
    check_against(spec, workflows.matrix)


def test_yaml_file_with_jsonl_cases(tmp_path):
    (tmp_path / "cases.jsonl").write_text(
        '{"id": "c1", "input": {"x": 1}}\n\n{"id": "c2", "input": {"x": 2}}\n')
    (tmp_path / "spec.yaml").write_text(
        "workflow: tests.workflows:matrix\ncombinations: [{a: add10}, {b: triple}]\n"
        "cases: cases.jsonl\n")
    spec = load_spec(tmp_path / "spec.yaml")
    assert [c.id for c in spec.cases] == ["c1", "c2"] and len(plan_cells(spec)) == 4


@pytest.mark.parametrize("changes, message", [
    ({"workflow": None}, "workflow: Field required"),
    ({"workflow": "no colon"}, "workflow: String should match pattern"),
    ({"variants": {"a": []}}, "variants: Value error, node 'a' lists no variants"
     .replace("Value error, ", "")),
    ({"variants": {"a": ["x", "x"]}}, "variants: node 'a' lists a variant twice"),
    ({"combinations": [{"a": "add10"}]}, "give variants (a matrix) or combinations"),
    ({"cases": []}, "cases: at least one case is needed"),
    ({"cases": [{"id": "d"}, {"id": "d"}]}, "cases: id 'd' appears twice"),
    ({"cases": [{"id": "", "input": {}}]}, "cases[0].id: String should have at least 1"),
    ({"cases": [{"id": "x", "input": [1]}]}, "cases[0].input: Input should be a valid"),
    ({"cases": [{"id": "x", "extra": 1}]}, "cases[0].extra: Extra inputs are not permitted"),
    ({"evaluators": [{"type": "nope"}]}, "evaluators[0].type: Input should be"),
    ({"evaluators": [{"type": "exact"}]}, "a 'exact' evaluator needs key"),
    ({"evaluators": [{"type": "usage"}]}, "a 'usage' evaluator needs metric"),
    ({"evaluators": [{"type": "regex", "key": "y"}]}, "a 'regex' evaluator needs pattern"),
    ({"evaluators": [{"type": "regex", "key": "y", "pattern": "(("}]},
     "evaluators[0].pattern: '((' is not a regular expression"),
    ({"evaluators": [{"type": "regex", "key": "y", "expected": "pat"}],
      "cases": [{"id": "ok", "expected": {"pat": "^4"}}, {"id": "bad", "expected": {"pat": "(("}}]},
     "cases[1].expected.pat (case 'bad'): '((' is not a regular expression"),
    ({"evaluators": [{"type": "regex", "key": "y", "expected": "pat"}],
      "cases": [{"id": "n", "expected": {"pat": 4}}]},
     "cases[0].expected.pat (case 'n'): a regex evaluator needs a string pattern, not int"),
    ({"name": "a\x00b"}, "name: must not contain a NUL character"),
    ({"cases": [{"id": "c\x00"}]}, "cases[0].id: must not contain a NUL character"),
    ({"repeats": 0}, "repeats: Input should be greater than or equal to 1"),
    ({"parallelism": 0}, "parallelism: Input should be greater than or equal to 1"),
    ({"max_attempts": 0}, "max_attempts: Input should be greater than or equal to 1"),
    ({"timeout_s": -1}, "timeout_s: Input should be greater than 0"),
    ({"runtime_env": {"a": {}}}, "runtime_env: key 'a' must be NODE=VARIANT"),
    ({"runtime_env": {"a=add10": {"bogus": 1}}}, "unknown runtime_env field(s) ['bogus']"),
    ({"surprise": 1}, "surprise: Extra inputs are not permitted"),
    ({"cases": "/no/such/cases.jsonl"}, "cases: cannot read '/no/such/cases.jsonl'"),
])
def test_invalid_specs_name_the_field(changes, message):
    with pytest.raises(InvalidInput) as info:
        parse_spec(spec_with(**changes))
    assert str(info.value).startswith("batch spec: ") and message in str(info.value)


@pytest.mark.parametrize("changes, message", [
    ({"variants": {"zz": ["default"]}}, "variants: workflow 'matrix' has no node 'zz'"),
    ({"variants": {"a": ["nope"]}}, "variants: node 'a' of workflow 'matrix' has no variant"),
    ({"variants": None, "combinations": [{"b": "nope"}]}, "combinations[0]: node 'b'"),
    ({"runtime_env": {"a=nope": {"env_vars": {"K": "1"}}}}, "runtime_env.a=nope: node 'a'"),
    ({"evaluators": [{"type": "custom", "ref": "tests.workflows:missing"}]},
     "evaluators[0].ref: module 'tests.workflows' has no attribute 'missing'"),
])
def test_specs_are_checked_against_the_workflow(changes, message):
    with pytest.raises(InvalidInput, match="batch spec: ") as info:
        check_against(parse_spec(spec_with(**changes)), workflows.matrix)
    assert message in str(info.value)


def test_runtime_envs_merge_per_combination_and_conflicts_are_refused():
    spec = parse_spec(spec_with(runtime_env={
        "a=add10": {"env_vars": {"K": "1"}, "pip": ["six==1.16.0"]},
        "b=triple": {"env_vars": {"L": "2"}, "pip": ["tomli-w"]}}))
    assert spec.runtime_env_for({"a": "add10", "b": "triple"}) == {
        "env_vars": {"K": "1", "L": "2"}, "pip": ["six==1.16.0", "tomli-w"]}
    assert spec.runtime_env_for({"a": "default", "b": "default"}) == {}
    clash = parse_spec(spec_with(runtime_env={"a=add10": {"env_vars": {"K": "1"}},
                                              "b=triple": {"env_vars": {"K": "2"}}}))
    with pytest.raises(InvalidInput, match="env var 'K' differs"):
        check_against(clash, workflows.matrix)


def test_malformed_files_say_where(tmp_path):
    (tmp_path / "bad.yaml").write_text("workflow: [unclosed")
    with pytest.raises(InvalidInput, match=r"bad\.yaml is not valid YAML"):
        load_spec(tmp_path / "bad.yaml")
    (tmp_path / "cases.jsonl").write_text('{"id": "ok"}\n{oops\n')
    (tmp_path / "s.json").write_text(json.dumps({**BASE, "cases": "cases.jsonl"}))
    with pytest.raises(InvalidInput, match=r"cases\.jsonl line 2 is not valid JSON"):
        load_spec(tmp_path / "s.json")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(InvalidInput, match="must be a mapping at the top level"):
        load_spec(tmp_path / "list.yaml")
