"""Query models: the parameters of a GET read into one pydantic model, validated in one call.

FastAPI validates a declared query parameter one at a time, in Python, each time: about
13 us a parameter per request on this machine kind, which made the lookups and the job
status, with twelve and ten optional parameters, cost twice the server CPU of their
hand-parsed forms. A query model is validated by pydantic's core in one call (a few
microseconds), with the same validators (bss.api.params) and the same 400s: its errors are
raised as FastAPI's, located in the query.

The parameters stay documented: `TypedRoute` adds a query model's fields to its operation's
OpenAPI parameters, as FastAPI would describe them had they been declared one by one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine, Iterator
from functools import cache
from typing import Any, ClassVar, TypeVar

from fastapi import Request, Response
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError

from bss.errors import Invalid

M = TypeVar("M", bound=BaseModel)


@cache
def query_model(model: type[M]) -> Callable[[Request], Awaitable[M]]:
    """A dependency reading the request's query into `model` (one instance per model, so
    that FastAPI reads it once per request however many dependencies ask for it). Unknown
    parameters are ignored, as declared ones are; a repeated one is refused before
    (TypedRoute)."""

    async def read(request: Request) -> M:
        try:
            return model.model_validate(dict(request.query_params))
        except ValidationError as exc:
            errors = exc.errors(include_url=False)
            raise RequestValidationError(
                [{**e, "loc": ("query", *e["loc"])} for e in errors]
            ) from None

    read.query_model = model  # type: ignore[attr-defined]
    read.__name__ = f"query_{model.__name__}"
    return read


def _models(dependant: Dependant) -> Iterator[type[BaseModel]]:
    for sub in dependant.dependencies:
        model = getattr(sub.call, "query_model", None)
        if model is not None:
            yield model
        yield from _models(sub)


def query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    """`model`'s fields as OpenAPI query parameters (the description beside the schema, as
    FastAPI writes a declared parameter)."""
    properties = model.model_json_schema()["properties"]
    parameters = []
    for name, field in model.model_fields.items():
        schema = dict(properties[name])
        schema.pop("description", None)
        if schema.get("default", 0) is None:
            del schema["default"]
        parameter: dict[str, Any] = {
            "name": field.alias or name,
            "in": "query",
            "required": field.is_required(),
            "schema": schema,
        }
        if field.description:
            parameter["description"] = field.description
        parameters.append(parameter)
    return parameters


async def one_value_per_query_parameter(request: Request) -> None:
    """Every query parameter of the API is one value: a repeated one (`?n=5&n=x`) is a 400
    naming it, rather than the last value silently winning over the others."""
    seen: set[str] = set()
    for name, _ in request.query_params.multi_items():
        if name in seen:
            raise Invalid(f"{name} is given more than once")
        seen.add(name)


class TypedRoute(APIRoute):
    """A route whose query models (query_model) are documented as its parameters, and
    whose query parameters are one value each (one_value_per_query_parameter), checked
    before its dependencies are solved (as a dependency, the check cost FastAPI's
    dependency machinery on every request)."""

    #: Whether a query parameter may be repeated (a partner's URL passed on as is).
    repeatable_query: ClassVar[bool] = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        extra = dict(self.openapi_extra or {})
        documented = {p["name"] for p in extra.get("parameters", [])}
        added = []
        for model in dict.fromkeys(_models(self.dependant)):
            for parameter in query_parameters(model):
                if parameter["name"] not in documented:
                    documented.add(parameter["name"])
                    added.append(parameter)
        if added:
            extra["parameters"] = [*extra.get("parameters", []), *added]
            self.openapi_extra = extra

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        if self.repeatable_query:
            return handler

        async def one_value_each(request: Request) -> Response:
            if b"&" in request.scope["query_string"]:
                await one_value_per_query_parameter(request)
            return await handler(request)

        return one_value_each


class RepeatableQueryRoute(TypedRoute):
    """A TypedRoute whose query parameters may repeat."""

    repeatable_query = True
