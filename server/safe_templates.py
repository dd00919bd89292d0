"""Prompt templates from API users, rendered so that they can neither escape nor exhaust the server.

Jinja2's immutable sandbox stops attribute tricks (``__class__``, ``__globals__``) and mutation, but
not work: nested loops, recursive macros, ``'x' * 10**9`` or ``9 ** 10**8`` keep a worker thread
busy or eat memory, and ``include``/``import`` fail with a non-template error. So a template is
parsed first and may only use a small, linear-cost subset: text, the variables it is given,
``if``/``else``, ``~``/``+`` concatenation, comparisons and a few string filters. Anything else is
refused by name at profile creation, before it can run.
"""

from __future__ import annotations

from jinja2 import StrictUndefined, TemplateError, nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

_ENV = ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=False)

_ALLOWED_NODES = (
    nodes.Template,
    nodes.Output,
    nodes.TemplateData,
    nodes.Name,
    nodes.Const,
    nodes.Filter,
    nodes.Test,
    nodes.If,
    nodes.Compare,
    nodes.Operand,
    nodes.And,
    nodes.Or,
    nodes.Not,
    nodes.CondExpr,
    nodes.Concat,
    nodes.Add,
)
_ALLOWED_FILTERS = frozenset(
    {"upper", "lower", "title", "capitalize", "trim", "striptags", "default", "d", "length", "truncate"}
)
_ALLOWED_TESTS = frozenset({"defined", "undefined", "none", "string", "eq", "ne", "lt", "gt", "le", "ge"})
MAX_OUTPUT_CHARS = 20_000


class TemplateRefused(ValueError):
    """A template outside the allowed subset, or one that failed to render; the message says why."""


_NAMES = {
    "For": "for loops",
    "Macro": "macros",
    "CallBlock": "call blocks",
    "Call": "function calls",
    "Include": "include",
    "Import": "import",
    "FromImport": "import",
    "Extends": "extends",
    "Assign": "set",
    "AssignBlock": "set",
    "Getattr": "attribute access",
    "Getitem": "item access",
    "Mul": "multiplication",
    "Pow": "powers",
}


def _describe(node: nodes.Node) -> str:
    return _NAMES.get(type(node).__name__, type(node).__name__)


def check(template: str, variables: frozenset[str]) -> None:
    try:
        tree = _ENV.parse(template)
    except TemplateError as exc:
        raise TemplateRefused(f"syntax error: {exc}") from None
    todo: list[nodes.Node] = [tree]
    while todo:
        node = todo.pop()
        if not isinstance(node, _ALLOWED_NODES):
            raise TemplateRefused(f"{_describe(node)} not allowed in prompt templates")
        if isinstance(node, nodes.Name) and (node.ctx != "load" or node.name not in variables):
            raise TemplateRefused(
                f"unknown variable {node.name!r} (available: {', '.join(sorted(variables))})"
            )
        if isinstance(node, nodes.Filter) and node.name not in _ALLOWED_FILTERS:
            raise TemplateRefused(
                f"filter {node.name!r} is not allowed (use {', '.join(sorted(_ALLOWED_FILTERS))})"
            )
        if isinstance(node, nodes.Test) and node.name not in _ALLOWED_TESTS:
            raise TemplateRefused(f"test {node.name!r} is not allowed")
        todo.extend(node.iter_child_nodes())


def render(template: str, **variables: str) -> str:
    check(template, frozenset(variables))
    try:
        out = _ENV.from_string(template).render(**variables)
    except Exception as exc:  # the sandbox's own refusals and any runtime error: never a 500
        raise TemplateRefused(str(exc) or type(exc).__name__) from None
    if len(out) > MAX_OUTPUT_CHARS:
        raise TemplateRefused(f"the rendered prompt is over {MAX_OUTPUT_CHARS} characters")
    return out.strip()
