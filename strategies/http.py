"""HttpStrategy: records from a JSON API (a CRM's leads endpoint), polled and kept in step.

Each poll GETs the endpoint and follows its pages to the end, then diffs the items against the
previous complete poll by id and fingerprint, as the SQL strategy does: it yields new and
changed items as records and :class:`~dispatch.Removed` for ids that left. An unchanged page
costs a 304 (``ETag`` / ``Last-Modified`` are sent back per page URL); an unchanged source
yields nothing. A poll that fails anywhere changes nothing: the previous view stays, nothing
is removed, and the hub polls again later.

Pages that work without configuration: a bare JSON list; an object holding the list under
``items``, ``data``, ``records`` or ``results``; the next page as a URL (``next``,
``links.next``, or an RFC 8288 ``Link: <...>; rel="next"`` header) or as a cursor
(``next_cursor`` or ``cursor``), sent back as the query parameter ``cursor_param``. Paths
(``items="payload.leads"``, ``next="meta.next"``) or ``map_page`` cover the other shapes.
"""

from __future__ import annotations

import email.utils
import itertools
import json
import logging
import os
import socket
import string
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TypeAlias

import anyio.to_thread
import httpx

from dispatch.abc import (
    CallbackName,
    CallResult,
    Malformed,
    PollItem,
    Removed,
    Strategy,
    StrategyContext,
)
from dispatch.clock import Clock, SystemClock
from dispatch.errors import ConfigError, SourceError
from dispatch.options import Backoff
from dispatch.record import Record

from ._csvmap import RowError, Templates
from ._templates import (
    MISSING,
    ItemMapper,
    PathTemplate,
    canonical,
    cell,
    fallback_id,
    get_path,
    parse_path,
)
from ._writeback import outcome_status

__all__ = ["HttpAuth", "HttpStrategy", "HttpWriteBack", "ItemMap", "PageMap"]

logger = logging.getLogger(__name__)

ItemMap: TypeAlias = Callable[[Any], Record | None]
"""``map_item(item)``: the item's Record, or None to leave it out. It must not have side
effects; it runs in a worker thread."""

PageMap: TypeAlias = Callable[[Any, httpx.Response], tuple[Iterable[Any], str | None]]
"""``map_page(body, response)``: the page's items and the next page (a URL, a cursor, or None
at the end) from the parsed JSON ``body`` and the response (status, headers, links; its body
is ``body``). It runs in a worker thread."""

_ITEM_KEYS = ("items", "data", "records", "results")
_ERROR_KEYS = ("error", "errors", "message", "detail", "error_description", "fault")
_URL_STARTS = ("http://", "https://", "/", "?")
_HEADER_CHARS = frozenset("!#$%&'*+-.^_`|~" + string.ascii_letters + string.digits)
_UNKNOWN_HOST = ("name or service", "nodename", "name resolution", "getaddrinfo")
_TRANSIENT = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)
_WRITE_LIMIT = 1 << 20  # bytes read of a write-back's answer (it is only looked at on failure)
_TEXT = 200  # characters of a server's own words quoted in an error


class _TooLarge(Exception):
    pass


@dataclass(frozen=True, slots=True, repr=False)
class HttpAuth:
    """The secret sent with every request, and where it comes from: exactly one of ``token``
    (the value itself), ``token_env`` (an environment variable's name), ``token_file`` (a
    file holding it) or ``credential`` (a systemd credential: ``$CREDENTIALS_DIRECTORY/<name>``).

    It goes in ``header``: by default ``Authorization: Bearer <token>``; another header gets
    the bare token (``header="X-Api-Key"``) unless ``scheme`` says otherwise
    (``scheme="Token"`` sends ``Token <token>``). The secret is read when the strategy opens and
    again for each poll (a rotated file is picked up); it is never logged, never in an error,
    never in ``repr``.
    """

    token: str | None = None
    token_env: str | None = None
    token_file: str | Path | None = None
    credential: str | None = None
    header: str = "Authorization"
    scheme: str | None = None

    def __post_init__(self) -> None:
        given = [n for n in ("token", "token_env", "token_file", "credential") if getattr(self, n)]
        if len(given) != 1:
            also = f" (not {' and '.join(given)})" if given else ""
            raise ValueError(f"auth: give one of token, token_env, token_file or credential{also}")
        if not self.header or not set(self.header) <= _HEADER_CHARS:
            raise ValueError(f"auth: {self.header!r} is not a header name")
        if self.scheme and not set(self.scheme) <= _HEADER_CHARS:
            raise ValueError(f"auth: {self.scheme!r} is not a scheme, like Bearer or Token")
        if self.credential is not None and (
            "/" in self.credential or self.credential in (".", "..")
        ):
            raise ValueError(f"auth: credential {self.credential!r} must be a plain name")

    @property
    def source(self) -> str:
        """Where the secret comes from, for messages (never the secret)."""
        if self.token_env:
            return f"the environment variable {self.token_env}"
        if self.token_file:
            return f"token_file {self.token_file}"
        if self.credential:
            return f"the systemd credential {self.credential}"
        return "the token given in the configuration"

    def secret(self) -> str:
        """The secret, stripped; :class:`~dispatch.errors.ConfigError` saying why it cannot
        be had (naming its source, never a value)."""
        if self.token:
            value = self.token
        elif self.token_env:
            value = os.environ.get(self.token_env, "")
            if not value.strip():
                raise ConfigError(f"auth: the environment variable {self.token_env} is not set")
        else:
            value = self._read()
        value = value.strip()
        if not value:
            raise ConfigError(f"auth: {self.source} is empty")
        if any(c in value for c in "\r\n\0") or not value.isprintable():
            raise ConfigError(f"auth: {self.source} holds a line break or a control character")
        return value

    def _read(self) -> str:
        if self.credential:
            directory = os.environ.get("CREDENTIALS_DIRECTORY")
            if not directory:
                raise ConfigError(
                    f"auth: credential {self.credential}: $CREDENTIALS_DIRECTORY is not set "
                    f"(start the service with LoadCredential={self.credential}:/path/to/file)"
                )
            path = Path(directory) / self.credential
        else:
            path = Path(str(self.token_file))
        try:
            return path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or type(exc).__name__
            raise ConfigError(f"auth: cannot read {path}: {reason}") from None

    def headers(self, token: str | None = None) -> dict[str, str]:
        """The header carrying ``token`` (by default, the secret read now)."""
        token = token or self.secret()
        scheme = self.scheme
        if scheme is None:
            scheme = "Bearer" if self.header.lower() == "authorization" else ""
        return {self.header: f"{scheme} {token}" if scheme else token}

    def __repr__(self) -> str:
        return f"HttpAuth(header={self.header!r}, from {self.source})"


@dataclass(frozen=True, slots=True)
class HttpWriteBack:
    """Where outcomes go: each outcome is sent as ``method url`` with a JSON body.

    ``url`` is a template, relative to the strategy's URL as a link in a page would be
    (``"leads/{id}"``, ``"/api/v2/contacts/{contact.crm_id}"``, or absolute): ``{id}`` and
    ``{phone}`` are the record's, other fields come from its metadata (the item, by default);
    values are percent-encoded. The body holds ``status_field`` (``dispatched``,
    ``completed: <reason>``, ``failed: <error>``, ``skipped: <reason>``, as the CSV and SQL
    write-backs), ``call_id_field`` the call id and ``time_field`` the UTC time, when given;
    a callee's answer (``on_result``) sends the fields ``result_fields`` maps (a result tool's
    argument, or ``tool`` / ``at``) with their JSON values. A dotted name nests:
    ``"custom.dispatch_status"`` sends ``{"custom": {"dispatch_status": ...}}``.

    A 2xx answer is done; a 404 or 410 (no such record there) is logged and dropped; anything
    else fails the delivery, which the outbox retries with backoff.
    """

    url: str
    method: Literal["PATCH", "POST", "PUT"] = "PATCH"
    status_field: str = "dispatch_status"
    call_id_field: str | None = None
    time_field: str | None = None
    result_fields: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.method not in ("PATCH", "POST", "PUT"):
            raise ValueError(f"write_back.method must be PATCH, POST or PUT, not {self.method!r}")
        PathTemplate(self.url)
        for name in [self.status_field, self.call_id_field, self.time_field]:
            if name is not None:
                _nest({}, name, None)
        for name in self.result_fields.values():
            _nest({}, name, None)

    @property
    def template(self) -> PathTemplate:
        return PathTemplate(self.url)


_Next: TypeAlias = tuple[Literal["url", "cursor"], str]  # where the next page is


@dataclass(frozen=True, slots=True)
class _Answer:
    method: str
    url: httpx.URL
    status: int
    reason: str
    response: httpx.Response  # headers, links; the body was streamed into ``body``
    body: bytes


@dataclass(frozen=True, slots=True)
class _Page:
    """What one page gave, kept for the conditional request of the next poll."""

    etag: str | None
    modified: str | None
    next: _Next | None
    entries: tuple[tuple[str, int], ...]  # (record id, fingerprint) of each item, in order


class HttpStrategy(Strategy):
    """Records from the items of a JSON endpoint, kept in step with it poll after poll.

    ``url`` is the endpoint (``https://`` or ``http://``), ``params`` query parameters added
    to it, ``headers`` plain headers sent with every request (no secrets: those go in
    ``auth``, an :class:`HttpAuth`). ``name`` defaults to the last segment of the URL's path.

    Items map to records through templates over their fields, as CSV columns and SQL columns
    do, with nested fields by path (``greeting="Hi {contact.first_name}"``); ``id`` defaults
    to ``{id}``, ``phone`` to ``{phone}``, ``metadata`` to the whole item. Or give
    ``map_item`` (:data:`ItemMap`), which replaces the templates. Page shapes: see the module;
    ``items`` and ``next`` are paths into the page, ``map_page`` (:data:`PageMap`) replaces
    both.

    Faults: each request waits ``timeout`` seconds at most per step (connect, each read); a
    connection error, a timeout, a 5xx or a 429 is tried again up to ``retries`` times after
    ``backoff`` (a ``Retry-After`` is followed up to ``backoff.maximum`` seconds; a longer one
    fails the poll, and polls until then fail at once without asking). A body over
    ``max_bytes`` is abandoned. More than ``max_pages`` pages, a page that is not JSON or not
    a page, an error answer: the poll fails with :class:`~dispatch.errors.SourceError`, one
    line naming the URL (without its query) and the fix, and the previous view stays. An item
    that cannot be mapped is logged and yielded as :class:`~dispatch.Malformed`.

    ``write_back`` (:class:`HttpWriteBack`) sends each outcome to the API. ``client`` may be an
    ``httpx.AsyncClient`` you own (for a proxy, client certificates...); it is not closed here.
    """

    incremental = True

    def __init__(
        self,
        url: str,
        *,
        name: str | None = None,
        id: str | None = None,
        phone: str = "{phone}",
        greeting: str | None = None,
        metadata: Mapping[str, str] | None = None,
        prompt_vars: Mapping[str, str] | None = None,
        from_: str | None = None,
        timezone: str | None = None,
        not_before: str | None = None,
        not_after: str | None = None,
        config: Mapping[str, str] | None = None,
        map_item: ItemMap | None = None,
        items: str | None = None,
        next: str | None = None,
        map_page: PageMap | None = None,
        cursor_param: str = "cursor",
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        auth: HttpAuth | None = None,
        write_back: HttpWriteBack | None = None,
        timeout: float = 30.0,
        retries: int = 3,
        backoff: Backoff | None = None,
        max_bytes: int = 20_000_000,
        max_pages: int = 1000,
        client: httpx.AsyncClient | None = None,
        clock: Clock | None = None,
    ) -> None:
        try:
            parsed = httpx.URL(url)
        except (httpx.InvalidURL, TypeError) as exc:
            raise ConfigError(f"strategy {name or 'http'!r}: url: {exc}") from None
        label = name or "http"
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ConfigError(
                f"strategy {label!r}: url must start with https:// or http://, like "
                "https://crm.example.com/api/leads"
            )
        if parsed.userinfo:
            raise ConfigError(
                f"strategy {label!r}: url holds credentials; put the secret in [strategies.auth]"
            )
        segments = [s for s in parsed.path.split("/") if s]
        super().__init__(name or (segments[-1] if segments else parsed.host))
        if timeout <= 0 or retries < 0 or max_bytes < 1 or max_pages < 1 or not cursor_param:
            raise ValueError(
                "HttpStrategy needs timeout > 0, retries >= 0, max_bytes >= 1, max_pages >= 1 "
                "and a cursor_param"
            )
        self.url = parsed.copy_merge_params(dict(params or {}))
        try:
            self.templates = Templates.of(
                id=id,
                phone=phone,
                greeting=greeting,
                metadata=metadata,
                prompt_vars=prompt_vars,
                from_=from_,
                timezone=timezone,
                not_before=not_before,
                not_after=not_after,
                config=config,
            )
            self.mapper = ItemMapper(self.templates)
            self._items_path = parse_path(items) if items is not None else None
            self._next_path = parse_path(next) if next is not None else None
        except ValueError as exc:
            raise ConfigError(f"strategy {self.name}: {exc}") from None
        self.map_item = map_item
        self.map_page = map_page
        self.cursor_param = cursor_param
        self.headers = dict(headers or {})
        self.auth = auth
        self.write_back = write_back
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff or Backoff(initial=0.5, maximum=60.0)
        self.max_bytes = max_bytes
        self.max_pages = max_pages
        self.clock = clock or SystemClock()
        self._client = client
        self._own_client = client is None
        self._rows: dict[str, int] = {}  # record id -> fingerprint of its item, as last polled
        self._pages: dict[str, _Page] = {}  # page URL -> what it gave, as last polled
        self._not_before: float | None = None  # a long Retry-After: no request before then
        self._secret: str | None = None  # the last secret read, blanked in any text we show

    # -- the connection ----------------------------------------------------------------------

    async def open(self, context: StrategyContext | None = None) -> None:
        await super().open(context)
        if self.auth is not None:
            try:
                self._secret = self.auth.secret()
            except ConfigError as exc:
                raise ConfigError(f"strategy {self.name}: {exc}") from None
        self._http()

    async def aclose(self) -> None:
        if self._own_client and self._client is not None:
            await self._client.aclose()
            self._client = None

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            from dispatch import __version__
            from dispatch.logs import quiet_http_logs

            quiet_http_logs()  # httpx logs every URL at INFO; an application may opt back in
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(self.timeout),
                # A redirect is reported, never followed: a custom header would follow it to
                # any host, and the operator should point url at the final address anyway.
                follow_redirects=False,
                headers={"User-Agent": f"pinecall-dispatch/{__version__}"},
            )
        return self._client

    def _request_headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json", **self.headers}
        if self.auth is not None:
            try:
                self._secret = self.auth.secret()
            except ConfigError as exc:
                raise SourceError(f"strategy {self.name}: {exc}") from None
            headers.update(self.auth.headers(self._secret))
        return headers

    # -- reading -----------------------------------------------------------------------------

    async def poll(self) -> list[PollItem]:
        if self._not_before is not None:
            left = self._not_before - self.clock.monotonic()
            if left > 0:
                raise SourceError(
                    f"GET {self._public(self.url)}: the server asked to wait (Retry-After); "
                    f"no request for another {left:.0f} s"
                )
            self._not_before = None
        headers = self._request_headers()
        seen: dict[str, int] = {}
        out: list[PollItem] = []
        pages: dict[str, _Page] = {}
        changed = False
        url = self.url
        for number in itertools.count(1):
            if number > self.max_pages:
                raise SourceError(
                    f"GET {self._public(self.url)}: more than max_pages={self.max_pages} pages "
                    "(raise max_pages, or check that the next links end)"
                )
            key = str(url)
            if key in pages:
                raise SourceError(
                    f"GET {self._public(url)}: page {number} links back to a page already read "
                    "(set next to the field holding the next page)"
                )
            cached = self._pages.get(key)
            answer = await self._send("GET", url, headers=_conditional(headers, cached))
            if answer.status == 304 and cached is not None:
                page = cached
                self._enter(page.entries, seen)
            elif answer.status == 304:
                raise self._error(answer, "a 304 to a request that asked for no comparison")
            elif 200 <= answer.status < 300:
                changed = True
                page = await anyio.to_thread.run_sync(self._digest, answer, seen, out)
            else:
                raise self._refused(answer)
            logger.debug(
                "http.page strategy=%s url=%s status=%d items=%d",
                self.name,
                self._public(url),
                answer.status,
                len(page.entries),
            )
            pages[key] = page
            if page.next is None:
                break
            url = self._follow(page.next, answer.url)
        if not changed:  # every page answered 304: nothing changed
            return []
        out.extend(Removed(record_id) for record_id in self._rows if record_id not in seen)
        self._rows, self._pages = seen, pages  # only after a complete read
        return out

    def _enter(self, entries: Iterable[tuple[str, int]], seen: dict[str, int]) -> None:
        for record_id, fingerprint in entries:
            if record_id in seen:
                self._duplicate(record_id)
            else:
                seen[record_id] = fingerprint

    def _digest(self, answer: _Answer, seen: dict[str, int], out: list[PollItem]) -> _Page:
        """One page read: its items into ``seen`` and, if new or changed, ``out``. Runs in a
        worker thread (parsing and mapping a large page takes a while)."""
        body = self._json(answer)
        items, following = self._shape(body, answer)
        previous = self._rows
        entries: list[tuple[str, int]] = []
        for item in items:
            entry = self._item(item, previous)
            if entry is None:
                continue
            record_id, fingerprint, result = entry
            if record_id in seen:
                self._duplicate(record_id)
                continue
            seen[record_id] = fingerprint
            entries.append((record_id, fingerprint))
            if result is not None:
                out.append(result)
        headers = answer.response.headers
        return _Page(
            headers.get("etag"),
            headers.get("last-modified"),
            following if items else None,  # an empty page is the end, whatever it links to
            tuple(entries),
        )

    def _item(
        self, item: Any, previous: Mapping[str, int]
    ) -> tuple[str, int, Record | Malformed | None] | None:
        """``(id, fingerprint, the record or Malformed if new or changed)``, or None to leave
        the item out."""
        text = canonical(item)
        fingerprint = hash(text)
        if self.map_item is not None:
            try:
                record = self.map_item(item)
                if record is not None and not isinstance(record, Record):
                    raise TypeError(f"map_item returned {type(record).__name__}, not a Record")
            except Exception as exc:  # a bad item, or a bug in map_item: that item only
                record_id = _given_id(item) or fallback_id(text)
                return self._bad(record_id, fingerprint, exc, "", previous)
            if record is None:
                return None
            changed = previous.get(record.id) != fingerprint
            return record.id, fingerprint, record if changed else None
        if not isinstance(item, Mapping):
            reason = TypeError(f"the item is {_kind(item)}, not an object")
            return self._bad(fallback_id(text), fingerprint, reason, "", previous)
        cells, missing = self.mapper.cells(item)
        record_id = self.mapper.record_id(cells, missing) or fallback_id(text)
        if previous.get(record_id) == fingerprint:
            return record_id, fingerprint, None  # the usual case: unchanged, not mapped again
        try:
            return record_id, fingerprint, self.mapper.record(item, cells, missing)
        except Exception as exc:  # a bad item: that item only
            return self._bad(record_id, fingerprint, exc, self.mapper.phone(cells), previous)

    def _bad(
        self,
        record_id: str,
        fingerprint: int,
        exc: Exception,
        phone: str,
        previous: Mapping[str, int],
    ) -> tuple[str, int, Malformed | None]:
        if previous.get(record_id) == fingerprint:
            return record_id, fingerprint, None  # reported when it came
        reason = str(exc) or type(exc).__name__
        logger.warning(
            "http.bad_item strategy=%s record=%s reason=%s", self.name, record_id, reason
        )
        return record_id, fingerprint, Malformed(record_id, reason, phone=phone)

    def _duplicate(self, record_id: str) -> None:
        logger.warning(
            "http.duplicate_id strategy=%s record=%s (an earlier item has this id; this one is "
            "left out)",
            self.name,
            record_id,
        )

    def _json(self, answer: _Answer) -> Any:
        if not answer.body.strip():
            if answer.status == 204:
                return []
            raise self._error(answer, "the answer is empty, not JSON")
        try:
            return json.loads(answer.body)
        except ValueError:
            kind = answer.response.headers.get("content-type", "no content type")
            kind = kind.split(";")[0].strip() or "no content type"
            hint = ""
            if "html" in kind or answer.body.lstrip()[:1] == b"<":
                hint = ": a web page, not the API (check the path in url)"
            raise self._error(answer, f"the answer is not JSON ({kind}){hint}") from None

    def _shape(self, body: Any, answer: _Answer) -> tuple[list[Any], _Next | None]:
        """The page's items and its next page."""
        if self.map_page is not None:
            try:
                found, following = self.map_page(body, answer.response)
                items = list(found)
            except Exception as exc:  # the user's code: say so and fail the poll
                raise self._error(answer, f"map_page failed: {type(exc).__name__}: {exc}") from exc
            return items, self._classify(following, answer)
        if self._items_path is not None:
            found = get_path(body, self._items_path)
            if not isinstance(found, list):
                got = "nothing" if found is MISSING else _kind(found)
                problem = _error_text(body)
                raise self._error(
                    answer,
                    f"answered with an error: {problem}"
                    if problem and found is MISSING
                    else f"no list at {'.'.join(map(str, self._items_path))} (found {got})",
                )
            items = found
        elif isinstance(body, list):
            items = body
        elif isinstance(body, Mapping):
            key = next((k for k in _ITEM_KEYS if isinstance(body.get(k), list)), None)
            if key is None:
                problem = _error_text(body)
                if problem:
                    raise self._error(answer, f"answered with an error: {problem}")
                raise self._error(
                    answer,
                    "no list of items in the answer (looked for a list, or items, data, records "
                    'or results); set items = "path.to.list"',
                )
            items = body[key]
        else:
            raise self._error(answer, f"the answer is {_kind(body)}, not a list or an object")
        return items, self._classify(self._find_next(body, answer), answer)

    def _find_next(self, body: Any, answer: _Answer) -> Any:
        if self._next_path is not None:
            value = get_path(body, self._next_path)
            return None if value is MISSING else value
        if isinstance(body, Mapping):
            if body.get("has_more") is False:
                return None
            for path in (("next",), ("links", "next"), ("_links", "next"), ("next_cursor",)):
                value = get_path(body, path)
                if value is not MISSING and value not in (None, "", False):
                    return value
            if body.get("cursor") not in (None, "", False):
                return body["cursor"]
        return answer.response.links.get("next", {}).get("url")

    def _classify(self, value: Any, answer: _Answer) -> _Next | None:
        if isinstance(value, Mapping):  # HAL's and JSON:API's link objects
            value = value.get("href") or value.get("url")
        if value is None or value is False or value == "":
            return None
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise self._error(answer, f"the next page is {_kind(value)}, not a URL or a cursor")
        text = cell(value)
        return ("url", text) if text.startswith(_URL_STARTS) else ("cursor", text)

    def _follow(self, following: _Next, base: httpx.URL) -> httpx.URL:
        kind, value = following
        if kind == "cursor":
            return self.url.copy_set_param(self.cursor_param, value)
        url = base.join(value)
        if (url.scheme, url.host, url.port) != (self.url.scheme, self.url.host, self.url.port):
            # Credentials go to the configured host only.
            raise SourceError(
                f"GET {self._public(base)}: the next page is on another host "
                f"({self._public(url)}); it is not followed"
            )
        return url

    # -- requests ----------------------------------------------------------------------------

    async def _send(
        self,
        method: str,
        url: httpx.URL,
        *,
        headers: Mapping[str, str],
        body: Any = None,
        retry: bool = True,
    ) -> _Answer:
        """One request, tried again on a connection error, a timeout, a 5xx or a 429 (when
        ``retry``); the answer with its body, or :class:`SourceError`."""
        client = self._http()
        limit = self.max_bytes if method == "GET" else _WRITE_LIMIT
        failures = 0
        while True:
            hinted: float | None = None
            try:
                async with client.stream(method, url, headers=headers, json=body) as response:
                    status = response.status_code
                    if not (retry and _retryable(status) and failures < self.retries):
                        try:
                            content = await _read(response, limit)
                        except _TooLarge:
                            raise SourceError(
                                f"{method} {self._public(url)}: the answer is over max_bytes "
                                f"({limit} bytes); raise max_bytes or ask for smaller pages"
                            ) from None
                        return _Answer(
                            method, response.url, status, response.reason_phrase, response, content
                        )
                    hinted = _retry_after(response.headers.get("retry-after"), self.clock.now())
                    why = f"{status} {response.reason_phrase}"
            except _TRANSIENT as exc:
                if not (retry and failures < self.retries):
                    raise self._transport(method, url, exc) from exc
                why = self._brief(exc)
            except httpx.HTTPError as exc:
                raise self._transport(method, url, exc) from exc
            failures += 1
            if hinted is not None and hinted > self.backoff.maximum:
                self._not_before = self.clock.monotonic() + hinted
                raise SourceError(
                    f"{method} {self._public(url)}: {why}: the server asks to wait {hinted:.0f} s "
                    f"(Retry-After), more than the {self.backoff.maximum:g} s allowed; no request "
                    "before then"
                )
            wait = self.backoff.delay(failures) if hinted is None else hinted
            logger.warning(
                "http.retry strategy=%s url=%s try=%d/%d wait=%.1fs reason=%s",
                self.name,
                self._public(url),
                failures + 1,
                self.retries + 1,
                wait,
                why,
            )
            await self.clock.sleep_until(self.clock.monotonic() + wait)

    def _transport(self, method: str, url: httpx.URL, exc: httpx.HTTPError) -> SourceError:
        where = f"{method} {self._public(url)}"
        brief = self._brief(exc)
        lowered = brief.lower()
        causes = list(_causes(exc))
        if isinstance(exc, httpx.ConnectTimeout):
            why = f"no connection within {self.timeout:g} s (is the host reachable? check url)"
        elif isinstance(exc, httpx.TimeoutException):
            why = f"no answer within {self.timeout:g} s (raise timeout, or ask for smaller pages)"
        elif any(isinstance(c, ConnectionRefusedError) for c in causes) or "refused" in lowered:
            why = "connection refused (is the server running, on that port? check url)"
        elif any(isinstance(c, socket.gaierror) for c in causes) or any(
            s in lowered for s in _UNKNOWN_HOST
        ):
            why = f"the host {url.host!r} is not known (check url)"
        elif "certificate" in lowered:
            why = f"the server's TLS certificate was refused: {brief}"
        elif isinstance(exc, httpx.ConnectError):
            why = f"cannot connect: {brief}"
        else:
            why = brief
        return SourceError(f"{where}: {why}")

    def _refused(self, answer: _Answer) -> SourceError:
        """The error for an answer that is not a page (or a write-back that did not land)."""
        status = answer.status
        words = _error_text(_loads(answer.body)) or _first_line(answer.body)
        if status in (401, 403):
            if self.auth is None:
                fix = "the server wants credentials: configure [strategies.auth]"
            elif status == 401:
                fix = f"the server refused the credentials from {self.auth.source}"
            else:
                fix = f"the credentials from {self.auth.source} do not give access to this"
            return self._error(answer, fix + (f" ({words})" if words else ""))
        if status in (404, 410):
            return self._error(answer, "no such endpoint (check the path in url)")
        if 300 <= status < 400:
            location = answer.response.headers.get("location")
            moved = answer.url.join(location) if location else None
            where = f" to {self._public(moved)}" if moved is not None else ""
            return self._error(answer, f"the endpoint moved{where}: set url to the new address")
        tries = f" (after {self.retries + 1} tries)" if _retryable(status) and self.retries else ""
        return self._error(answer, f"answered{tries}" + (f": {words}" if words else ""))

    def _error(self, answer: _Answer, why: str) -> SourceError:
        status = f"{answer.status} {answer.reason}".strip()
        return SourceError(
            self._redact(f"{answer.method} {self._public(answer.url)}: {status}: {why}")
        )

    def _brief(self, exc: BaseException) -> str:
        message = (str(exc).strip().splitlines() or [""])[0]
        return self._redact(f"{type(exc).__name__}: {message}" if message else type(exc).__name__)

    def _public(self, url: httpx.URL) -> str:
        """``url`` fit for a log or an error: no credentials, no query (it may hold a key)."""
        port = f":{url.port}" if url.port else ""
        return self._redact(f"{url.scheme}://{url.host}{port}{url.path}")

    def _redact(self, text: str) -> str:
        if self._secret and len(self._secret) >= 4:
            text = text.replace(self._secret, "***")
        return text

    # -- outcomes ----------------------------------------------------------------------------

    async def deliver(self, callback: CallbackName, record: Record, *args: Any) -> None:
        if self.write_back is not None:
            await self._write_back(self.write_back, callback, record, args)
        await super().deliver(callback, record, *args)

    async def _write_back(
        self, spec: HttpWriteBack, callback: CallbackName, record: Record, args: tuple[Any, ...]
    ) -> None:
        body = self._outcome(spec, callback, args)
        if body is None:
            return
        try:
            url = self.url.join(spec.template.render(record))
        except RowError as exc:
            logger.warning(
                "http.write_back_unmatched strategy=%s record=%s (%s)", self.name, record.id, exc
            )
            return
        answer = await self._send(
            spec.method, url, headers=self._request_headers(), body=body, retry=False
        )
        if 200 <= answer.status < 300:
            return
        if answer.status in (404, 410):
            logger.warning(
                "http.write_back_unmatched strategy=%s record=%s (%s %s answered %d)",
                self.name,
                record.id,
                spec.method,
                self._public(url),
                answer.status,
            )
            return
        raise self._refused(answer)

    def _outcome(
        self, spec: HttpWriteBack, callback: CallbackName, args: tuple[Any, ...]
    ) -> dict[str, Any] | None:
        body: dict[str, Any] = {}
        if callback == "on_result":  # the answer's fields; the status stays
            result: CallResult = args[1]
            fields: dict[str, Any] = {
                "tool": result.tool,
                "at": result.at.isoformat(timespec="seconds"),
            }
            fields.update(result.arguments)
            for name, target in spec.result_fields.items():
                if fields.get(name) is not None:
                    _nest(body, target, fields[name])
            return body or None
        status, call_id = outcome_status(callback, args)
        _nest(body, spec.status_field, status)
        if spec.call_id_field and call_id:
            _nest(body, spec.call_id_field, call_id)
        if spec.time_field:
            _nest(body, spec.time_field, self.clock.now().isoformat(timespec="seconds"))
        return body

    def __repr__(self) -> str:
        return (
            f"HttpStrategy(name={self.name!r}, url={self._public(self.url)!r}, auth={self.auth!r})"
        )


def _conditional(headers: Mapping[str, str], cached: _Page | None) -> dict[str, str]:
    sent = dict(headers)
    if cached is not None:
        if cached.etag:
            sent["If-None-Match"] = cached.etag
        if cached.modified:
            sent["If-Modified-Since"] = cached.modified
    return sent


async def _read(response: httpx.Response, limit: int) -> bytes:
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _TooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():  # decoded: a small gzip bomb is caught too
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and what it was raised from, inside exception groups too (the OS's own error
    lies under httpx's, httpcore's and anyio's)."""
    seen: set[int] = set()
    stack = [exc]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        if isinstance(current, BaseExceptionGroup):
            stack.extend(current.exceptions)
        stack.extend(c for c in (current.__cause__, current.__context__) if c is not None)


def _retryable(status: int) -> bool:
    return status == 429 or (500 <= status <= 599 and status != 501)


def _retry_after(value: str | None, now: datetime) -> float | None:
    """``Retry-After`` as seconds from now (it is seconds, or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


def _loads(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return None


def _error_text(body: Any) -> str | None:
    """The server's own error message in a JSON body (``{"error": "..."}`` and kin)."""
    if not isinstance(body, Mapping):
        return None
    for key in _ERROR_KEYS:
        value = body.get(key)
        if isinstance(value, list) and value:
            value = value[0]
        if isinstance(value, Mapping):
            value = value.get("message") or value.get("detail") or value.get("title") or value
        if value not in (None, "", [], {}):
            return _clip(value if isinstance(value, str) else canonical(value))
    return None


def _first_line(body: bytes) -> str:
    text = body[:1000].decode("utf-8", "replace").strip()
    if text[:1] == "<":  # an HTML error page says nothing useful in a log line
        return ""
    return _clip(text)


def _clip(text: str) -> str:
    line = (text.strip().splitlines() or [""])[0]
    return line if len(line) <= _TEXT else line[: _TEXT - 3] + "..."


def _given_id(item: Any) -> str | None:
    """The item's own ``id``, if it has a usable one (for naming a malformed item)."""
    value = item.get("id") if isinstance(item, Mapping) else None
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    return cell(value) or None


def _kind(value: Any) -> str:
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return f"{str(value).lower()}"
    if isinstance(value, int | float):
        return "a number"
    return "null" if value is None else type(value).__name__


def _nest(body: dict[str, Any], name: str, value: Any) -> None:
    """``body[a][b] = value`` for the name ``"a.b"``."""
    *outer, last = name.split(".")
    if not last or not all(outer):
        raise ValueError(f"write_back: bad field name {name!r}")
    for key in outer:
        inner = body.setdefault(key, {})
        if not isinstance(inner, dict):
            raise ValueError(f"write_back: {name!r} nests under a field that holds a value")
        body = inner
    body[last] = value
