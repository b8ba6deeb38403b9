"""The OpenAPI schema describes the API (issue 9.8, generated from the typed requests since
issue 24.2): schemathesis generates requests for every operation in /openapi.json of a real
`bss serve` (its limits raised) and checks each answer: no server error, a documented status
code and content type, a body that fits the schema, no schema-violating request accepted and
no schema-valid request rejected, except where the documented behaviour refuses a request
for a reason a schema cannot state (DOCUMENTED_REFUSALS, each said in the operation's
description). Operations added later are picked up from the schema by themselves.

Fuzzed requests may log the admin out, change its password or type, or delete users; a guard
repairs the admin after each case so that the next one runs logged in again."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from conftest import ADMIN_PASSWORD, ADMIN_USER, Api, ServerProc
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    positive_data_acceptance,
    response_schema_conformance,
    status_code_conformance,
)

#: Examples per operation and generation mode: bounds the run (about a minute in all).
EXAMPLES = 8
KEEPER, KEEPER_PASSWORD = "keeper", "keeper-password-1"
#: Operations whose fuzzed requests can log the admin out or change or delete a user.
MAY_HARM_ADMINS = {("DELETE", "/auth"), ("PUT", "/user"), ("DELETE", "/user")}
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    positive_data_acceptance,
    negative_data_rejection,
]


#: Operations whose schema-valid requests may still be refused with the documented 400,
#: for a reason no OpenAPI schema can state: only the 400 "schema-valid request rejected"
#: failure is excused for them, never a server error or a schema-violating request accepted.
DOCUMENTED_REFUSALS = {
    "POST /member": "an id that is taken",
    "POST /user": "a username that is taken; a member_id that does not exist",
    "PUT /user": "a member_id that does not exist, or none for a member user",
    "DELETE /user": "the caller's own user",
    "POST /segment": "a member or a code that does not exist or is taken; ids already taken",
    "PUT /segment": "the id may come in the query or in the body: one of them is needed",
    "POST /batch-segment-config": "the config's own rules (distinct separators, fields)",
    "PUT /batch-segment-config": "the config's own rules (distinct separators, fields)",
    "GET /user-segments": "exactly one user ID (uid, device_id+domain, ...) is needed",
    "POST /report": "the report's rules (groups within columns, dates, metrics per dimension)",
    "POST /rt-segment": "the body's own rules",
    "GET /user-links": "exactly one user ID is needed",
    "POST /id-link": "the body's own rules (links that cannot be applied are warnings)",
    "POST /user-optout": "each user names one ID form, as GET /user-segments takes them",
    "DELETE /user-optout": "exactly one user ID is needed",
    "POST /batch-segment": "a file_type other than segments or links; mode=replace of links",
    "GET /id-sync": "an admin names the member (a member's users default to their own)",
    "GET /getuid": "the redirect URL is the whole query string, which no parameter describes",
}


def _only_documented_refusals(label: str, exc: BaseException) -> bool:
    listed = [line.strip() for line in str(exc).splitlines() if line.strip().startswith("- ")]
    return (
        label in DOCUMENTED_REFUSALS
        and bool(listed)
        and all(line == "- ST202 Schema-valid request rejected" for line in listed)
    )


def _only_empty_query_values(exc: BaseException) -> bool:
    """A query integer made a string (or an object, which is sent as other parameters) that
    was accepted: the documented `?member_id=` (empty: no value) is the only string a query
    integer takes that is not a number."""
    text = str(exc)
    listed = [line.strip() for line in text.splitlines() if line.strip().startswith("- ")]
    return (
        bool(listed)
        and all(line == "- ST201 Schema-violating request accepted" for line in listed)
        and "in query - violates `type`" in text
        and ("became string" in text or "became object" in text)
    )


class AdminGuard:
    """Keeps an admin token valid across fuzzed cases, with a second admin to repair the first."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.admin = Api(url, ADMIN_USER, ADMIN_PASSWORD)
        self.admin_id = self.admin.ok("GET", "/auth")["user"]["id"]
        self.keeper_id = self.admin.user(KEEPER, None, "admin", KEEPER_PASSWORD)["id"]

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": self.admin.token or ""}

    def _admin_ok(self) -> bool:
        me = self.admin.call("GET", "/auth")
        return me["status"] == "OK" and me["user"]["user_type"] == "admin"

    def repair(self, case: Any) -> None:
        """After a case that could log the admin out, or change or delete a user: the admin
        logged in (its password and type restored through the keeper if the case changed
        them), and the keeper intact."""
        if (case.method.upper(), case.path) not in MAY_HARM_ADMINS:
            return
        if not self._admin_ok() and (
            self.admin.login(ADMIN_USER, ADMIN_PASSWORD)["status"] != "OK" or not self._admin_ok()
        ):
            keeper = Api(self.url, KEEPER, KEEPER_PASSWORD)
            fields = {"password": ADMIN_PASSWORD, "user_type": "admin"}
            keeper.ok("PUT", "/user", params={"id": self.admin_id}, json={"user": fields})
            assert self.admin.login(ADMIN_USER, ADMIN_PASSWORD)["status"] == "OK"
        if case.path != "/user":
            return
        if self.admin.get("/user", id=self.keeper_id)["status"] != "OK":
            self.keeper_id = self.admin.user(KEEPER, None, "admin", KEEPER_PASSWORD)["id"]
        else:
            fields = {"password": KEEPER_PASSWORD, "user_type": "admin"}
            self.admin.ok("PUT", "/user", params={"id": self.keeper_id}, json={"user": fields})


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    limits = {
        "requests_per_minute": 10**9,
        "logins_per_window": 10**6,
        "max_pending_jobs": 10**6,
    }
    proc = ServerProc(tmp_path_factory.mktemp("fuzz") / "data", limits).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def guard(fuzz_server: ServerProc) -> AdminGuard:
    return AdminGuard(fuzz_server.url)


def _fuzz(operation: Any, mode: GenerationMode, guard: AdminGuard) -> None:
    @given(case=operation.as_strategy(mode))
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
        derandomize=True,
    )
    def run(case: Any) -> None:
        try:
            case.call_and_validate(headers=guard.headers, checks=CHECKS)
        finally:
            guard.repair(case)

    run()


def test_every_operation_answers_as_documented(fuzz_server, guard):
    """One run over every operation the schema lists (positive and negative examples); the
    failures are collected so that one report names every operation that broke."""
    schema = schemathesis.openapi.from_url(f"{fuzz_server.url}/openapi.json")
    schema.config.update(base_url=fuzz_server.url)
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 20
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                _fuzz(operation, mode, guard)
            except Unsatisfiable:  # nothing can be made invalid: an operation without inputs
                continue
            except (Exception, BaseExceptionGroup) as exc:  # collect, report all at the end
                if mode is GenerationMode.POSITIVE and _only_documented_refusals(
                    operation.label, exc
                ):
                    continue
                if mode is GenerationMode.NEGATIVE and _only_empty_query_values(exc):
                    continue
                failures.append(f"{operation.label} ({mode.value}): {exc}")
    assert not failures, "\n\n".join(failures)


def test_schema_names_the_token_scheme_and_query_parameters(fuzz_server):
    doc = httpx.get(f"{fuzz_server.url}/openapi.json").json()
    schemes = doc["components"]["securitySchemes"]
    assert (schemes["token_header"]["in"], schemes["token_header"]["name"]) == (
        "header",
        "Authorization",
    )
    assert (schemes["token_cookie"]["in"], schemes["token_cookie"]["name"]) == (
        "cookie",
        "bss_token",
    )
    get_segment = doc["paths"]["/segment"]["get"]
    params = {p["name"]: p["schema"]["type"] for p in get_segment["parameters"]}
    assert params == {
        "id": "integer",
        "code": "string",
        "member_id": "integer",
        "search": "string",
        "start_element": "integer",
        "num_elements": "integer",
        "region": "string",
    }
    assert get_segment["responses"]["404"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Error"
    }
    assert doc["paths"]["/auth"]["post"]["security"] == []
