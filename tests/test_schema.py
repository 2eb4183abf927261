"""``payflow.schema``: the JSON Schema of each type form the API's bodies are declared with."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal, Never, NotRequired, Required, TypedDict

import pytest

from payflow.schema import Generator, Meta, SchemaOf, anchored


class Colour(StrEnum):
    RED = "red"
    BLUE = "blue"


class Inner(TypedDict):
    n: int


class Outer(TypedDict):
    """An outer object.

    Its second paragraph."""

    inner: Inner
    maybe: NotRequired[Inner | None]
    tags: list[str]


class Partial(TypedDict, total=False):
    a: Required[int]
    b: str


class Child(Inner):
    """A child."""

    extra: Annotated[str, Meta("More.")]
    later: NotRequired[bool]


GEN = Generator()


@pytest.mark.parametrize(("tp", "expected"), [
    (str, {"type": "string"}),
    (int, {"type": "integer"}),
    (float, {"type": "number"}),
    (bool, {"type": "boolean"}),
    (None, {"type": "null"}),
    (Literal["a"], {"type": "string", "const": "a"}),
    (Literal[True], {"type": "boolean", "const": True}),
    (Literal["a", "b"], {"type": "string", "enum": ["a", "b"]}),
    (Literal["a", 1], {"enum": ["a", 1]}),
    (Colour, {"type": "string", "enum": ["red", "blue"]}),
    (list[int], {"type": "array", "items": {"type": "integer"}}),
    (dict[str, int], {"type": "object", "additionalProperties": {"type": "integer"}}),
    (dict[str, Never], {"type": "object", "additionalProperties": False}),
    (dict[Annotated[str, Meta(minLength=1, maxLength=4)], str],
     {"type": "object", "propertyNames": {"minLength": 1, "maxLength": 4},
      "additionalProperties": {"type": "string"}}),
    (int | None, {"type": ["integer", "null"]}),
    (Literal["a", "b"] | None, {"anyOf": [{"type": "string", "enum": ["a", "b"]},
                                          {"type": "null"}]}),
    (int | str, {"anyOf": [{"type": "integer"}, {"type": "string"}]}),
    (int | str | None, {"anyOf": [{"type": "integer"}, {"type": "string"}, {"type": "null"}]}),
    (Annotated[int, Meta("A count.", minimum=0)],
     {"description": "A count.", "type": "integer", "minimum": 0}),
    (Annotated[str | None, Meta("When.", format="date-time")],
     {"description": "When.", "type": ["string", "null"], "format": "date-time"}),
    (Annotated[str, Meta(enum=("x", "y"))], {"type": "string", "enum": ["x", "y"]}),
    (Annotated[Annotated[str, Meta("First.", maxLength=3)], Meta("Second.")],
     {"description": "Second.", "type": "string", "maxLength": 3}),
    (Annotated[dict[str, Any], SchemaOf(Inner | None), Meta("Documented.")],
     {"description": "Documented.", "type": ["object", "null"],
      "properties": {"n": {"type": "integer"}}, "required": ["n"]}),
])
def test_type_forms(tp: object, expected: dict[str, Any]) -> None:
    assert GEN.schema(tp) == expected


def test_a_typeddict_is_an_object_with_its_required_keys_and_description() -> None:
    assert GEN.schema(Outer) == {
        "description": "An outer object.\n\nIts second paragraph.",
        "type": "object",
        "properties": {
            "inner": {"type": "object", "properties": {"n": {"type": "integer"}},
                      "required": ["n"]},
            # "properties" and "required" apply to objects only: null passes them
            "maybe": {"type": ["object", "null"], "properties": {"n": {"type": "integer"}},
                      "required": ["n"]},
            "tags": {"type": "array", "items": {"type": "string"}}},
        "required": ["inner", "tags"]}
    assert GEN.schema(Partial)["required"] == ["a"]


def test_named_typeddicts_are_refs_closed_ones_forbid_other_members() -> None:
    gen = Generator({Inner: "Inner", Outer: "Outer"}, closed=[Inner])
    components = gen.components()
    assert list(components) == ["Inner", "Outer"]
    assert components["Inner"] == {"type": "object", "properties": {"n": {"type": "integer"}},
                                   "required": ["n"], "additionalProperties": False}
    ref = {"$ref": "#/components/schemas/Inner"}
    assert components["Outer"]["properties"]["inner"] == ref
    assert components["Outer"]["properties"]["maybe"] == {"anyOf": [ref, {"type": "null"}]}
    assert "additionalProperties" not in components["Outer"]


def test_an_extension_is_its_base_and_its_own_keys() -> None:
    gen = Generator({Inner: "Inner", Child: "Child"}, extends={Child: Inner})
    assert gen.components()["Child"] == {"description": "A child.", "allOf": [
        {"$ref": "#/components/schemas/Inner"},
        {"type": "object", "properties": {"extra": {"description": "More.", "type": "string"},
                                          "later": {"type": "boolean"}},
         "required": ["extra"]}]}
    assert Generator().schema(Child)["required"] == ["n", "extra"]  # flat when not told
    with pytest.raises(TypeError, match="does not extend"):
        Generator({Outer: "Outer", Child: "Child"}, extends={Child: Outer}).components()


@pytest.mark.parametrize("tp", [Any, bytes, tuple[int, ...], dict[int, str], set[str],
                                Literal[b"x"]])
def test_what_json_has_no_schema_for_is_refused(tp: object) -> None:
    with pytest.raises(TypeError):
        GEN.schema(tp)


def test_anchored() -> None:
    assert anchored("[a-z]+|x") == "^(?:[a-z]+|x)$"
