"""One error base and a few subclasses.

Each error's ``args`` are exactly its constructor arguments and the message is derived from
them, so errors pickle cleanly: they cross Ray process boundaries and must arrive intact.
"""

from __future__ import annotations

from wtb_ray.domain.listing import some


class WTBError(Exception):
    """Base of every error WTB raises on purpose."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else type(self).__name__


class InvalidInput(WTBError):
    """The caller gave something WTB cannot use: a malformed patch, an unknown node, ..."""


class GraphError(InvalidInput):
    """A workflow definition is inconsistent (unknown edge target, unreachable node, ...)."""


class RoutingError(WTBError):
    """A router returned a value that is not one of its declared targets."""


class NodeTimeout(WTBError):
    """A node ran longer than its timeout."""


class StorageError(WTBError):
    """The database is unreachable or not at the schema this code needs."""


class ConcurrencyConflict(WTBError):
    """Another process changed or holds the execution (lost lease, concurrent update)."""


class NotFound(WTBError):
    """An execution, checkpoint or workflow does not exist."""

    def __init__(self, what: str, ident: object) -> None:
        super().__init__(what, ident)
        self.what = what
        self.ident = ident

    def __str__(self) -> str:
        return f"{self.what} {self.ident!r} not found"


class InvalidTransition(WTBError):
    """The execution's state forbids the requested action (resume a completed run, ...)."""

    def __init__(self, execution_id: str, status: str, action: str, hint: str = "") -> None:
        super().__init__(execution_id, status, action, hint)
        self.execution_id = execution_id
        self.status = status
        self.action = action
        self.hint = hint

    def __str__(self) -> str:
        text = f"cannot {_verb(self.action)} execution {self.execution_id}: it is {self.status}"
        return f"{text} ({self.hint})" if self.hint else text


class HasForks(InvalidInput):
    """An execution cannot be deleted while forks depend on its checkpoints."""

    def __init__(self, execution_id: str, forks: list[str]) -> None:
        super().__init__(execution_id, forks)
        self.execution_id = execution_id
        self.forks = forks

    def __str__(self) -> str:
        return (f"execution {self.execution_id} has forks that depend on its checkpoints "
                f"({', '.join(self.forks)}): delete them first")


class BatchNotDeletable(WTBError):
    """A batch cannot be deleted now: it has not finished, a cell of it is running, or a fork
    of one of its cells depends on that cell's checkpoints."""

    def __init__(self, batch_id: str, reason: str) -> None:
        super().__init__(batch_id, reason)
        self.batch_id = batch_id
        self.reason = reason

    def __str__(self) -> str:
        return f"cannot delete batch {self.batch_id}: {self.reason}"


class SerializationError(InvalidInput):
    """A state value cannot be stored safely; names the node and the state key."""

    def __init__(self, node: str, key: str, reason: str) -> None:
        super().__init__(node, key, reason)
        self.node = node
        self.key = key
        self.reason = reason

    def __str__(self) -> str:
        return (f"node {self.node!r} produced state key {self.key!r} that cannot be stored: "
                f"{self.reason}")


class NodeFailed(WTBError):
    """A node raised (after its retries); the execution stays resumable from its last checkpoint."""

    def __init__(self, node: str, error_type: str, error_message: str, attempts: int = 1) -> None:
        super().__init__(node, error_type, error_message, attempts)
        self.node = node
        self.error_type = error_type
        self.error_message = error_message
        self.attempts = attempts

    def __str__(self) -> str:
        return (f"node {self.node!r} failed after {self.attempts} attempt(s): "
                f"{self.error_type}: {self.error_message}")


class WorkspaceError(WTBError):
    """A workspace file cannot be recorded or restored; names the file and the reason."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(path, reason)
        self.path = path
        self.reason = reason

    def __str__(self) -> str:
        return f"workspace file {self.path!r}: {self.reason}"


class WorkspaceEdited(InvalidTransition):
    """A pending, paused or completed execution's workspace holds changes no checkpoint
    recorded (made by hand). A start, resume or rollback would overwrite them: it is refused
    unless the caller says to keep them (not for a rollback) or to discard them. ``changes``
    names the first few ("modified report.md"), ``total`` counts them all."""

    def __init__(self, execution_id: str, status: str, action: str, path: str,
                 checkpoint_id: int, changes: list[str], total: int) -> None:
        WTBError.__init__(self, execution_id, status, action, path, checkpoint_id, changes,
                          total)
        self.execution_id = execution_id
        self.status = status
        self.action = action
        self.hint = ""
        self.path = path
        self.checkpoint_id = checkpoint_id
        self.changes = changes
        self.total = total

    def __str__(self) -> str:
        listed = some(self.changes, len(self.changes), self.total)
        if self.action == "start":  # Python only: Bench.start
            how = ('keep them to go on from these files (workspace_edits="keep"), or '
                   'discard them (workspace_edits="discard")')
        else:
            how = ("keep them to go on from these files (wtb resume --keep-edits; "
                   '"workspace_edits": "keep"), or ' if self.action == "resume" else "")
            how += 'discard them (--discard-edits; "workspace_edits": "discard")'
        return (f"cannot {_verb(self.action)} execution {self.execution_id}: its workspace "
                f"{self.path} was changed since checkpoint {self.checkpoint_id} ({listed}); "
                + how)


class CompensationFailed(WTBError):
    """An undo action raised during a rollback; the rollback stopped and can be run again."""

    def __init__(self, execution_id: str, fn: str, node: str, step: int, error_type: str,
                 error_message: str) -> None:
        super().__init__(execution_id, fn, node, step, error_type, error_message)
        self.execution_id = execution_id
        self.fn = fn
        self.node = node
        self.step = step
        self.error_type = error_type
        self.error_message = error_message

    def __str__(self) -> str:
        return (f"rollback of execution {self.execution_id} stopped: compensation {self.fn} "
                f"registered by node {self.node!r} (step {self.step}) raised "
                f"{self.error_type}: {self.error_message}; fix it and run the rollback again")


def _verb(action: str) -> str:
    """An action's name as a verb in a sentence ("rollback" is the noun)."""
    return "roll back" if action == "rollback" else action
