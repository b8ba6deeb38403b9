"""Typed request parts shared by the views: 32-bit integers, paging, and JSON bodies read
into pydantic models. The OpenAPI schema is generated from them (bss.api.openapi).

Integers are read as the documented API always has: a JSON number or a decimal string; in a
query an empty value is the same as none. A value that is not an integer, or out of range, is
a 400 naming the parameter ("id must be between 1 and 2147483647"), rendered by
`validation_message`.

Bodies are read whatever their Content-Type (the documented curl examples send JSON with
`-d`, which says form-urlencoded), parsed with a bound on nesting (a deeply nested body is a
400, not a RecursionError), then validated against their model.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine, Sequence
from typing import Annotated, Any

from fastapi import Depends, Query, Request, Response
from pydantic import BaseModel, BeforeValidator, WithJsonSchema
from pydantic_core import PydanticCustomError

from bss.api.query import TypedRoute, query_model
from bss.errors import Invalid

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
#: Nesting of a JSON body past which it is refused: the documented bodies use at most five.
MAX_JSON_DEPTH = 32
#: Error types whose message is written to follow the field's name ("id must be ...").
_NAMED = {"bss_not_int", "bss_range", "bss_text"}


def _int_between(lo: int, hi: int) -> Callable[[Any], int | None]:
    def check(value: Any) -> int | None:
        if value is None or value == "":
            return None
        if (
            isinstance(value, bool)
            or (isinstance(value, float) and not value.is_integer())
            # int() also reads other scripts' digits ("٣"): the API's numbers are ASCII
            or (isinstance(value, str) and not value.isascii())
        ):
            raise PydanticCustomError("bss_not_int", "must be an integer")
        try:
            number = int(value)
        except (TypeError, ValueError, OverflowError):
            raise PydanticCustomError("bss_not_int", "must be an integer") from None
        if not lo <= number <= hi:
            raise PydanticCustomError(
                "bss_range", "must be between {lo} and {hi}", {"lo": lo, "hi": hi}
            )
        return number

    return check


def read_int(value: Any, name: str, lo: int = INT32_MIN, hi: int = INT32_MAX) -> int | None:
    """An integer read by hand (the dashboard's pages), checked as the declared ones are."""
    try:
        return _int_between(lo, hi)(value)
    except PydanticCustomError as exc:
        raise Invalid(f"{name} {exc}") from None


def _schema(lo: int, hi: int) -> WithJsonSchema:
    return WithJsonSchema({"type": "integer", "minimum": lo, "maximum": hi})


# Optional integers in a range: an int or a decimal string; None (or "") is none.
#: A 32-bit integer (ids, member ids).
Int32 = Annotated[
    int | None, BeforeValidator(_int_between(INT32_MIN, INT32_MAX)), _schema(INT32_MIN, INT32_MAX)
]
#: A count or offset from 0.
Count = Annotated[int | None, BeforeValidator(_int_between(0, INT32_MAX)), _schema(0, INT32_MAX)]
#: A positive 32-bit id (segment ids) or size.
PositiveId = Annotated[
    int | None, BeforeValidator(_int_between(1, INT32_MAX)), _schema(1, INT32_MAX)
]


def _body_schema(lo: int, hi: int, digits: str) -> WithJsonSchema:
    """In a JSON body an integer may also come as a decimal string (the CLI's CSV import
    sends its cells so) or as null (none): the schema says so. The string form is described
    up to nine digits, all of which are in range."""
    return WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": lo, "maximum": hi},
                {"type": "string", "pattern": f"^{digits}$"},
                {"type": "null"},
            ]
        }
    )


# The same integers in a JSON body.
BodyInt32 = Annotated[
    int | None,
    BeforeValidator(_int_between(INT32_MIN, INT32_MAX)),
    _body_schema(INT32_MIN, INT32_MAX, "-?[0-9]{1,9}"),
]
BodyCount = Annotated[
    int | None,
    BeforeValidator(_int_between(0, INT32_MAX)),
    _body_schema(0, INT32_MAX, "[0-9]{1,9}"),
]
BodyPositiveId = Annotated[
    int | None,
    BeforeValidator(_int_between(1, INT32_MAX)),
    _body_schema(1, INT32_MAX, "[1-9][0-9]{0,8}"),
]

#: In a parameter's schema: the operation needs it, but the view checks it (with its
#: documented message, or only for some callers); bss.api.openapi marks it required.
CHECKED_BY_VIEW = "x-checked-by-view"

#: The member acted for, which an admin must name (a 400 "member_id is required" otherwise).
ScopedMemberIdQuery = Annotated[
    int | None,
    BeforeValidator(_int_between(INT32_MIN, INT32_MAX)),
    WithJsonSchema(
        {"type": "integer", "minimum": INT32_MIN, "maximum": INT32_MAX, CHECKED_BY_VIEW: True}
    ),
    Query(
        description="The member acted for: required for admins; other users act for their own "
        "member and may leave it out"
    ),
]

#: Query parameters used by many operations.
IdQuery = Annotated[Int32, Query(description="The object's id (32-bit)")]
#: The object an operation acts on: without it, 400 "id is required".
RequiredIdQuery = Annotated[Int32, Query(description="The object's id (32-bit; required)")]
MemberIdQuery = Annotated[
    Int32,
    Query(
        description="The member acted for: admins name it; other users act for their own "
        "member (may omit it)"
    ),
]
#: An optional text parameter (a query has no null: the schema says string).
Text = Annotated[str | None, WithJsonSchema({"type": "string"})]
RegionQuery = Annotated[
    Text,
    Query(
        description="Store regions (BSS_STORE_REGIONS): answer from this region's store instead "
        "of the local one; a region that is not configured is a 400"
    ),
]


class Page(BaseModel):
    """A page of a list: start_element and num_elements as asked; `start`, its first item
    (0-based), and `num`, its size (1 to 100)."""

    start_element: Annotated[Count, Query(description="First item of the page (0-based)")] = None
    num_elements: Annotated[
        PositiveId, Query(description="Items per page (at most 100; more is read as 100)")
    ] = None

    @property
    def start(self) -> int:
        return self.start_element or 0

    @property
    def num(self) -> int:
        return min(self.num_elements or 100, 100)


#: start_element and num_elements.
Paging = Annotated[Page, Depends(query_model(Page))]


# --- JSON bodies --------------------------------------------------------------------------------


class NotJson(json.JSONDecodeError):
    """A body that is not JSON, or nested too deeply; its message is the whole reason."""

    def __str__(self) -> str:
        return self.msg


def parse_json(raw: bytes) -> Any:
    """A JSON body (an empty one is {}), or NotJson: not JSON, or nested deeper than
    MAX_JSON_DEPTH (the message says which). FastAPI answers a json.JSONDecodeError as a
    validation error (json_invalid), which bss.api.app renders as a 400."""
    text = raw.decode("utf-8", errors="replace")
    if not text.strip():
        return {}
    try:
        value = json.loads(text)
    except RecursionError:
        raise NotJson(_TOO_DEEP, text, 0) from None
    except json.JSONDecodeError as exc:
        raise NotJson(str(exc), text, exc.pos) from exc
    if _depth_over(value, MAX_JSON_DEPTH):
        raise NotJson(_TOO_DEEP, text, 0)
    return value


_TOO_DEEP = f"nested deeper than {MAX_JSON_DEPTH} levels"


def _depth_over(value: Any, limit: int) -> bool:
    if not isinstance(value, dict | list):  # a number, a string, null: no nesting
        return False
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


class _JsonRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = parse_json(await self.body())
        return self._json


class JsonBodyRoute(TypedRoute):
    """A route whose declared body is read as JSON whatever its Content-Type says (the
    documented curl examples send it with `-d`, which says form-urlencoded), nested at most
    MAX_JSON_DEPTH levels. A body model's `wrong_shape` text is the message for a body that
    does not fit it (the documented example of the body)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        model = self.body_field.field_info.annotation if self.body_field is not None else None
        self.wrong_shape: str | None = getattr(model, "wrong_shape", None)

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        if self.body_field is None:
            return handler

        async def read_as_json(request: Request) -> Response:
            scope = dict(request.scope)
            scope["headers"] = [
                *(h for h in request.scope["headers"] if h[0] != b"content-type"),
                (b"content-type", b"application/json"),
            ]
            return await handler(_JsonRequest(scope, request.receive))

        return read_as_json


#: Models documenting a body that the service reads and checks itself (body_of).
BODY_MODELS: dict[str, type[BaseModel]] = {}


def body_of(model: type[BaseModel]) -> dict[str, Any]:
    """`openapi_extra` documenting `model` as the operation's JSON body, for a body the
    view passes on as sent (the service validates it, with its documented messages)."""
    BODY_MODELS[model.__name__] = model
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}


def validation_message(errors: Sequence[Any], wrong_shape: str | None = None) -> str:
    """The 400 message for a request that does not fit its declared parameters and models:
    the documented forms ("id must be an integer", "id is required"), naming the field. The
    query is reported before the body; in the body, a field's own error (an id out of range)
    before `wrong_shape`, the route's text for a body of another shape."""
    errors = list(errors)
    query = [e for e in errors if e.get("loc", ("",))[0] != "body"]
    named = [e for e in errors if e.get("type") in _NAMED]
    first = (query or named or errors or [{}])[0]
    if first.get("type") == "json_invalid":
        return f"request body is not valid JSON: {first.get('ctx', {}).get('error', '')}"
    if wrong_shape and first.get("loc", ("",))[0] == "body" and first.get("type") not in _NAMED:
        return wrong_shape
    loc = list(first.get("loc", ()))
    names = [str(part) for part in loc if not isinstance(part, int)]
    name = names[-1] if names else "request"
    kind = first.get("type", "")
    # an item of a list body is named as the services name it: "segments[3]: "
    where = "".join(
        f"{loc[i - 1]}[{part}]: " for i, part in enumerate(loc) if isinstance(part, int)
    )
    if kind in _NAMED:
        return f"{where}{name} {first['msg']}"
    if kind == "missing":
        return f"{where}{name} is required"
    return f"{'.'.join(map(str, loc))}: {first.get('msg', 'invalid request')}"
