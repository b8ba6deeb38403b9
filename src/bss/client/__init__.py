"""`BssClient`: a small Python client for the documented API (httpx, streaming uploads).

client = BssClient("http://127.0.0.1:8080", "user", "password")
job = client.upload_file(member_id=1, path=Path("segments.txt.gz"))
print(job["phase"], job["num_valid"])
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

CHUNK = 1 << 20
DEVICE_COOKIE = "bss_device"
FINAL_PHASES = ("completed", "error")


class ApiError(Exception):
    """An ERROR envelope (or a non-JSON failure) from the service."""

    def __init__(self, status_code: int, response: dict[str, Any]) -> None:
        self.status_code = status_code
        self.response = response
        self.error_id = response.get("error_id")
        self.error_code = response.get("error_code")
        self.errors = response.get("errors")
        text = response.get("error") or "; ".join(response.get("errors") or []) or str(response)
        super().__init__(f"HTTP {status_code}: {self.error_id or self.error_code}: {text}")


class BssClient:
    """Log in with a username and password, or reuse a `token` from an earlier login.

    `on_token` is called with every new token (the CLI keeps it in a file). With only a token,
    an expired one is an error (NOAUTH); with credentials the client logs in again once."""

    def __init__(
        self,
        base_url: str,
        username: str | None = None,
        password: str | None = None,
        *,
        token: str | None = None,
        on_token: Callable[[str], None] | None = None,
        device: str | None = None,
        timeout: float = 60.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.username = username
        self.password = password
        self.http = httpx.Client(base_url=self.base_url, timeout=timeout)
        self.token: str | None = token
        self.on_token = on_token
        #: The device cookie of an earlier login: the service lets a known client's correct
        #: password through while strangers' failures have stopped everyone else.
        self.device = device

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> BssClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # --- plumbing ---------------------------------------------------------------------------

    @staticmethod
    def _unwrap(resp: httpx.Response) -> dict[str, Any]:
        try:
            body = resp.json()["response"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ApiError(resp.status_code, {"error": resp.text[:500]}) from exc
        if body.get("status") != "OK":
            raise ApiError(resp.status_code, body)
        return body

    @property
    def can_login(self) -> bool:
        return self.username is not None and self.password is not None

    def login(self) -> str:
        if not self.can_login:
            raise ApiError(401, {"error_id": "NOAUTH", "error": "no token and no credentials"})
        resp = self.http.post(
            "/auth",
            json={"auth": {"username": self.username, "password": self.password}},
            headers={"Cookie": f"{DEVICE_COOKIE}={self.device}"} if self.device else None,
        )
        self.token = self._unwrap(resp)["token"]
        self.device = resp.cookies.get(DEVICE_COOKIE) or self.device
        if self.on_token is not None:
            self.on_token(self.token)
        return self.token

    def logout(self) -> None:
        if self.token is not None:
            self.request("DELETE", "/auth")
            self.token = None

    def request(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        """Send with the token; log in again once when the service answers NOAUTH (and the
        client has credentials); wait once for Retry-After on 429 RATE_EXCEEDED."""
        if self.token is None:
            self.login()
        for attempt in (0, 1):
            headers = {**kwargs.pop("headers", {}), "Authorization": self.token or ""}
            resp = self.http.request(method, path, headers=headers, **kwargs)
            try:
                return self._unwrap(resp)
            except ApiError as exc:
                if exc.error_id == "NOAUTH" and attempt == 0 and self.can_login:
                    self.login()
                    continue
                if resp.status_code == 429 and exc.error_code == "RATE_EXCEEDED" and attempt == 0:
                    time.sleep(min(60, int(resp.headers.get("Retry-After", "1"))))
                    continue
                raise
        raise AssertionError("unreachable")

    @staticmethod
    def _one(job: Any) -> dict[str, Any]:
        return job[0] if isinstance(job, list) else job

    # --- jobs -------------------------------------------------------------------------------

    def create_job(
        self,
        member_id: int,
        file_type: str = "segments",
        *,
        replace: bool = False,
        force: bool = False,
    ) -> dict[str, Any]:
        """The new job; `max_file_bytes` in it is the service's per-file limit (when it says).
        `file_type` "links" for a link file; `replace`: a replace-mode upload (`force`: past
        the removal guard)."""
        params: dict[str, Any] = {"member_id": member_id}
        if file_type != "segments":
            params["file_type"] = file_type
        if replace:
            params.update(mode="replace", force="true" if force else "false")
        body = self.request("POST", "/batch-segment", params=params)
        job = self._one(body["batch_segment_upload_job"])
        if "max_file_bytes" in body:
            job = {**job, "max_file_bytes": body["max_file_bytes"]}
        return job

    def upload(
        self, upload_url: str, path: Path, *, progress: Callable[[int], None] | None = None
    ) -> dict[str, Any]:
        """Stream the file to the job's upload URL (never read whole into memory)."""
        size = path.stat().st_size

        def chunks() -> Iterator[bytes]:
            with path.open("rb") as fh:
                while block := fh.read(CHUNK):
                    if progress is not None:
                        progress(len(block))
                    yield block

        headers = {
            "Content-Type": "application/octet-stream",
            "Content-Length": str(size),
            "Authorization": self.token or "",
        }
        try:
            resp = self.http.post(upload_url, content=chunks(), headers=headers, timeout=None)
        except httpx.TransportError as exc:
            # The service may refuse mid-stream (a limit) and close the connection before we
            # could read its answer: the job says what happened.
            job_id = upload_url.rstrip("/").rsplit("/", 1)[-1]
            try:
                body = self.request("GET", "/batch-segment", params={"job_id": job_id})
                job = self._one(body["batch_segment_upload_job"])
            except (ApiError, httpx.HTTPError):
                raise exc from None
            raise ApiError(
                0,
                {
                    "error_code": job.get("error_code"),
                    "error": f"upload failed: {job.get('error_message') or job.get('phase')}",
                },
            ) from exc
        return self._one(self._unwrap(resp)["batch_segment_upload_job"])

    def get_job(self, member_id: int, job_id: str) -> dict[str, Any]:
        body = self.request(
            "GET", "/batch-segment", params={"member_id": member_id, "job_id": job_id}
        )
        return self._one(body["batch_segment_upload_job"])

    def list_jobs(
        self,
        member_id: int,
        *,
        start_element: int = 0,
        num_elements: int = 100,
        sort: str | None = None,
    ) -> dict[str, Any]:
        params: dict[str, Any] = {
            "member_id": member_id,
            "start_element": start_element,
            "num_elements": num_elements,
        }
        if sort:
            params["sort"] = sort
        return self.request("GET", "/batch-segment", params=params)

    def wait(
        self,
        member_id: int,
        job_id: str,
        *,
        poll: float = 1.0,
        timeout: float | None = None,
        on_update: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.get_job(member_id, job_id)
            if on_update is not None:
                on_update(job)
            if job["phase"] in FINAL_PHASES:
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job['phase']} after {timeout}s")
            time.sleep(poll)

    def upload_file(
        self,
        member_id: int,
        path: Path,
        *,
        wait: bool = True,
        poll: float = 1.0,
        timeout: float | None = None,
        file_type: str = "segments",
    ) -> dict[str, Any]:
        """Create a job, stream the file, and (by default) wait until completed or error."""
        job = self.create_job(member_id, file_type)
        self.upload(job["upload_url"], path)
        if not wait:
            return self.get_job(member_id, job["job_id"])
        return self.wait(member_id, job["job_id"], poll=poll, timeout=timeout)

    def error_report(self, member_id: int, job_id: str) -> str:
        if self.token is None:
            self.login()
        resp = self.http.get(
            "/batch-segment/error-report",
            params={"member_id": member_id, "job_id": job_id},
            headers={"Authorization": self.token or ""},
        )
        if resp.status_code != 200:
            self._unwrap(resp)
        return resp.text

    # --- administration: members, users, segments, configs -----------------------------------

    def list_members(self) -> list[dict[str, Any]]:
        body = self.request("GET", "/member")  # a member user gets its own member only
        return body["members"] if "members" in body else [body["member"]]

    def get_member(self, member_id: int) -> dict[str, Any]:
        return self.request("GET", "/member", params={"id": member_id})["member"]

    def create_member(self, fields: dict[str, Any]) -> dict[str, Any]:
        return self.request("POST", "/member", json={"member": fields})["member"]

    def update_member(self, member_id: int, fields: dict[str, Any]) -> dict[str, Any]:
        body = self.request("PUT", "/member", params={"id": member_id}, json={"member": fields})
        return body["member"]

    def delete_member(self, member_id: int) -> None:
        self.request("DELETE", "/member", params={"id": member_id})

    def list_users(self, member_id: int | None = None) -> list[dict[str, Any]]:
        params = {} if member_id is None else {"member_id": member_id}
        body = self.request("GET", "/user", params=params)  # a member user gets itself only
        return body["users"] if "users" in body else [body["user"]]

    def get_user(self, user_id: int) -> dict[str, Any]:
        return self.request("GET", "/user", params={"id": user_id})["user"]

    def create_user(self, fields: dict[str, Any]) -> dict[str, Any]:
        return self.request("POST", "/user", json={"user": fields})["user"]

    def update_user(self, user_id: int, fields: dict[str, Any]) -> dict[str, Any]:
        return self.request("PUT", "/user", params={"id": user_id}, json={"user": fields})["user"]

    def delete_user(self, user_id: int) -> None:
        self.request("DELETE", "/user", params={"id": user_id})

    def list_segments(
        self, member_id: int | None = None, *, search: str | None = None
    ) -> list[dict[str, Any]]:
        """Every segment (all pages) of a member, or of all members for an admin."""
        params: dict[str, Any] = {"num_elements": 100}
        if member_id is not None:
            params["member_id"] = member_id
        if search:
            params["search"] = search
        found: list[dict[str, Any]] = []
        while True:
            body = self.request("GET", "/segment", params={**params, "start_element": len(found)})
            found.extend(body["segments"])
            if not body["segments"] or len(found) >= body["count"]:
                return found

    def get_segment(self, segment_id: int, member_id: int | None = None) -> dict[str, Any]:
        params = (
            {"id": segment_id} if member_id is None else {"id": segment_id, "member_id": member_id}
        )
        return self.request("GET", "/segment", params=params)["segment"]

    def create_segment(self, member_id: int, fields: dict[str, Any]) -> dict[str, Any]:
        body = self.request(
            "POST", "/segment", params={"member_id": member_id}, json={"segment": fields}
        )
        return body["segment"]

    def create_segments(self, member_id: int, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Up to 1000 segments at once, all or nothing (`id` keeps an existing segment id)."""
        body = self.request(
            "POST", "/segment", params={"member_id": member_id}, json={"segments": items}
        )
        return body["segments"]

    def update_segment(self, segment_id: int, fields: dict[str, Any]) -> dict[str, Any]:
        body = self.request("PUT", "/segment", params={"id": segment_id}, json={"segment": fields})
        return body["segment"]

    def delete_segment(self, segment_id: int) -> None:
        self.request("DELETE", "/segment", params={"id": segment_id})

    def get_config(self, member_id: int) -> dict[str, Any]:
        body = self.request("GET", "/batch-segment-config", params={"member_id": member_id})
        return body["batch_segment_upload_config"]

    def set_config(
        self, member_id: int, fields: dict[str, Any], *, merge: bool = False
    ) -> dict[str, Any]:
        """POST (replace: unnamed fields take their defaults) or, with `merge`, PUT (change
        the named fields, keep the others)."""
        body = self.request(
            "PUT" if merge else "POST",
            "/batch-segment-config",
            params={"member_id": member_id},
            json={"batch_segment_upload_config": fields},
        )
        return body["batch_segment_upload_config"]

    def delete_config(self, member_id: int) -> None:
        self.request("DELETE", "/batch-segment-config", params={"member_id": member_id})

    # --- lookups ----------------------------------------------------------------------------

    def user_segments(self, member_id: int | None = None, **user: Any) -> list[dict[str, Any]]:
        params = {**user}
        if member_id is not None:
            params["member_id"] = member_id
        return self.request("GET", "/user-segments", params=params)["segments"]


__all__ = ["BssClient", "ApiError"]
