"""/auth, /member, /user."""

from __future__ import annotations

from functools import partial
from typing import Annotated, Any, ClassVar

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.concurrency import run_in_threadpool

from bss.accounts import service
from bss.api.deps import (
    TOKEN_COOKIE,
    AppSettings,
    Caller,
    Db,
    Jobs,
    Limiter,
    Stores,
    client_address,
    require_admin,
    token_of,
)
from bss.api.envelope import ok, ok_list
from bss.api.params import BodyInt32, IdQuery, JsonBodyRoute, MemberIdQuery, RequiredIdQuery
from bss.errors import Forbidden, Invalid
from bss.lifecycle.erasure import erase_member

router = APIRouter(route_class=JsonBodyRoute)


class Credentials(BaseModel):
    username: str
    password: str


class AuthBody(BaseModel):
    """POST /auth: {"auth": {"username": "...", "password": "..."}}."""

    wrong_shape: ClassVar[str] = 'expected {"auth": {"username": "...", "password": "..."}}'
    auth: Credentials


def _wrapped_or_not(schema: dict[str, Any], model: type[BaseModel]) -> None:
    """The schema says what _Wrapped reads: {name: {...}}, or the fields alone (at least
    one, and no `name`)."""
    name = next(iter(model.model_fields))
    fields = schema["properties"][name]
    schema.pop("properties")
    schema.pop("required")
    schema["anyOf"] = [
        {"type": "object", "properties": {name: fields}, "required": [name]},
        {"allOf": [fields], "minProperties": 1, "not": {"required": [name]}},
    ]


class _Wrapped(BaseModel):
    """A body {name: {...}}; the fields alone, unwrapped, are read the same way (clients
    have always been allowed to leave the wrapper out)."""

    model_config = ConfigDict(json_schema_extra=_wrapped_or_not)

    @model_validator(mode="before")
    @classmethod
    def _wrap(cls, data: Any) -> Any:
        name = next(iter(cls.model_fields))
        if isinstance(data, dict) and name not in data and data:
            return {name: data}
        return data


#: active (the default) or inactive, in any letter case.
State = Annotated[
    str | None,
    Field(
        description="active (the default) or inactive, in any letter case",
        # checked by the service, which names the field in its message
        json_schema_extra={
            "pattern": "^([aA][cC][tT][iI][vV][eE]|[iI][nN][aA][cC][tT][iI][vV][eE])?$"
        },
    ),
]


class MemberFields(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: BodyInt32 = Field(None, description="Chosen id (optional; 32-bit)")
    name: str | None = None
    state: State = None


class MemberBody(_Wrapped):
    """{"member": {...}} (or the fields alone)."""

    wrong_shape: ClassVar[str] = 'expected a JSON body like {"member": {...}}'

    member: MemberFields


class UserFields(BaseModel):
    model_config = ConfigDict(extra="allow")
    username: str | None = None
    password: str | None = Field(
        None, description="At least 8 characters", json_schema_extra={"minLength": 8}
    )
    user_type: str | None = Field(
        None,
        description="admin, member (the default) or data_provider",
        json_schema_extra={"enum": ["admin", "member", "data_provider", None]},
    )
    member_id: BodyInt32 = Field(None, description="Required for member and data_provider users")


class UserBody(_Wrapped):
    """{"user": {...}} (or the fields alone)."""

    wrong_shape: ClassVar[str] = 'expected a JSON body like {"user": {...}}'

    user: UserFields


def _new_user_schema(schema: dict[str, Any]) -> None:
    """A username with something in it, a password of 8 characters or more."""
    schema["required"] = ["username", "password"]
    schema["properties"]["username"] = {"type": "string", "pattern": "\\S"}
    schema["properties"]["password"] = {"type": "string", "minLength": 8}


class NewUserFields(UserFields):
    """A new user: username and password are required (the service says so when missing)."""

    model_config = ConfigDict(json_schema_extra=_new_user_schema)


class NewUserBody(_Wrapped):
    """{"user": {...}} (or the fields alone)."""

    wrong_shape: ClassVar[str] = UserBody.wrong_shape

    user: NewUserFields


def _fields(model: BaseModel) -> dict[str, Any]:
    """The fields a body gave (the services tell a field left out from one set to null)."""
    return model.model_dump(exclude_unset=True)


@router.post(
    "/auth",
    tags=["auth"],
    summary="Log in; returns a token (also set as a cookie)",
)
async def post_auth(
    request: Request, body: AuthBody, db: Db, settings: AppSettings, limiter: Limiter
) -> Any:
    token = await run_in_threadpool(
        partial(
            service.login,
            db,
            settings,
            body.auth.username,
            body.auth.password,
            limiter=limiter,
            client=client_address(request),
            device=request.cookies.get(service.DEVICE_COOKIE),
        )
    )
    resp = ok("token", token)
    device = await run_in_threadpool(service.device_proof, db, body.auth.username)
    resp.set_cookie(
        service.DEVICE_COOKIE,
        device or "",
        max_age=service.DEVICE_COOKIE_SECONDS,
        path="/auth",
        httponly=True,
        samesite="strict",
        secure=(settings.public_url or "").startswith("https://"),
    )
    resp.set_cookie(
        TOKEN_COOKIE,
        token,
        max_age=settings.token_ttl_seconds,
        httponly=True,
        samesite="lax",
        secure=(settings.public_url or "").startswith("https://"),
    )
    return resp


@router.get("/auth", tags=["auth"], summary="The logged-in user")
def get_auth(p: Caller) -> Any:
    return ok(
        "user",
        {
            "id": p.user_id,
            "username": p.username,
            "user_type": p.user_type,
            "member_id": p.member_id,
        },
    )


@router.delete("/auth", tags=["auth"], summary="Log out (invalidate the token)")
def delete_auth(request: Request, p: Caller, db: Db) -> Any:
    token = token_of(request)
    if token:
        service.logout(db, token)
    resp = ok(None)
    resp.delete_cookie(TOKEN_COOKIE)
    return resp


# --- /member ---------------------------------------------------------------------------------


def _required(value: int | None, name: str = "id") -> int:
    if value is None:
        raise Invalid(f"{name} is required")
    return value


@router.get("/member", tags=["member"], summary="Members (admin: all or ?id=; others: their own)")
def get_member(p: Caller, db: Db, id: IdQuery = None) -> Any:
    if not p.is_admin:
        if id is not None and id != p.member_id:
            raise Forbidden()
        return ok("member", service.get_member(db, p.member_id))  # type: ignore[arg-type]
    if id is not None:
        return ok("member", service.get_member(db, id))
    items = service.list_members(db)
    return ok_list("members", items, count=len(items), start_element=0, num_elements=len(items))


@router.post(
    "/member",
    description="Refused with 400 SYNTAX, whatever the schema allows: an id that is taken.",
    tags=["member"],
    summary="Create a member (admin)",
)
async def post_member(p: Caller, db: Db, body: MemberBody) -> Any:
    require_admin(p)
    return ok("member", await run_in_threadpool(service.create_member, db, _fields(body.member)))


@router.put(
    "/member",
    tags=["member"],
    summary="Update a member (admin), ?id=",
)
async def put_member(p: Caller, db: Db, id: RequiredIdQuery, body: MemberBody) -> Any:
    require_admin(p)
    member_id = _required(id)
    data = _fields(body.member)
    return ok("member", await run_in_threadpool(service.update_member, db, member_id, data))


@router.delete(
    "/member",
    tags=["member"],
    summary="Erase a member (admin), ?id=: its users, segments, memberships in every region, "
    "jobs, files, figures; an audit record stays",
)
def delete_member(p: Caller, db: Db, stores: Stores, jobs: Jobs, id: RequiredIdQuery) -> Any:
    require_admin(p)
    member_id = _required(id)
    erase_member(
        db, member_id, stores.get(), stores.remote_regions, jobs.files, requested_by=p.username
    )
    return ok(None)


# --- /user -----------------------------------------------------------------------------------


@router.get(
    "/user", tags=["user"], summary="Users (admin: all, ?id=, ?member_id=; others: themselves)"
)
def get_user(p: Caller, db: Db, id: IdQuery = None, member_id: MemberIdQuery = None) -> Any:
    if not p.is_admin:
        return ok("user", service.get_user(db, p.user_id))
    if id is not None:
        return ok("user", service.get_user(db, id))
    items = service.list_users(db, member_id=member_id)
    return ok_list("users", items, count=len(items), start_element=0, num_elements=len(items))


@router.post(
    "/user",
    description="Refused with 400 SYNTAX, whatever the schema allows: a username that is taken, a member_id that does not exist.",
    tags=["user"],
    summary="Create a user (admin): username, password, user_type, member_id",
)
async def post_user(p: Caller, db: Db, body: NewUserBody) -> Any:
    require_admin(p)
    return ok("user", await run_in_threadpool(service.create_user, db, _fields(body.user)))


@router.put(
    "/user",
    description="Refused with 400 SYNTAX, whatever the schema allows: a member_id that does not exist, or none for a member or data_provider user.",
    tags=["user"],
    summary="Update a user (admin), ?id=",
)
async def put_user(p: Caller, db: Db, id: RequiredIdQuery, body: UserBody) -> Any:
    require_admin(p)
    user_id = _required(id)
    return ok("user", await run_in_threadpool(service.update_user, db, user_id, _fields(body.user)))


@router.delete(
    "/user",
    description="Refused with 400 SYNTAX, whatever the schema allows: the caller's own user.",
    tags=["user"],
    summary="Delete a user (admin), ?id=",
)
def delete_user(p: Caller, db: Db, id: RequiredIdQuery) -> Any:
    require_admin(p)
    user_id = _required(id)
    if user_id == p.user_id:
        raise Invalid("you cannot delete yourself")
    service.delete_user(db, user_id)
    return ok(None)
