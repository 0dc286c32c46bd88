"""Finding workflows by import reference (``package.module:attr``) and back."""

from __future__ import annotations

import importlib
import inspect
import re
import sys

from wtb_ray.domain.errors import InvalidInput
from wtb_ray.domain.graph import Workflow

_REF = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


def load_object(ref: str, what: str) -> object:
    """Import ``package.module:attr`` (``what`` names it in errors: "workflow", ...)."""
    if not isinstance(ref, str) or not _REF.match(ref):
        raise InvalidInput(f"{what} reference {ref!r} must look like package.module:attr")
    module_name, attr = ref.split(":", 1)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise InvalidInput(f"cannot import {what} module {module_name!r}: {exc}") from None
    target = module
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise InvalidInput(f"module {module_name!r} has no attribute {attr!r}") from None
    return target


def load_workflow(ref: str) -> Workflow:
    """Import ``package.module:attr``: a Workflow, or a callable with no arguments returning one."""
    target = load_object(ref, "workflow")
    if not isinstance(target, Workflow) and _is_factory(target):
        try:
            target = target()
        except Exception as exc:
            raise InvalidInput(f"workflow factory {ref!r} raised {type(exc).__name__}: {exc}"
                               ) from None
    if not isinstance(target, Workflow):
        raise InvalidInput(f"{ref!r} is a {type(target).__name__}, not a Workflow "
                           "(or a function with no arguments that returns one)")
    target.ref = ref
    return target


def _is_factory(target: object) -> bool:
    if not callable(target) or isinstance(target, type):
        return False
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):
        return False
    return all(p.default is not p.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
               for p in signature.parameters.values())


def ref_of(workflow: Workflow) -> str | None:
    """The reference another process can import this workflow by, if there is one."""
    if workflow.ref:
        return workflow.ref
    module = sys.modules.get(workflow.defined_in or "")
    if module is None or workflow.defined_in == "__main__":
        return None
    for name, value in vars(module).items():
        if value is workflow:
            workflow.ref = f"{workflow.defined_in}:{name}"
            return workflow.ref
    return None
