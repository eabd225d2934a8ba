"""Speed-ups for moto 5.2.5 that change no observable behaviour, only the emulator's CPU cost per request.

A TransactWriteItems of 100 actions cost the emulator ~30 ms of Python, and the emulator serves every
request under one lock, so its CPU per request bounds the throughput of everything that talks to it. The two
largest costs were not DynamoDB semantics at all:

1. Condition expressions were lexed and parsed (regular expressions, eight passes) every time moto met one:
   three times per transaction action. :func:`install` keeps the syntax tree per (expression, attribute
   names) and fills in each request's values.
2. The JSON request body was walked against the botocore service model with a dynamic ``getattr`` dispatch
   per node (~130,000 calls for one 100-action transaction). :func:`install` builds, once per shape, a
   parsing function that does the same conversions (blobs decoded, numbers cast, unknown members and
   ``null`` members dropped, structure members in model order).

:func:`install` is idempotent and applies to the emulator server and to in-process ``moto.mock_aws`` alike.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from tablesync_local.patching import patch

_MARK = "_tablesync_speed"
_install_lock = threading.Lock()
_installed = False


def install() -> None:
    """Patch moto in this process. Idempotent; safe to call from several threads."""
    global _installed
    with _install_lock:
        if _installed:
            return
        _install_condition_cache()
        _install_json_parser()
        _install_module_list()
        _installed = True


def _patch(owner: Any, name: str, make: Callable[[Callable[..., Any]], Callable[..., Any]]) -> None:
    patch(owner, name, make, _MARK)


# ------------------------------------------------------------------------------------- condition expressions

CONDITION_CACHE_SIZE = 4096
"""Distinct (expression, names) pairs kept; the cache is emptied when full (applications use a handful)."""

_Parsed = tuple[Any, tuple[str, ...], tuple[str, ...], tuple[str, ...], frozenset[int]]
_conditions: dict[tuple[str, tuple[tuple[str, Any], ...]], _Parsed] = {}
_conditions_lock = threading.Lock()


def _install_condition_cache() -> None:
    """The syntax tree depends only on the expression and its ExpressionAttributeNames. Errors are unchanged:
    an expression that fails to parse is never cached (moto raises as usual), and a missing value placeholder
    raises the same KeyError, looked up in the same left-to-right order as moto's lexer meets them."""
    from moto.dynamodb.comparisons import ConditionExpressionParser

    def make_parse(orig: Callable[..., Any]) -> Callable[..., Any]:
        def parse(self: Any) -> Any:
            expression, names = self.condition_expression, self.expression_attribute_names
            if not expression or not isinstance(expression, str) or not isinstance(names, dict | None):
                return orig(self)
            try:
                key = (expression, tuple(sorted(names.items())) if names else ())
                entry = _conditions.get(key)
            except TypeError:  # unhashable or unorderable names: moto decides what that means
                return orig(self)
            if entry is None:
                entry = _parse_tree(self)
                with _conditions_lock:
                    if len(_conditions) >= CONDITION_CACHE_SIZE:
                        _conditions.clear()
                    _conditions[key] = entry
            tree, names_found, values_found, placeholders, holders = entry
            values = {name: self._lookup_expression_attribute_value(name) for name in placeholders}
            self.expr_attr_names_found.extend(names_found)
            self.expr_attr_values_found.extend(values_found)
            return self._make_op_condition(_with_values(tree, values, holders))

        return parse

    _patch(ConditionExpressionParser, "parse", make_parse)


def _parse_tree(parser: Any) -> _Parsed:
    """moto's own parsing passes, stopped before the operator objects are built.

    Returns (tree, attribute names found, value placeholders found, value placeholders in lookup order, ids
    of the nodes that hold a value placeholder or have one below them)."""
    nodes = parser._lex_condition_expression()
    placeholders = tuple(dict.fromkeys(
        part for node in nodes if node.nonterminal == parser.Nonterminal.OPERAND
        for part in node.value.replace("[", ".[").split(".") if part.startswith(":")))
    for step in (parser._parse_paths, parser._apply_functions, parser._apply_comparator, parser._apply_in,
                 parser._apply_between, parser._apply_parens_and_booleans):
        nodes = step(nodes)
    tree = nodes[0]
    parser._assert_no_redundant_parentheses(tree)
    holders: set[int] = set()

    def mark(node: Any) -> bool:
        below = [mark(child) for child in node.children]  # every child visited: no short circuit
        if node.kind == parser.Kind.EXPRESSION_ATTRIBUTE_VALUE or any(below):
            holders.add(id(node))
            return True
        return False

    mark(tree)
    return (tree, tuple(parser._find_literals(tree)), tuple(parser._find_expr_attr_values(tree)), placeholders,
            frozenset(holders))


def _with_values(node: Any, values: dict[str, Any], holders: frozenset[int]) -> Any:
    """The cached syntax tree with this request's values in its placeholders: the nodes on the way to a
    placeholder are copied, every other node is shared (nodes are immutable named tuples)."""
    if id(node) not in holders:
        return node
    if not node.children:
        return node._replace(value=values[node.text])
    return node._replace(children=[_with_values(child, values, holders) for child in node.children])


# ------------------------------------------------------------------------------------------ module list


def _install_module_list() -> None:
    """moto's server routes each request by asking whether the host names one of moto's service packages,
    which lists moto's directory and stats each entry (~0.8 ms per request). The packages do not change
    while the process runs, so the list is read once."""
    from moto import backends

    def make_list(orig: Callable[..., Any]) -> Callable[..., Any]:
        found: list[tuple[str, ...]] = []

        def list_of_moto_modules() -> tuple[str, ...]:
            if not found:
                found.append(tuple(orig()))
            return found[0]

        return list_of_moto_modules

    _patch(backends, "list_of_moto_modules", make_list)


# ------------------------------------------------------------------------------------------ JSON requests

_Parse = Callable[[Any, Any], Any]
"""parse(parser, json_value) -> moto's parsed value; ``parser`` supplies the blob and timestamp parsers."""


def _install_json_parser() -> None:
    """Only moto's plain JSON protocol parser with its default map type is replaced; anything else (another
    protocol, a subclass, an OrderedDict map type) keeps moto's walk."""
    from moto.core.parse import JSONParser

    def make_parse_json_body(orig: Callable[..., Any]) -> Callable[..., Any]:
        def _parse_json_body(self: Any, raw_body: Any, shape: Any) -> Any:
            if type(self) is not JSONParser or self.MAP_TYPE is not dict:
                return orig(self, raw_body, shape)
            return compiled(shape)(self, self._parse_body_as_json(raw_body))  # type: ignore[no-untyped-call]

        return _parse_json_body

    _patch(JSONParser, "_parse_json_body", make_parse_json_body)


def _identity(_parser: Any, value: Any) -> Any:
    return value


def compiled(shape: Any) -> _Parse:
    """The parsing function of a shape, built once per (service model, shape name) and cached there."""
    resolver = shape._shape_resolver
    cache: dict[tuple[str, str], _Parse] = resolver.__dict__.setdefault("_tablesync_parsers", {})
    key = (shape.name, shape.type_name)
    found = cache.get(key)
    if found is None:
        found = _build(shape, cache, key)
    return found


def _build(shape: Any, cache: dict[tuple[str, str], _Parse], key: tuple[str, str]) -> _Parse:
    kind = shape.type_name
    if kind == "structure" and not shape.is_document_type:
        # Members are resolved on first use: shapes are recursive (AttributeValue holds maps of itself).
        resolved: list[list[tuple[str, str, _Parse]]] = []

        def parse_structure(parser: Any, value: Any) -> Any:
            if value is None:
                return None
            if not resolved:
                resolved.append([(name, member.serialization.get("name", name), compiled(member))
                                 for name, member in shape.members.items()])
            out = {}
            get = value.get
            for name, json_name, parse in resolved[0]:
                raw = get(json_name)
                if raw is not None:
                    out[name] = parse(parser, raw)
            return out

        built: _Parse = parse_structure
    elif kind == "list":
        def parse_list(parser: Any, value: Any) -> Any:
            parse = compiled(shape.member)
            if parse is _identity:
                return list(value)
            return [parse(parser, item) for item in value]

        built = parse_list
    elif kind == "map":
        def parse_map(parser: Any, value: Any) -> Any:
            parse_key, parse_value = compiled(shape.key), compiled(shape.value)
            return {parse_key(parser, k): parse_value(parser, v) for k, v in value.items()}

        built = parse_map
    elif kind == "blob":
        def parse_blob(parser: Any, value: Any) -> Any:
            return parser._blob_parser(value)

        built = parse_blob
    elif kind == "timestamp":
        def parse_timestamp(parser: Any, value: Any) -> Any:
            return parser._timestamp_parser(value)

        built = parse_timestamp
    elif kind in ("integer", "long", "short", "byte"):
        def parse_integer(_parser: Any, value: Any) -> Any:
            return int(value)

        built = parse_integer
    elif kind in ("float", "double"):
        def parse_float(_parser: Any, value: Any) -> Any:
            return float(value)

        built = parse_float
    elif kind in ("string", "boolean") or kind == "structure":  # document types are taken as they are
        built = _identity
    else:  # anything else: moto's own handler for that type
        def parse_other(parser: Any, value: Any) -> Any:
            return parser._parse_shape(shape, value)

        built = parse_other
    cache[key] = built
    return built
