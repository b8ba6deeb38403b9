"""/auth, /member, /user."""

from __future__ import annotations

from functools import partial
from typing import Any

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool

from bss.accounts import service
from bss.accounts.service import Principal
from bss.api.deps import (
    TOKEN_COOKIE,
    body_doc,
    client_address,
    int_param,
    json_body,
    principal,
    require_admin,
    token_of,
)
from bss.api.envelope import ok, ok_list
from bss.errors import Forbidden, Invalid
from bss.lifecycle.erasure import erase_member

router = APIRouter()

_MEMBER_BODY = body_doc("member", {"id": "integer", "name": "string", "state": "string"})
_USER_BODY = body_doc(
    "user",
    {"username": "string", "password": "string", "user_type": "string", "member_id": "integer"},
)

_AUTH_BODY = {
    "requestBody": {
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "auth": {
                            "type": "object",
                            "properties": {
                                "username": {"type": "string"},
                                "password": {"type": "string"},
                            },
                            "required": ["username", "password"],
                        }
                    },
                }
            }
        },
        "required": True,
    }
}


def _obj(body: Any, name: str) -> dict[str, Any]:
    if isinstance(body, dict) and isinstance(body.get(name), dict):
        return body[name]
    if isinstance(body, dict) and name not in body and body:
        return body
    raise Invalid(f'expected a JSON body like {{"{name}": {{...}}}}')


@router.post(
    "/auth",
    tags=["auth"],
    summary="Log in; returns a token (also set as a cookie)",
    openapi_extra=_AUTH_BODY,
)
async def post_auth(request: Request) -> Any:
    body = await json_body(request)
    auth = body.get("auth") if isinstance(body, dict) else None
    if (
        not isinstance(auth, dict)
        or not isinstance(auth.get("username"), str)
        or not isinstance(auth.get("password"), str)
    ):
        raise Invalid('expected {"auth": {"username": "...", "password": "..."}}')
    settings = request.app.state.settings
    token = await run_in_threadpool(
        partial(
            service.login,
            request.app.state.db,
            settings,
            auth["username"],
            auth["password"],
            limiter=request.app.state.limiter,
            client=client_address(request),
            device=request.cookies.get(service.DEVICE_COOKIE),
        )
    )
    resp = ok("token", token)
    device = await run_in_threadpool(service.device_proof, request.app.state.db, auth["username"])
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
def get_auth(p: Principal = Depends(principal)) -> Any:
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
def delete_auth(request: Request, p: Principal = Depends(principal)) -> Any:
    token = token_of(request)
    if token:
        service.logout(request.app.state.db, token)
    resp = ok(None)
    resp.delete_cookie(TOKEN_COOKIE)
    return resp


# --- /member ---------------------------------------------------------------------------------


@router.get("/member", tags=["member"], summary="Members (admin: all or ?id=; others: their own)")
def get_member(request: Request, p: Principal = Depends(principal)) -> Any:
    db = request.app.state.db
    member_id = int_param(request, "id")
    if not p.is_admin:
        if member_id is not None and member_id != p.member_id:
            raise Forbidden()
        return ok("member", service.get_member(db, p.member_id))  # type: ignore[arg-type]
    if member_id is not None:
        return ok("member", service.get_member(db, member_id))
    items = service.list_members(db)
    return ok_list("members", items, count=len(items), start_element=0, num_elements=len(items))


@router.post(
    "/member", tags=["member"], summary="Create a member (admin)", openapi_extra=_MEMBER_BODY
)
async def post_member(request: Request, p: Principal = Depends(principal)) -> Any:
    require_admin(p)
    data = _obj(await json_body(request), "member")
    return ok("member", await run_in_threadpool(service.create_member, request.app.state.db, data))


@router.put(
    "/member", tags=["member"], summary="Update a member (admin), ?id=", openapi_extra=_MEMBER_BODY
)
async def put_member(request: Request, p: Principal = Depends(principal)) -> Any:
    require_admin(p)
    member_id = int_param(request, "id")
    if member_id is None:
        raise Invalid("id is required")
    data = _obj(await json_body(request), "member")
    return ok(
        "member",
        await run_in_threadpool(service.update_member, request.app.state.db, member_id, data),
    )


@router.delete(
    "/member",
    tags=["member"],
    summary="Erase a member (admin), ?id=: its users, segments, memberships in every region, "
    "jobs, files, figures; an audit record stays",
)
def delete_member(request: Request, p: Principal = Depends(principal)) -> Any:
    require_admin(p)
    member_id = int_param(request, "id")
    if member_id is None:
        raise Invalid("id is required")
    state = request.app.state
    erase_member(
        state.db,
        member_id,
        state.stores.get(),
        state.stores.remote_regions,
        state.jobs.files,
        requested_by=p.username,
    )
    return ok(None)


# --- /user -----------------------------------------------------------------------------------


@router.get(
    "/user", tags=["user"], summary="Users (admin: all, ?id=, ?member_id=; others: themselves)"
)
def get_user(request: Request, p: Principal = Depends(principal)) -> Any:
    db = request.app.state.db
    if not p.is_admin:
        return ok("user", service.get_user(db, p.user_id))
    user_id = int_param(request, "id")
    if user_id is not None:
        return ok("user", service.get_user(db, user_id))
    items = service.list_users(db, member_id=int_param(request, "member_id"))
    return ok_list("users", items, count=len(items), start_element=0, num_elements=len(items))


@router.post(
    "/user",
    tags=["user"],
    summary="Create a user (admin): username, password, user_type, member_id",
    openapi_extra=_USER_BODY,
)
async def post_user(request: Request, p: Principal = Depends(principal)) -> Any:
    require_admin(p)
    data = _obj(await json_body(request), "user")
    return ok("user", await run_in_threadpool(service.create_user, request.app.state.db, data))


@router.put("/user", tags=["user"], summary="Update a user (admin), ?id=", openapi_extra=_USER_BODY)
async def put_user(request: Request, p: Principal = Depends(principal)) -> Any:
    require_admin(p)
    user_id = int_param(request, "id")
    if user_id is None:
        raise Invalid("id is required")
    data = _obj(await json_body(request), "user")
    return ok(
        "user", await run_in_threadpool(service.update_user, request.app.state.db, user_id, data)
    )


@router.delete("/user", tags=["user"], summary="Delete a user (admin), ?id=")
def delete_user(request: Request, p: Principal = Depends(principal)) -> Any:
    require_admin(p)
    user_id = int_param(request, "id")
    if user_id is None:
        raise Invalid("id is required")
    if user_id == p.user_id:
        raise Invalid("you cannot delete yourself")
    service.delete_user(request.app.state.db, user_id)
    return ok(None)


__all__ = ["router"]
