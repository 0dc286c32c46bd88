import pytest

from wtb_ray import END, GraphError, InvalidInput, Node, Retry, Route, Variant, Workflow
from wtb_ray.domain.errors import RoutingError


def f(state, ctx):
    return None


def g(state):
    return {"x": 1}


def make(**overrides):
    spec = {"nodes": {"a": f, "b": f}, "edges": {"a": "b", "b": END}, "entry": "a"}
    spec.update(overrides)
    return Workflow("w", **spec)


def test_valid_workflow_describes_itself():
    wf = make()
    desc = wf.describe()
    assert desc["entry"] == "a"
    assert desc["nodes"]["a"]["variants"] == ["default"]
    assert desc["edges"] == {"a": "b", "b": END}


@pytest.mark.parametrize("overrides, message", [
    ({"edges": {"a": "nope", "b": END}}, "edge 'a' -> 'nope' points to an unknown node"),
    ({"edges": {"a": "b", "b": END, "ghost": END}}, "edge from unknown node 'ghost'"),
    ({"edges": {"a": "b", "b": None}}, "'b' -> None points to an unknown node (nodes: a, b) "
                                       "(to end the run there, use wtb_ray.END)"),
    ({"entry": None}, "has no entry node"),
    ({"entry": "zzz"}, "entry 'zzz' is not a node"),
    ({"nodes": {"a": f, "b": f, "c": f}, "edges": {"a": "b", "b": END, "c": END}},
     "node(s) 'c' are unreachable from entry 'a'"),
    ({"edges": {"a": "b"}}, "node(s) 'b' have no outgoing edge"),
    ({"edges": {"a": "b", "b": "a"}}, "no path from entry 'a' reaches END"),
    ({"nodes": {}, "edges": {}}, "has no nodes"),
    ({"nodes": {"a": f, "b": 3}}, "node 'b' is not callable"),
    ({"nodes": {"a": f, "b": lambda: None}}, "takes (state, ctx) or (state)"),
    ({"nodes": {"a": f, "1b": f}, "edges": {"a": "1b", "1b": END}}, "invalid node name '1b'"),
    ({"edges": {"a": Route(lambda s: "b", []), "b": END}}, "router on 'a' declares no targets"),
    ({"edges": {"a": Route(lambda s: "b", ["b", "x"]), "b": END}}, "'a' -> 'x'"),
    ({"max_steps": 0}, "max_steps must be a positive integer"),
    ({"nodes": {"a": Node(f, timeout=0), "b": f}}, "timeout must be > 0"),
])
def test_invalid_graphs_name_the_problem(overrides, message):
    with pytest.raises(GraphError) as info:
        make(**overrides)
    assert message in str(info.value)


def test_cycles_are_allowed_when_end_is_reachable():
    wf = make(edges={"a": "b", "b": Route(lambda s: END, ["a", END])})
    assert wf.successors_of("b") == ("a", END)


def test_router_returning_unknown_value_names_router_and_value():
    def my_router(state):
        return "elsewhere"

    wf = make(edges={"a": Route(my_router, ["b"]), "b": END})
    with pytest.raises(RoutingError) as info:
        wf.route("a", {})
    assert "my_router" in str(info.value) and "'elsewhere'" in str(info.value)


def test_variants_register_and_resolve_with_merged_params():
    wf = make(nodes={"a": Node(f, params={"k": 1, "j": 2},
                                variants={"v2": Variant(params={"k": 5}), "g": g}), "b": f})
    wf.add_variant("b", "alt", g)
    assert wf.variants_of("a") == ["default", "v2", "g"]
    assert dict(wf.resolve("a", "v2").params) == {"k": 5, "j": 2}
    resolved = wf.resolve("a", "g")
    assert resolved.fn is g and resolved.takes_ctx is False
    assert wf.resolve("b", "alt").fn is g


def test_variant_errors_name_node_and_variant():
    wf = make()
    with pytest.raises(InvalidInput, match="node 'a' of workflow 'w' has no variant 'nope'"):
        wf.check_choice({"a": "nope"})
    with pytest.raises(InvalidInput, match="has no node 'zz'"):
        wf.check_choice({"zz": "x"})
    with pytest.raises(GraphError, match="invalid variant name 'default'"):
        wf.add_variant("a", "default", g)
    assert wf.check_choice({"a": "default"}) == {}


def test_retry_policy_backoff_and_validation():
    policy = Retry(attempts=4, backoff=0.1, multiplier=3, max_backoff=0.5, on=(ValueError,))
    assert [policy.delay(i) for i in (1, 2, 3)] == pytest.approx([0.1, 0.3, 0.5])
    assert policy.retries(ValueError()) and not policy.retries(KeyError())
    with pytest.raises(GraphError):
        Retry(attempts=0)


def test_async_nodes_are_detected():
    async def h(state, ctx):
        return {}

    wf = make(nodes={"a": h, "b": f})
    assert wf.resolve("a").is_async and not wf.resolve("b").is_async
