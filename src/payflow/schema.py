"""JSON Schema (2020-12, the dialect of OpenAPI 3.1) from the Python types that declare the
API's bodies: the ``TypedDict`` a ``to_dict()`` returns, or the one a request validator reads.

A leaf: the standard library only. :mod:`payflow.web.openapi_schemas` names the components.

===================================== ==========================================================
``str``, ``int``, ``float``, ``bool``  ``{"type": "string" | "integer" | "number" | "boolean"}``
``None``                              ``{"type": "null"}``
``Literal[a, b]``, a ``StrEnum``      ``{"type": ..., "enum": [a, b]}`` (``const`` for one)
``list[X]``                           ``{"type": "array", "items": X}``
``dict[K, V]``                        ``{"type": "object", "additionalProperties": V}`` and
                                      ``propertyNames`` when ``K`` is a constrained ``str``;
                                      ``dict[str, Never]`` is the empty object
``X | None``                          ``X`` with ``"null"`` added to its type, or ``anyOf``
``X | Y``                             ``{"anyOf": [X, Y]}``
a ``TypedDict``                       an object: its docstring is the description; every key
                                      is required unless ``NotRequired`` (or ``total=False``);
                                      closed (``additionalProperties: false``) on request;
                                      a ``$ref`` where it is a named component
``Annotated[X, Meta(...)]``           ``X`` with a description and JSON Schema keywords
``Annotated[X, SchemaOf(Y)]``         documented as ``Y``: for a field whose Python type is
                                      looser than its values (``dict[str, Any]``, ``str``)
===================================== ==========================================================

``Required``/``NotRequired`` are read from the annotations, not from ``__required_keys__``
(wrong in Python 3.11 under ``from __future__ import annotations``).
"""

from __future__ import annotations

import enum
import inspect
import types
import typing
from collections.abc import Collection, Mapping
from typing import Annotated, Any, Literal, NotRequired, Required

Schema = dict[str, Any]
_JSON_TYPES: typing.Final = ((bool, "boolean"), (int, "integer"), (float, "number"),
                             (str, "string"), (type(None), "null"))


class Meta:
    """``Annotated`` metadata: a description and JSON Schema keywords (``minimum``,
    ``maxLength``, ``pattern``, ``format``, ``enum``, ...; tuples become arrays)."""

    __slots__ = ("description", "keywords")

    def __init__(self, description: str | None = None, /, **keywords: object) -> None:
        self.description = description
        self.keywords = {k: list(v) if isinstance(v, tuple | frozenset) else v
                         for k, v in keywords.items()}

    def __repr__(self) -> str:
        return f"Meta({self.description!r}, **{self.keywords!r})"


class SchemaOf:
    """``Annotated`` metadata: document the field as ``type_`` instead of its Python type."""

    __slots__ = ("type_",)

    def __init__(self, type_: object) -> None:
        self.type_ = type_

    def __repr__(self) -> str:
        return f"SchemaOf({self.type_!r})"


def anchored(pattern: str) -> str:
    """A Python full-match regular expression as an anchored JSON Schema pattern."""
    return f"^(?:{pattern})$"


class Generator:
    """Schemas of types; a ``TypedDict`` in ``names`` is a ``$ref`` to
    ``#/components/schemas/<name>``, one in ``closed`` forbids other members, and one in
    ``extends`` (a subclass of another named ``TypedDict``) is ``allOf`` that one's ``$ref``
    and an object of its own keys."""

    def __init__(self, names: Mapping[object, str] | None = None,
                 closed: Collection[object] = (),
                 extends: Mapping[object, object] | None = None) -> None:
        self.names = dict(names or {})
        self.closed = frozenset(closed)
        self.extends = dict(extends or {})

    def components(self) -> dict[str, Schema]:
        """``{name: the object schema}`` of every named ``TypedDict``, in order."""
        return {name: self.object_schema(td) for td, name in self.names.items()}

    def schema(self, tp: object) -> Schema:
        """The schema of ``tp`` (``TypeError`` for a type it cannot describe)."""
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if origin is Annotated:
            return self._annotated(args[0], getattr(tp, "__metadata__", ()))
        if origin in (Required, NotRequired):
            return self.schema(args[0])
        if origin in (types.UnionType, typing.Union):
            return self._union(args)
        if origin is Literal:
            return _values(list(args))
        if origin is list:
            return {"type": "array", "items": self.schema(args[0])}
        if origin is dict:
            return self._dict(*args)
        if typing.is_typeddict(tp):
            name = self.names.get(tp)
            return {"$ref": f"#/components/schemas/{name}"} if name else self.object_schema(tp)
        if isinstance(tp, type) and issubclass(tp, enum.Enum):
            return _values([member.value for member in tp])
        if tp is None:
            return {"type": "null"}
        for python, json in _JSON_TYPES:
            if tp is python:
                return {"type": json}
        raise TypeError(f"no JSON Schema for {tp!r}")

    def object_schema(self, td: Any) -> Schema:
        """The object schema of a ``TypedDict`` (never a ``$ref``)."""
        if not typing.is_typeddict(td):
            raise TypeError(f"{td!r} is not a TypedDict")
        hints = typing.get_type_hints(td, include_extras=True)
        schema: Schema = {"description": _paragraphs(td.__doc__)} if td.__doc__ else {}
        if (base := self.extends.get(td)) is not None:
            inherited = typing.get_type_hints(base, include_extras=True)
            if base not in self.names or not inherited.keys() <= hints.keys():
                raise TypeError(f"{td!r} does not extend the named {base!r}")
            own = {key: hint for key, hint in hints.items() if key not in inherited}
            return schema | {"allOf": [self.schema(base), self._object(own, td)]}
        return schema | self._object(hints, td)

    def _object(self, hints: dict[str, Any], td: Any) -> Schema:
        schema: Schema = {"type": "object",
                          "properties": {key: self.schema(hint) for key, hint in hints.items()}}
        if required := [key for key, hint in hints.items() if _required(hint, td.__total__)]:
            schema["required"] = required
        if td in self.closed:
            schema["additionalProperties"] = False
        return schema

    def _annotated(self, tp: object, metadata: tuple[object, ...]) -> Schema:
        for item in metadata:
            if isinstance(item, SchemaOf):
                tp = item.type_
        schema = self.schema(tp)
        for item in metadata:
            if isinstance(item, Meta):
                if item.description is not None:
                    schema = {"description": item.description,
                              **{k: v for k, v in schema.items() if k != "description"}}
                schema |= item.keywords
        return schema

    def _union(self, args: tuple[object, ...]) -> Schema:
        others = [arg for arg in args if arg is not type(None)]
        nullable = len(others) < len(args)
        if len(others) == 1:
            schema = self.schema(others[0])
            if not nullable:
                return schema
            if isinstance(schema.get("type"), str) and not {"enum", "const"} & schema.keys():
                return {**schema, "type": [schema["type"], "null"]}
            return {"anyOf": [schema, {"type": "null"}]}
        return {"anyOf": [self.schema(arg) for arg in others]
                + ([{"type": "null"}] if nullable else [])}

    def _dict(self, key: object, value: object) -> Schema:
        schema: Schema = {"type": "object"}
        names = self.schema(key)
        if names.pop("type", None) != "string":
            raise TypeError(f"JSON object keys are strings, not {key!r}")
        if names:
            schema["propertyNames"] = names
        schema["additionalProperties"] = (False if value is typing.Never
                                          else self.schema(value))
        return schema


def _values(values: list[object]) -> Schema:
    """``const`` or ``enum``, with the JSON type when the values share one."""
    kinds = {next((json for python, json in _JSON_TYPES if isinstance(v, python)), None)
             for v in values}
    if None in kinds:
        raise TypeError(f"no JSON value among {values!r}")
    schema: Schema = {"type": kinds.pop()} if len(kinds) == 1 else {}
    return schema | ({"const": values[0]} if len(values) == 1 else {"enum": values})


def _required(hint: object, total: bool) -> bool:
    while (origin := typing.get_origin(hint)) is Annotated:
        hint = typing.get_args(hint)[0]
    return True if origin is Required else False if origin is NotRequired else total


def _paragraphs(doc: str) -> str:
    """A docstring as a description: its lines joined, its paragraphs kept."""
    return "\n\n".join(" ".join(p.split()) for p in inspect.cleandoc(doc).split("\n\n"))
