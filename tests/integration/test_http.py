"""HttpStrategy against a real HTTP server on 127.0.0.1 (the standard library's, in a thread)."""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import anyio
import httpx
import pytest

import strategies
from dispatch import CallEnd, CallResult, Malformed, Record, Removed
from dispatch.abc import PollItem
from dispatch.config import build_hub, load_settings
from dispatch.errors import ConfigError, SourceError
from dispatch.options import Backoff
from dispatch.testing import ManualClock, ScriptedAgent, StrategyContract
from strategies import http as http_module
from strategies.http import HttpAuth, HttpStrategy, HttpWriteBack
from tests.support import PHONES, hub_for

pytestmark = pytest.mark.anyio

WALL = datetime(2026, 11, 24, 15, 0, tzinfo=UTC)
TOKEN = "tok-5ecret-9f8e7d6c"


# -- the server ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Seen:
    """One request as the server received it."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-cased names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(frozen=True)
class Reply:
    status: int = 200
    body: bytes | Iterable[bytes] = b""  # an iterable is sent chunked
    headers: Mapping[str, str] | None = None


Route = Callable[[Seen], Reply]


def as_json(body: Any, status: int = 200, **headers: str) -> Reply:
    return Reply(status, json.dumps(body).encode(), {"Content-Type": "application/json", **headers})


class Api:
    """A JSON API on 127.0.0.1 in a background thread. ``routes`` maps ``(method, path)`` to a
    function of the request; every request is kept in ``requests``."""

    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], Route] = {}
        self.requests: list[Seen] = []
        self.release = threading.Event()  # handlers that hang wait for it
        self._lock = threading.Lock()
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                self._answer()

            do_PATCH = do_POST = do_PUT = do_GET

            def _answer(self) -> None:
                size = int(self.headers.get("Content-Length") or 0)
                parts = urlsplit(self.path)
                seen = Seen(
                    self.command,
                    self.path,
                    dict(parse_qsl(parts.query)),
                    {k.lower(): v for k, v in self.headers.items()},
                    self.rfile.read(size) if size else b"",
                )
                with api._lock:
                    api.requests.append(seen)
                    route = api.routes.get((self.command, parts.path))
                reply = route(seen) if route else as_json({"error": "not found"}, 404)
                self.send_response(reply.status)
                for name, value in (reply.headers or {}).items():
                    self.send_header(name, value)
                if isinstance(reply.body, bytes):
                    self.send_header("Content-Length", str(len(reply.body)))
                    self.end_headers()
                    self.wfile.write(reply.body)
                    return
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                try:
                    for chunk in reply.body:
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    self.wfile.write(b"0\r\n\r\n")
                except OSError:  # the client gave up on it: that is the point
                    self.close_connection = True

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    def get(self, path: str, route: Route | Reply | Any) -> None:
        """Answer GET ``path`` with ``route``: a function, a Reply, or a JSON value."""
        self.on("GET", path, route)

    def on(self, method: str, path: str, route: Route | Reply | Any) -> None:
        if isinstance(route, Reply):
            reply = route
            route = lambda seen: reply  # noqa: E731
        elif not callable(route):
            body = route
            route = lambda seen: as_json(body)  # noqa: E731
        with self._lock:
            self.routes[(method, path)] = route

    def got(self, method: str = "GET", path: str | None = None) -> list[Seen]:
        with self._lock:
            return [
                r
                for r in self.requests
                if r.method == method and (path is None or urlsplit(r.path).path == path)
            ]

    def __enter__(self) -> Api:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(10)


@pytest.fixture
def api() -> Iterator[Api]:
    with Api() as server:
        yield server


def lead(n: int, **fields: Any) -> dict[str, Any]:
    return {"id": n, "phone": PHONES[n], "first_name": f"Name{n}", **fields}


class Versioned:
    """A GET route answering ``body`` with an ETag (or a Last-Modified), and 304 to a request
    that has the current one; it counts both."""

    def __init__(self, body: Any, *, validator: str = "etag") -> None:
        self.body = body
        self.validator = validator
        self.version = 1
        self.full = self.not_modified = 0

    def change(self, body: Any) -> None:
        self.body = body
        self.version += 1

    def __call__(self, seen: Seen) -> Reply:
        if self.validator == "etag":
            tag = f'"v{self.version}"'
            if seen.headers.get("if-none-match") == tag:
                self.not_modified += 1
                return Reply(304, b"", {"ETag": tag})
            self.full += 1
            return as_json(self.body, ETag=tag)
        stamp = format_datetime(WALL + timedelta(minutes=self.version), usegmt=True)
        if seen.headers.get("if-modified-since") == stamp:
            self.not_modified += 1
            return Reply(304, b"")
        self.full += 1
        return as_json(self.body, **{"Last-Modified": stamp})


async def polled(strategy: HttpStrategy) -> list[PollItem]:
    with anyio.fail_after(10):
        return await strategy.poll()


@pytest.fixture
async def opened() -> AsyncIterator[Callable[..., HttpStrategy]]:
    """``opened(url, **options)``: a strategy closed at the end of the test."""
    made: list[HttpStrategy] = []

    def make(url: str, **options: Any) -> HttpStrategy:
        options.setdefault("backoff", Backoff(0.01, 0.05))
        strategy = HttpStrategy(url, **options)
        made.append(strategy)
        return strategy

    yield make
    for strategy in made:
        await strategy.aclose()


def ids(items: Iterable[PollItem]) -> list[str]:
    return [i.id for i in items if isinstance(i, Record)]


# -- mapping ---------------------------------------------------------------------------------


async def test_items_map_through_the_csv_templates_over_nested_fields(
    api: Api, opened: Callable[..., HttpStrategy]
) -> None:
    item = {
        "id": 7,
        "contact": {"first_name": " Ada ", "phones": [PHONES[7], PHONES[8]], "tz": None},
        "vip": True,
        "score": 1.5,
    }
    api.get("/leads", [item])
    strategy = opened(
        f"{api.url}/leads",
        phone="{contact.phones[0]}",
        greeting="Hi {contact.first_name}",
        prompt_vars={"vip": "{vip}", "score": "{score}", "second": "{contact.phones.1}"},
        from_="+14155550100",
        timezone="{contact.tz}",
    )
    await strategy.open()

    (record,) = await polled(strategy)

    assert record == Record(
        id="7",
        phone=PHONES[7],
        greeting="Hi Ada",
        metadata=item,  # the whole item, as received
        prompt_vars={"vip": "true", "score": "1.5", "second": PHONES[8]},
        from_="+14155550100",
        timezone=None,  # null renders empty
    )
    assert strategy.name == "leads"
    assert api.got()[0].headers["accept"] == "application/json"


async def test_map_page_and_map_item_take_over_the_shape_and_the_mapping(
    api: Api, opened: Callable[..., HttpStrategy]
) -> None:
    api.get("/v1/people", {"rows": [["a", PHONES[1]], ["b", PHONES[2]]], "more": "/v1/p2"})
    api.get("/v1/p2", {"rows": [["c", PHONES[3]], ["skip", ""]], "more": None})

    def map_page(body: Any, response: httpx.Response) -> tuple[list[Any], str | None]:
        assert response.status_code == 200
        return body["rows"], body["more"]

    def map_item(row: list[str]) -> Record | None:
        return None if row[0] == "skip" else Record(id=row[0], phone=row[1])

    strategy = opened(f"{api.url}/v1/people", map_page=map_page, map_item=map_item)

    assert ids(await polled(strategy)) == ["a", "b", "c"]


# -- pagination ------------------------------------------------------------------------------


def paged(api: Api, kind: str) -> dict[str, Any]:
    """Three pages of two leads each, linked the ``kind`` way; the strategy's options."""
    pages = [[lead(1), lead(2)], [lead(3), lead(4)], [lead(5), lead(6)]]
    if kind in ("next", "links.next", "link header"):
        paths = ["/leads", "/leads/p2", "/leads/p3"]
        for n, (path, items) in enumerate(zip(paths, pages, strict=True)):
            following = f"{paths[n + 1]}?size=2" if n < 2 else None
            if kind == "next":  # absolute, then relative
                link = f"{api.url}{following}" if n == 0 and following else following
                api.get(path, {"data": items, "next": link})
            elif kind == "links.next":
                api.get(path, {"results": items, "links": {"next": following}})
            else:
                headers = {"Link": f'<{following}>; rel="next"'} if following else {}
                api.get(path, as_json(items, **headers))
        return {}
    cursors = {None: (pages[0], "c2"), "c2": (pages[1], "c3"), "c3": (pages[2], None)}

    def by_cursor(seen: Seen) -> Reply:
        items, following = cursors[seen.query.get("after")]
        return as_json({"records": items, kind: following})

    api.get("/leads", by_cursor)
    return {"cursor_param": "after"}


@pytest.mark.parametrize("kind", ["next", "links.next", "link header", "next_cursor", "cursor"])
async def test_every_page_is_read_whichever_way_the_next_one_is_given(
    api: Api, opened: Callable[..., HttpStrategy], kind: str
) -> None:
    options = paged(api, kind)
    strategy = opened(f"{api.url}/leads", params={"size": "2"}, **options)

    assert ids(await polled(strategy)) == ["1", "2", "3", "4", "5", "6"]

    sent = [(urlsplit(r.path).path, r.query) for r in api.got()]
    if options:
        assert sent == [
            ("/leads", {"size": "2"}),
            ("/leads", {"size": "2", "after": "c2"}),
            ("/leads", {"size": "2", "after": "c3"}),
        ]
    else:
        assert sent == [
            ("/leads", {"size": "2"}),
            ("/leads/p2", {"size": "2"}),
            ("/leads/p3", {"size": "2"}),
        ]


async def test_paths_find_the_items_and_the_next_page_in_other_shapes(
    api: Api, opened: Callable[..., HttpStrategy]
) -> None:
    def leads(seen: Seen) -> Reply:
        if seen.query.get("cursor") == "42":
            return as_json({"payload": {"leads": [lead(3)]}, "meta": {"next": None}})
        return as_json({"payload": {"leads": [lead(1), lead(2)]}, "meta": {"next": 42}})

    api.get("/crm", leads)
    strategy = opened(f"{api.url}/crm", items="payload.leads", next="meta.next")

    assert ids(await polled(strategy)) == ["1", "2", "3"]


async def test_an_empty_page_ends_the_source_whatever_it_links_to(
    api: Api, opened: Callable[..., HttpStrategy]
) -> None:
    def by_cursor(seen: Seen) -> Reply:
        n = int(seen.query.get("cursor", "1"))
        return as_json({"items": [lead(n)] if n < 3 else [], "next_cursor": str(n + 1)})

    api.get("/leads", by_cursor)

    assert ids(await polled(opened(f"{api.url}/leads"))) == ["1", "2"]
    assert len(api.got()) == 3


async def test_a_next_link_to_another_host_or_back_to_a_read_page_fails_the_poll(
    api: Api, opened: Callable[..., HttpStrategy]
) -> None:
    api.get("/leads", {"items": [lead(1)], "next": "https://elsewhere.example/leads?p=2"})
    api.get("/loop", {"items": [lead(1)], "next": "/loop"})

    with pytest.raises(SourceError, match="the next page is on another host"):
        await polled(opened(f"{api.url}/leads"))
    with pytest.raises(SourceError, match="page 2 links back to a page already read"):
        await polled(opened(f"{api.url}/loop"))
    assert not api.got(path="/elsewhere")


# -- diffs and conditional requests ----------------------------------------------------------


async def test_a_poll_yields_new_changed_and_removed_items_only(
    api: Api, opened: Callable[..., HttpStrategy]
) -> None:
    api.get("/leads", [lead(1), lead(2), lead(3)])
    strategy = opened(f"{api.url}/leads")
    assert ids(await polled(strategy)) == ["1", "2", "3"]

    api.get("/leads", [lead(2, phone=PHONES[20]), lead(3), lead(4)])
    items = await polled(strategy)

    assert [(r.id, r.phone) for r in items if isinstance(r, Record)] == [
        ("2", PHONES[20]),
        ("4", PHONES[4]),
    ]
    assert [i for i in items if isinstance(i, Removed)] == [Removed("1")]
    assert await polled(strategy) == []


@pytest.mark.parametrize("validator", ["etag", "last-modified"])
async def test_an_unchanged_source_costs_a_304_per_page_and_yields_nothing(
    api: Api, opened: Callable[..., HttpStrategy], validator: str
) -> None:
    first = Versioned({"items": [lead(1), lead(2)], "next": "/leads/2"}, validator=validator)
    second = Versioned({"items": [lead(3)]}, validator=validator)
    api.get("/leads", first)
    api.get("/leads/2", second)
    strategy = opened(f"{api.url}/leads")
    assert ids(await polled(strategy)) == ["1", "2", "3"]

    assert await polled(strategy) == []
    assert (first.not_modified, second.not_modified) == (1, 1)

    second.change({"items": [lead(3, first_name="Changed")]})
    changed = await polled(strategy)

    assert [(r.id, r.metadata["first_name"]) for r in changed if isinstance(r, Record)] == [
        ("3", "Changed")
    ]
    assert (first.not_modified, first.full, second.full) == (2, 1, 2)
    # Page 1 answered 304, so its items are still there: nothing was removed.
    assert not [i for i in changed if isinstance(i, Removed)]


async def test_a_page_failing_halfway_leaves_the_previous_view(
    api: Api, opened: Callable[..., HttpStrategy]
) -> None:
    api.get("/leads", {"items": [lead(1), lead(2)], "next": "/leads/2"})
    api.get("/leads/2", {"items": [lead(3), lead(4)]})
    strategy = opened(f"{api.url}/leads", retries=0)
    assert len(await polled(strategy)) == 4

    api.get("/leads", {"items": [lead(1)], "next": "/leads/2"})  # 2 left
    api.get("/leads/2", as_json({"error": "database is down"}, 500))
    with pytest.raises(SourceError) as failed:
        await polled(strategy)
    assert str(failed.value) == (
        f"GET {api.url}/leads/2: 500 Internal Server Error: answered: database is down"
    )

    api.get("/leads/2", {"items": [lead(3), lead(4)]})
    assert await polled(strategy) == [Removed("2")]  # removed once, after a complete read


# -- faults ----------------------------------------------------------------------------------


async def test_retry_after_is_waited_on_the_clock_in_seconds_or_as_a_date(
    api: Api, opened: Callable[..., HttpStrategy]
) -> None:
    clock = ManualClock(wall=WALL)
    answers = iter(
        [
            as_json({"error": "slow down"}, 429, **{"Retry-After": "7"}),
            Reply(503, b"busy", {"Retry-After": format_datetime(WALL + timedelta(seconds=27))}),
            as_json([lead(1)]),
        ]
    )
    api.get("/leads", lambda seen: next(answers))
    strategy = opened(f"{api.url}/leads", clock=clock, backoff=Backoff(1.0, 60.0))
    result: list[PollItem] = []

    async def poll() -> None:
        result.extend(await strategy.poll())

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(poll)
            await clock.wait_for_deadline(7.0)
            assert len(api.got()) == 1  # nobody asked again before the server's time
            clock.advance(7)
            await clock.wait_for_deadline(27.0)  # the date is 27 s after the first request
            assert len(api.got()) == 2
            clock.advance(20)

    assert ids(result) == ["1"]


async def failing_on(clock: ManualClock, strategy: HttpStrategy) -> SourceError:
    """The SourceError a poll ends with, time jumping to each wait as soon as it starts."""
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(clock.autojump)
            try:
                await strategy.poll()
            except SourceError as exc:
                return exc
            finally:
                tg.cancel_scope.cancel()
    raise AssertionError("the poll did not fail")


async def test_5xx_and_connection_errors_are_retried_with_backoff_then_fail_the_poll(
    api: Api, opened: Callable[..., HttpStrategy], caplog: pytest.LogCaptureFixture
) -> None:
    clock = ManualClock()
    api.get("/leads", Reply(503, b"maintenance", {"Content-Type": "text/plain"}))
    strategy = opened(f"{api.url}/leads", clock=clock, retries=2, backoff=Backoff(0.5, 60.0))
    failed = await failing_on(clock, strategy)
    assert str(failed) == (
        f"GET {api.url}/leads: 503 Service Unavailable: answered (after 3 tries): maintenance"
    )
    assert clock.monotonic() == 1.5  # 0.5 then 1.0
    assert "http.retry strategy=leads" in caplog.text

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    closed = opened(f"http://127.0.0.1:{port}/leads", clock=clock, retries=1)
    refused = await failing_on(clock, closed)
    assert str(refused) == (
        f"GET http://127.0.0.1:{port}/leads: connection refused (is the server running, on "
        "that port? check url)"
    )
    assert clock.monotonic() == pytest.approx(1.51)


async def test_a_retry_after_beyond_the_cap_holds_every_request_until_then(
    api: Api, opened: Callable[..., HttpStrategy]
) -> None:
    clock = ManualClock()
    api.get("/leads", as_json({"error": "quota"}, 429, **{"Retry-After": "3600"}))
    strategy = opened(f"{api.url}/leads", clock=clock, backoff=Backoff(1.0, 60.0))

    with pytest.raises(SourceError, match=r"asks to wait 3600 s .*more than the 60 s allowed"):
        await polled(strategy)
    clock.advance(3599)
    with pytest.raises(SourceError, match="no request for another 1 s"):
        await polled(strategy)
    assert len(api.got()) == 1

    clock.advance(1)
    api.get("/leads", [lead(1)])
    assert ids(await polled(strategy)) == ["1"]


async def test_a_server_that_does_not_answer_in_time_fails_the_poll(
    api: Api, opened: Callable[..., HttpStrategy]
) -> None:
    def hang(seen: Seen) -> Reply:
        api.release.wait(10)
        return as_json([])

    api.get("/leads", hang)
    strategy = opened(f"{api.url}/leads", timeout=0.2, retries=0)

    with pytest.raises(SourceError, match=r"leads: no answer within 0.2 s \(raise timeout"):
        await polled(strategy)


def enormous() -> Iterator[bytes]:
    yield b'{"items": ['
    for n in range(10_000):
        yield json.dumps(lead(n % 90)).encode() + b","


BAD_PAGES = {
    "html": (
        Reply(200, b"<!doctype html><title>Login</title>", {"Content-Type": "text/html"}),
        "200 OK: the answer is not JSON (text/html): a web page, not the API (check the path "
        "in url)",
    ),
    "error body": (
        as_json({"error": "API quota exceeded for this month"}),
        "200 OK: answered with an error: API quota exceeded for this month",
    ),
    "wrong shape": (
        as_json({"total": 3, "leads_v2": []}),
        "200 OK: no list of items in the answer (looked for a list, or items, data, records "
        'or results); set items = "path.to.list"',
    ),
    "a string": (as_json("ok"), "200 OK: the answer is a string, not a list or an object"),
    "empty": (Reply(200, b""), "200 OK: the answer is empty, not JSON"),
    "declared too large": (
        Reply(200, b"[" + b" " * 5000 + b"]", {"Content-Type": "application/json"}),
        "the answer is over max_bytes (4096 bytes); raise max_bytes or ask for smaller pages",
    ),
    "streamed too large": (
        Reply(200, enormous(), {"Content-Type": "application/json"}),
        "the answer is over max_bytes (4096 bytes); raise max_bytes or ask for smaller pages",
    ),
}


@pytest.mark.parametrize("case", list(BAD_PAGES))
async def test_a_bad_page_fails_the_poll_with_one_line_naming_it(
    api: Api, opened: Callable[..., HttpStrategy], case: str
) -> None:
    reply, message = BAD_PAGES[case]
    api.get("/leads", reply)
    strategy = opened(f"{api.url}/leads", params={"key": "not-in-errors"}, max_bytes=4096)

    with pytest.raises(SourceError) as failed:
        await polled(strategy)

    assert str(failed.value).startswith(f"GET {api.url}/leads: ")
    assert str(failed.value).endswith(message)
    assert "\n" not in str(failed.value)
    assert "not-in-errors" not in str(failed.value)  # the query is left out


async def test_bad_items_are_malformed_one_by_one_and_the_others_come_through(
    api: Api, opened: Callable[..., HttpStrategy], caplog: pytest.LogCaptureFixture
) -> None:
    api.get(
        "/leads",
        [
            lead(1),
            {"id": 2, "first_name": "No phone"},
            "not an object",
            {"phone": PHONES[4], "first_name": "No id"},
            lead(5, first_name=None),  # null: an empty greeting name, not an error
            lead(1, first_name="Twice"),
            {"id": 6, "phone": PHONES[6]},
        ],
    )
    strategy = opened(f"{api.url}/leads", greeting="Hi {first_name}")
    with caplog.at_level(logging.WARNING, logger="strategies.http"):
        items = await polled(strategy)

    assert ids(items) == ["1", "5"]
    bad = {i.id: (i.detail, i.phone) for i in items if isinstance(i, Malformed)}
    assert bad.pop("2") == ("missing field 'phone' (template '{phone}')", "")
    assert bad.pop("6") == ("missing field 'first_name' (template 'Hi {first_name}')", PHONES[6])
    (not_object, no_id) = sorted(bad.items(), key=lambda kv: kv[1][1])
    assert not_object[0].startswith("item:")
    assert not_object[1] == ("the item is a string, not an object", "")
    assert no_id[0].startswith("item:")
    assert no_id[1] == ("missing field 'id' (template '{id}')", PHONES[4])
    assert "http.bad_item strategy=leads record=2 reason=missing field 'phone'" in caplog.text
    assert "http.duplicate_id strategy=leads record=1" in caplog.text
    assert [r.greeting for r in items if isinstance(r, Record)] == ["Hi Name1", "Hi"]
    assert await polled(strategy) == []  # the same bad items are not reported again


# -- first contact ---------------------------------------------------------------------------


async def test_first_contact_mistakes_are_one_line_naming_the_cause_and_the_fix(
    api: Api, opened: Callable[..., HttpStrategy], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CRM_TOKEN", TOKEN)
    api.get("/private", as_json({"error": "unauthorized"}, 401))
    api.get("/forbidden", as_json({"error": "forbidden"}, 403))
    api.get("/old", Reply(301, b"", {"Location": "/api/v2/leads?key=x"}))
    env = HttpAuth(token_env="CRM_TOKEN")
    cases = {
        f"{api.url}/private": (
            None,
            "401 Unauthorized: the server wants credentials: configure [strategies.auth] "
            "(unauthorized)",
        ),
        f"{api.url}/private?with=auth": (
            env,
            "401 Unauthorized: the server refused the credentials from the environment "
            "variable CRM_TOKEN (unauthorized)",
        ),
        f"{api.url}/forbidden": (
            env,
            "403 Forbidden: the credentials from the environment variable CRM_TOKEN do not "
            "give access to this (forbidden)",
        ),
        f"{api.url}/lead": (None, "404 Not Found: no such endpoint (check the path in url)"),
        f"{api.url}/old": (
            None,
            f"301 Moved Permanently: the endpoint moved to {api.url}/api/v2/leads: set url to "
            "the new address",
        ),
    }
    for url, (auth, message) in cases.items():
        strategy = opened(url, auth=auth, retries=0)
        await strategy.open()
        with pytest.raises(SourceError) as failed:
            await polled(strategy)
        assert str(failed.value) == f"GET {url.partition('?')[0]}: {message}"
    assert not api.got(path="/api/v2/leads")  # a redirect is reported, never followed

    for url, match in [
        ("ftp://crm.example/leads", "url must start with https:// or http://"),
        ("crm.example/leads", "url must start with https:// or http://"),
        ("https://me:pw@crm.example/leads", r"url holds credentials; put the secret in \["),
    ]:
        with pytest.raises(ConfigError, match=match):
            HttpStrategy(url)
    with pytest.raises(ConfigError, match=r"bad path 'a\.\.b'"):
        HttpStrategy(f"{api.url}/leads", items="a..b")


# -- secrets ---------------------------------------------------------------------------------


async def test_the_token_never_shows_in_logs_errors_repr_or_requests_elsewhere(
    api: Api,
    opened: Callable[..., HttpStrategy],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CRM_TOKEN", TOKEN)
    api.get("/leads", {"items": [lead(1)], "next": "/leads/2"})
    api.get("/leads/2", as_json({"error": f"token {TOKEN} has expired"}, 401))
    api.on("PATCH", "/leads/1", as_json({"error": f"nope, {TOKEN}"}, 500))
    strategy = opened(
        f"{api.url}/leads",
        auth=HttpAuth(token_env="CRM_TOKEN"),
        write_back=HttpWriteBack(url="leads/{id}"),
        retries=1,
    )
    # Everything: httpx and httpcore too, as an application that turns them on would see.
    for name in ("", "httpx", "httpcore"):
        caplog.set_level(logging.DEBUG, logger=name)

    await strategy.open()
    with pytest.raises(SourceError) as failed:
        await polled(strategy)
    with pytest.raises(SourceError) as write_failed:
        await strategy.deliver("on_failed", Record(id="1", phone=PHONES[1]), "busy")

    assert [r.headers["authorization"] for r in api.requests] == [f"Bearer {TOKEN}"] * 3
    assert "token *** has expired" in str(failed.value)
    assert "nope, ***" in str(write_failed.value)
    shown = [str(failed.value), str(write_failed.value), repr(strategy), repr(strategy.auth)]
    shown += [r.getMessage() for r in caplog.records]
    assert any("HTTP Request: GET" in line for line in shown)  # httpx did log its requests
    assert any("send_request_headers" in line for line in shown)  # and httpcore its steps
    assert not [line for line in shown if TOKEN in line]
    assert (
        repr(strategy.auth)
        == "HttpAuth(header='Authorization', from the environment variable CRM_TOKEN)"
    )


async def test_a_secret_comes_from_a_file_or_a_credential_in_any_header(
    api: Api,
    opened: Callable[..., HttpStrategy],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    api.get("/leads", [lead(1)])
    (tmp_path / "key").write_text(TOKEN + "\n")
    (tmp_path / "creds").mkdir()
    (tmp_path / "creds" / "crm_key").write_text("from-systemd\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path / "creds"))

    for auth in [
        HttpAuth(token_file=tmp_path / "key", header="X-Api-Key"),
        HttpAuth(credential="crm_key", scheme="Token"),
        HttpAuth(token=TOKEN, header="X-Api-Key", scheme="Key"),
    ]:
        await polled(opened(f"{api.url}/leads", auth=auth))
    sent = [(r.headers.get("x-api-key"), r.headers.get("authorization")) for r in api.requests]
    assert sent == [(TOKEN, None), (None, "Token from-systemd"), (f"Key {TOKEN}", None)]


async def test_a_missing_secret_is_a_config_error_naming_its_source_on_open(
    api: Api,
    opened: Callable[..., HttpStrategy],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("CRM_TOKEN", raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    (tmp_path / "empty").write_text("\n")
    cases = [
        (HttpAuth(token_env="CRM_TOKEN"), "auth: the environment variable CRM_TOKEN is not set"),
        (HttpAuth(token_file=tmp_path / "absent"), "auth: cannot read .*absent: No such file"),
        (HttpAuth(token_file=tmp_path / "empty"), "auth: token_file .*empty is empty"),
        (
            HttpAuth(credential="crm"),
            r"auth: credential crm: \$CREDENTIALS_DIRECTORY is not set \(start the service",
        ),
    ]
    for auth, match in cases:
        with pytest.raises(ConfigError, match=f"strategy leads: {match}"):
            await opened(f"{api.url}/leads", auth=auth).open()
    with pytest.raises(ValueError, match="give one of token, token_env, token_file or cred"):
        HttpAuth()
    with pytest.raises(ValueError, match="not token_env and token_file"):
        HttpAuth(token_env="A", token_file="b")
    assert not api.requests


# -- write-back ------------------------------------------------------------------------------


async def test_every_outcome_is_sent_to_the_api_and_the_callbacks_still_run(
    api: Api, opened: Callable[..., HttpStrategy]
) -> None:
    api.get("/api/leads", [lead(1, crm={"key": "L/1"})])
    api.on("PATCH", "/api/leads/1", as_json({"ok": True}))
    api.on("POST", "/api/outcomes/L%2F1", Reply(204))
    strategy = opened(
        f"{api.url}/api/leads?status=new",
        write_back=HttpWriteBack(
            url="leads/{id}",
            status_field="dispatch.status",
            call_id_field="dispatch.call_id",
            time_field="dispatch.at",
            result_fields={"status": "appointment", "slots": "offered", "tool": "answered_by"},
        ),
        clock=ManualClock(wall=WALL),
    )
    delivered: list[tuple[str, str]] = []
    strategy.on_completed = lambda record, call_id, reason: delivered.append((record.id, reason))
    (record,) = await polled(strategy)
    answer = CallResult("confirm", {"status": "confirmed", "slots": [9, 10], "notes": None}, WALL)

    await strategy.deliver("on_dispatched", record, "call-1")
    await strategy.deliver("on_result", record, "call-1", answer)
    await strategy.deliver("on_completed", record, "call-1", "hangup")
    await strategy.deliver("on_failed", record, "busy")
    await strategy.deliver("on_skipped", record, "invalid_phone")

    at = "2026-11-24T15:00:00+00:00"
    assert [r.json() for r in api.got("PATCH")] == [
        {"dispatch": {"status": "dispatched", "call_id": "call-1", "at": at}},
        {"appointment": "confirmed", "offered": [9, 10], "answered_by": "confirm"},
        {"dispatch": {"status": "completed: hangup", "call_id": "call-1", "at": at}},
        {"dispatch": {"status": "failed: busy", "at": at}},
        {"dispatch": {"status": "skipped: invalid_phone", "at": at}},
    ]
    assert delivered == [("1", "hangup")]

    strategy.write_back = HttpWriteBack(url="/api/outcomes/{crm.key}", method="POST")
    await strategy.deliver("on_completed", record, "call-1", "hangup")
    assert api.got("POST")[0].json() == {"dispatch_status": "completed: hangup"}


async def test_a_failed_write_back_raises_for_the_outbox_and_an_unknown_record_is_dropped(
    api: Api, opened: Callable[..., HttpStrategy], caplog: pytest.LogCaptureFixture
) -> None:
    api.on("PATCH", "/leads/1", as_json({"error": "read-only maintenance"}, 503))
    strategy = opened(f"{api.url}/leads", write_back=HttpWriteBack(url="leads/{id}"))
    one, gone = Record(id="1", phone=PHONES[1]), Record(id="2", phone=PHONES[2])

    with pytest.raises(
        SourceError, match=r"PATCH .*/leads/1: 503 Service Unavailable: .*read-only"
    ):
        await strategy.deliver("on_completed", one, "call-1", "hangup")
    assert len(api.got("PATCH")) == 1  # the outbox retries, with its own backoff

    with caplog.at_level(logging.WARNING, logger="strategies.http"):
        await strategy.deliver("on_completed", gone, "call-2", "hangup")  # 404: no raise
        strategy.write_back = HttpWriteBack(url="leads/{crm_id}")
        await strategy.deliver("on_completed", gone, "call-2", "hangup")  # no such field
    assert "http.write_back_unmatched strategy=leads record=2 (PATCH" in caplog.text
    assert "answered 404" in caplog.text
    assert "no field 'crm_id' in record 2's metadata" in caplog.text
    assert len(api.got("PATCH")) == 2


# -- with the hub ----------------------------------------------------------------------------


async def test_the_hub_dials_the_good_items_through_bad_pages_and_writes_outcomes_back(
    api: Api, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bad = ["html", "error body", "wrong shape", "declared too large"]
    answers = iter([BAD_PAGES[case][0] for case in bad])
    good = {"data": [lead(1), lead(2), lead(3), {"id": 4, "name": "no phone"}, lead(5)]}
    api.get("/leads", lambda seen: next(answers, as_json(good)))
    patched: dict[str, list[Any]] = {}

    def patch(seen: Seen) -> Reply:
        body = seen.json()
        patched.setdefault(seen.path.rsplit("/", 1)[1], []).append(
            body.get("dispatch_status", body)  # an outcome's status, or a result's fields
        )
        return as_json({})

    for n in range(1, 6):
        api.on("PATCH", f"/leads/{n}", patch)
    clock = ManualClock()
    strategy = HttpStrategy(
        f"{api.url}/leads",
        write_back=HttpWriteBack(url="leads/{id}", result_fields={"status": "appointment"}),
        retries=0,
        max_bytes=4096,
        clock=clock,
    )
    said = CallResult("confirm_appointment", {"status": "confirmed"}, clock.now())
    agent = ScriptedAgent(script={PHONES[2]: ["busy"], PHONES[3]: [CallEnd("hangup", 3, (said,))]})
    hub = hub_for(
        f"sqlite:///{tmp_path / 'ledger.db'}",
        agent,
        strategy,
        clock=clock,
        exit_when_done=True,
        max_concurrent=3,
    )
    with anyio.fail_after(20), caplog.at_level(logging.ERROR, logger="dispatch.hub"):
        async with anyio.create_task_group() as tg:
            tg.start_soon(hub.run)
            for n in range(1, len(bad) + 1):
                await clock.wait_for_deadline(5.0 * n)  # poll n failed; the next is due
                assert agent.dials == []
                clock.advance(5)

    failed = [r.getMessage() for r in caplog.records if "poll.failed" in r.getMessage()]
    assert len(failed) == len(bad)
    for line, case in zip(failed, bad, strict=True):
        assert line.startswith(f"poll.failed strategy=leads error=SourceError: GET {api.url}/")
        assert line.endswith(BAD_PAGES[case][1])
    assert sorted(d.to for d in agent.dials) == sorted(PHONES[n] for n in (1, 2, 3, 5))
    assert patched == {
        "1": ["dispatched", "completed: hangup"],
        "2": ["failed: busy"],
        "3": ["dispatched", {"appointment": "confirmed"}, "completed: hangup"],
        "4": ["skipped: malformed"],
        "5": ["dispatched", "completed: hangup"],
    }


# -- configuration ---------------------------------------------------------------------------


def test_the_toml_keys_reach_the_strategy(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text(
        """
[[strategies]]
kind = "http"
name = "crm"
url = "https://crm.example/api/leads"
params = { status = "new" }
headers = { X-Tenant = "acme" }
items = "payload.leads"
next = "meta.next"
cursor_param = "after"
greeting = "Hi {contact.first_name}"
timeout = "10s"
retries = 5
retry_wait = 2
max_retry_wait = "2m"
max_bytes = 1000000
[strategies.auth]
token_file = "secrets/crm_token"
header = "X-Api-Key"
[strategies.write_back]
url = "leads/{id}"
method = "POST"
time_field = "called_at"
result_fields = { status = "appointment" }
"""
    )
    settings = load_settings(tmp_path / "config.toml")
    hub = build_hub(settings, base=tmp_path)
    (strategy,) = hub.strategies
    assert isinstance(strategy, HttpStrategy)
    assert strategy.name == "crm"
    assert str(strategy.url) == "https://crm.example/api/leads?status=new"
    assert strategy.headers == {"X-Tenant": "acme"}
    assert (strategy.cursor_param, strategy.timeout, strategy.retries) == ("after", 10.0, 5)
    assert strategy.backoff == Backoff(2.0, 120.0)
    assert strategy.max_bytes == 1_000_000
    assert strategy.auth == HttpAuth(token_file=tmp_path / "secrets/crm_token", header="X-Api-Key")
    assert strategy.write_back == HttpWriteBack(
        url="leads/{id}",
        method="POST",
        time_field="called_at",
        result_fields={"status": "appointment"},
    )
    assert strategy.templates.greeting == "Hi {contact.first_name}"


@pytest.mark.parametrize(
    ("snippet", "match"),
    [
        ('url = "ftp://x"', r"strategy 'crm': url must start with https://"),
        ('url = "https://x/l"\n[strategies.auth]\n', "auth: give one of token, token_env"),
        ('url = "https://x/l"\n[strategies.auth]\ntoken_env = "A"\ncredential = "b"', "not tok"),
        ('url = "https://x/l"\nitems = "a[b]"', "bad path 'a\\[b\\]'"),
        ('url = "https://x/l"\n[strategies.write_back]\nurl = "{id:>4}"', "no format specs"),
        ('url = "https://x/l"\n[strategies.write_back]\nurl = "x"\nmethod = "GET"', "method"),
    ],
)
def test_a_bad_http_setting_is_one_line_naming_it(tmp_path: Path, snippet: str, match: str) -> None:
    (tmp_path / "config.toml").write_text(
        f'[[strategies]]\nkind = "http"\nname = "crm"\n{snippet}\n'
    )
    with pytest.raises(ConfigError, match=match):
        build_hub(load_settings(tmp_path / "config.toml"), base=tmp_path)


def test_the_http_strategy_is_exported() -> None:
    assert set(http_module.__all__) <= set(strategies.__all__)


# -- the contract ----------------------------------------------------------------------------


class TestHttpStrategy(StrategyContract):
    """The seam's contract, with and without write-back."""

    expected_ids = ("1", "2", "3")

    @pytest.fixture(params=[None, HttpWriteBack(url="leads/{id}")], ids=["plain", "write_back"])
    def strategy(self, api: Api, request: pytest.FixtureRequest) -> HttpStrategy:
        self.api = api
        self.leads = [lead(1), lead(2), lead(3)]
        api.get("/leads", lambda seen: as_json({"items": self.leads}))
        for n in (1, 2, 3, 9):
            api.on("PATCH", f"/leads/{n}", as_json({}))
        return HttpStrategy(f"{api.url}/leads", write_back=request.param)

    async def add_record(self, strategy: Any) -> str:
        self.leads = [*self.leads, lead(9)]
        return "9"
