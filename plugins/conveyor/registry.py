"""A thin client of an image registry's OCI distribution API (Distribution, Harbor): list a
repository's tags, resolve a tag to its manifest digest, delete a manifest by digest.

Authentication follows the registry's challenge: HTTP Basic (Distribution with htpasswd), or a
bearer token fetched from the realm it names with the same credentials (Harbor, Docker
Distribution with token auth). Credentials come from the app's registry connection and never
appear in a message.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin

import requests

from conveyor.credentials import ConnectionLike, registry_host
from conveyor.exceptions import ConveyorError
from conveyor.retention import Plan, RegistryImage, Verdict, images_from_tags, snapshot_build_number

# Every manifest kind a build may have pushed: a digest read with a narrower Accept could be that of a
# converted manifest, and deleting it would miss the real one.
MANIFEST_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_NEXT_LINK = re.compile(r'<([^>]+)>\s*;\s*rel="?next"?')
_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')


def is_insecure(conn: ConnectionLike) -> bool:
    """Whether the connection's extra says the registry speaks plain HTTP (``{"insecure": true}``)."""
    return conn.extra_dejson.get("insecure") in (True, "true", "True", "1", 1)


@dataclass(frozen=True)
class Deleted:
    """What happened to one image the plan deleted."""

    verdict: Verdict
    deleted: bool
    why: str = ""


class RegistryClient:
    """One registry, one account.

    :param base_url: ``http(s)://host[:port]``
    :param login: the account, or None for anonymous access
    :param password: its password
    :param timeout: seconds per request
    """

    def __init__(self, base_url: str, login: str | None, password: str | None, *, timeout: float = 10) -> None:
        self.base_url = base_url.rstrip("/")
        self._auth = (login, password or "") if login else None
        self._timeout = timeout
        self._session = requests.Session()
        self._tokens: dict[str, str] = {}  # scope -> bearer token

    @classmethod
    def from_connection(cls, conn: ConnectionLike, base_url: str | None = None) -> RegistryClient:
        """The registry of an Airflow connection (type docker: host, login, password, extra ``insecure``)."""
        url = base_url or f"{'http' if is_insecure(conn) else 'https'}://{registry_host(conn)}"
        return cls(url, conn.login, conn.password)

    # --- requests --------------------------------------------------------------------------

    def _request(self, method: str, path_or_url: str, scope: str, **kwargs: Any) -> requests.Response:
        url = path_or_url if "://" in path_or_url else f"{self.base_url}{path_or_url}"
        for attempt in range(2):
            headers = dict(kwargs.pop("headers", {}) or {})
            token = self._tokens.get(scope)
            auth = None
            if token:
                headers["Authorization"] = f"Bearer {token}"
            else:
                auth = self._auth
            try:
                response = self._session.request(
                    method, url, headers=headers, auth=auth, timeout=self._timeout, allow_redirects=True, **kwargs
                )
            except requests.RequestException as exc:
                raise ConveyorError(
                    f"The registry at {self.base_url} did not answer ({type(exc).__name__}); check the registry "
                    "connection's host and that the registry runs (scripts/registry/up on the local platform)."
                ) from None
            challenge = response.headers.get("WWW-Authenticate", "")
            if response.status_code == 401 and attempt == 0 and challenge.lower().startswith("bearer "):
                self._tokens[scope] = self._token(challenge, scope)
                kwargs["headers"] = headers
                continue
            return response
        return response

    def _token(self, challenge: str, scope: str) -> str:
        params = dict(_CHALLENGE_PARAM.findall(challenge))
        realm = params.get("realm")
        if not realm:
            raise ConveyorError(f"The registry at {self.base_url} asked for a bearer token but named no realm.")
        query = {"service": params.get("service", ""), "scope": params.get("scope") or scope}
        try:
            response = self._session.get(realm, params=query, auth=self._auth, timeout=self._timeout)
        except requests.RequestException as exc:
            raise ConveyorError(
                f"The registry's token service {realm} did not answer ({type(exc).__name__})."
            ) from None
        if response.status_code != 200:
            raise ConveyorError(
                f"The registry's token service {realm} refused the registry connection's account "
                f"(HTTP {response.status_code}); check its login and password."
            )
        body = response.json()
        token = body.get("token") or body.get("access_token")
        if not token:
            raise ConveyorError(f"The registry's token service {realm} answered without a token.")
        return str(token)

    def _fail(self, response: requests.Response, what: str) -> ConveyorError:
        hint = {
            401: "the registry connection's login or password is wrong",
            403: "the registry connection's account may not do this (Harbor: it needs the project's "
            "Maintainer or Project Admin role to delete)",
            405: "the registry does not allow deletes (Distribution: storage.delete.enabled: true; "
            "scripts/registry/up sets it)",
        }.get(response.status_code, "see the registry's log")
        return ConveyorError(f"{what} failed: HTTP {response.status_code} from {self.base_url}; {hint}.")

    # --- the API ---------------------------------------------------------------------------

    def tags(self, repository: str) -> list[str]:
        """Every tag of a repository (none when the repository does not exist), following pagination."""
        scope = f"repository:{repository}:pull"
        found: list[str] = []
        url = f"/v2/{repository}/tags/list?n=1000"
        while url:
            response = self._request("GET", url, scope)
            if response.status_code == 404:
                return found
            if response.status_code != 200:
                raise self._fail(response, f"listing the tags of {repository}")
            found.extend(response.json().get("tags") or [])
            match = _NEXT_LINK.search(response.headers.get("Link", ""))
            url = urljoin(self.base_url + "/", match.group(1)) if match else ""
        return sorted(set(found))

    def digest(self, repository: str, reference: str) -> str | None:
        """The manifest digest a tag points at (None when there is no such tag)."""
        response = self._request(
            "HEAD",
            f"/v2/{repository}/manifests/{reference}",
            f"repository:{repository}:pull",
            headers={"Accept": ", ".join(MANIFEST_TYPES)},
        )
        if response.status_code == 404:
            return None
        digest = response.headers.get("Docker-Content-Digest", "")
        if response.status_code != 200 or not DIGEST.fullmatch(digest):
            raise self._fail(response, f"reading the digest of {repository}:{reference}")
        return digest

    def delete(self, repository: str, digest: str) -> bool:
        """Delete a manifest by digest (every tag pointing at it goes with it). False when it was gone already."""
        if not DIGEST.fullmatch(digest):
            raise ValueError(f"{digest!r} is not a sha256 digest")
        response = self._request("DELETE", f"/v2/{repository}/manifests/{digest}", f"repository:{repository}:delete")
        if response.status_code == 404:
            return False
        if response.status_code not in (200, 202):
            raise self._fail(response, f"deleting {repository}@{digest}")
        return True

    def tag_digests(self, repository: str, tags: list[str] | None = None) -> dict[str, str]:
        """Tag -> digest for the given tags (default: all); tags gone meanwhile are left out."""
        found: dict[str, str] = {}
        for tag in self.tags(repository) if tags is None else tags:
            digest = self.digest(repository, tag)
            if digest is not None:
                found[tag] = digest
        return found

    def images(self, repository: str) -> list[RegistryImage]:
        """Every tagged image of a repository with all its tags."""
        return images_from_tags(self.tag_digests(repository))


def delete_planned(client: RegistryClient, plan: Plan) -> Iterator[Deleted]:
    """Delete what the plan deletes, unless a tag the plan did not see on an image now points at it.

    Right before deleting, the tags that are new since the plan and every tag that is not a SNAPSHOT
    tag (``latest`` moves; release tags are added) are read again: an image one of them points at now
    is kept. SNAPSHOT tags are not read again: each names one build, and only that build pushes it.
    """
    repository = plan.repository
    planned = {tag for v in plan.verdicts for tag in v.image.tags}
    recheck = [t for t in client.tags(repository) if t not in planned or snapshot_build_number(t) is None]
    now_on: dict[str, list[str]] = {}
    for tag, digest in client.tag_digests(repository, recheck).items():
        now_on.setdefault(digest, []).append(tag)
    for verdict in plan.to_delete:
        moved = sorted(t for t in now_on.get(verdict.digest, []) if t not in verdict.image.tags)
        if moved:
            yield Deleted(verdict, False, f"kept: {', '.join(moved)} now point(s) at it")
        elif client.delete(repository, verdict.digest):
            yield Deleted(verdict, True)
        else:
            yield Deleted(verdict, False, "already gone")
