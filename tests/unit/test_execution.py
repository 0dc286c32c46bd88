import itertools
import pickle

import pytest

from wtb_ray.domain.errors import (
    CompensationFailed,
    ConcurrencyConflict,
    InvalidTransition,
    NodeFailed,
    NotFound,
    SerializationError,
    WorkspaceError,
    WTBError,
)
from wtb_ray.domain.execution import TRANSITIONS, Execution, Status


@pytest.mark.parametrize("action, status", list(itertools.product(TRANSITIONS, Status)))
def test_every_transition_follows_the_table(action, status):
    ex = Execution(workflow_name="w", workflow_ref=None, status=status)
    allowed = TRANSITIONS[action]
    if status in allowed:
        assert ex.apply(action) is allowed[status]
    else:
        with pytest.raises(InvalidTransition) as info:
            ex.apply(action)
        assert ex.status is status  # unchanged
        verb = "roll back" if action == "rollback" else action  # the sentence's verb
        assert f"cannot {verb} execution {ex.id}: it is {status.value}" in str(info.value)


def test_terminal_states_only_allow_rollback_from_completed():
    assert Execution(workflow_name="w", workflow_ref=None, status=Status.COMPLETED).can("rollback")
    cancelled = Execution(workflow_name="w", workflow_ref=None, status=Status.CANCELLED)
    assert not any(cancelled.can(a) for a in TRANSITIONS)


@pytest.mark.parametrize("error", [
    WTBError("plain"), NotFound("execution", "abc"), InvalidTransition("e", "paused", "x", "h"),
    SerializationError("n", "k", "why"), NodeFailed("n", "ValueError", "bad", 3),
    ConcurrencyConflict("lost"), WorkspaceError("data/big.bin", "too large"),
    CompensationFailed("e", "m:f", "n", 3, "RuntimeError", "no"),
])
def test_errors_pickle_with_their_fields(error):
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error) and str(copy) == str(error) and copy.args == error.args


def test_ids_sort_in_the_order_they_were_made_and_do_not_repeat():
    from wtb_ray.domain.events import Event
    from wtb_ray.domain.execution import new_id

    made = [new_id() for _ in range(20_000)]
    assert len(set(made)) == len(made)
    assert all(len(i) == 20 and int(i, 16) >= 0 for i in made)
    # Ids of different milliseconds sort by time (ids of one millisecond share a prefix).
    assert [i[:11] for i in made] == sorted(i[:11] for i in made)
    events = [Event("k", "x").id for _ in range(1000)]
    assert len(set(events)) == 1000 and all(len(e) == 32 for e in events)
    assert events[0][:11] <= events[-1][:11] and made[-1][:11] <= events[0][:11]
