"""The labelling web app (Starlette, served by uvicorn) and its JSON API.

Routes:

- ``GET /`` the labelling page, ``GET /stats`` the statistics page, ``GET /static/NAME`` their
  scripts and style sheet (a fixed list of names: nothing else on disk can be asked for);
- ``GET /api/next?annotator=NAME`` the pair on NAME's screen and their progress;
- ``POST /api/choice`` ``{"annotator", "pair_id", "choice": "left"|"right"|"tie"|"skip"}``
  records the choice, then answers like ``/api/next``;
- ``POST /api/undo`` ``{"annotator"}`` removes NAME's last choice and shows that pair again;
- ``GET /api/stats`` what ``/stats`` shows (:func:`rlhf_fast.label.stats.label_stats`).

Every error is a 4xx answer with a JSON body ``{"error": "..."}``: 400 malformed body or
field, 401 missing token, 404 unknown pair or path, 409 a pair already judged (a replayed
submission), 413 body over 16 KiB, 415 a body that is not ``application/json`` (which also
keeps other web sites from posting here: a cross-site JSON post needs a CORS pre-flight,
which this server never grants).

On a loopback address only requests naming a loopback host are served (a web page cannot
then reach the server through a DNS name it controls). On any other address each request
must carry the token printed at start: ``?token=`` in the first URL sets a cookie, or an
``X-Label-Token`` header. Pages put all text in with ``textContent``, never as HTML, and the
Content-Security-Policy allows no inline script.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import re
import socket
import threading
import time
from importlib import resources
from typing import Any, Callable, Optional

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from rlhf_fast.errors import InvalidArgumentError
from rlhf_fast.label.pairs import Pair
from rlhf_fast.label.stats import label_stats
from rlhf_fast.label.store import (
    VERDICTS,
    AlreadyJudgedError,
    PreferenceStore,
    UnknownPairError,
    swapped_for,
)

__all__ = ["LabelServer", "create_app", "is_loopback"]

MAX_BODY_BYTES = 16 * 1024
TOKEN_COOKIE = "rlhf_fast_label_token"
TOKEN_HEADER = "x-label-token"
ANNOTATOR_PATTERN = re.compile(r"[^\x00-\x1f\x7f]{1,64}")
_ASSETS = {  # name -> media type; the only files /static serves
    "app.js": "text/javascript; charset=utf-8",
    "stats.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
_PAGES = {"/": "index.html", "/stats": "stats.html"}
_SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
        "form-action 'self'; frame-ancestors 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",  # the first URL may carry the token
    "cache-control": "no-store",
}


class ApiError(Exception):
    """An answer with a 4xx status and a JSON ``{"error": message}`` body."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _error_response(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=_SECURITY_HEADERS)


def is_loopback(host: str) -> bool:
    """``host`` is a loopback address (or ``localhost``): only this machine can connect."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _host_name(header: str) -> str:
    """``"127.0.0.1:8000"`` -> ``"127.0.0.1"``, ``"[::1]:8000"`` -> ``"::1"``."""
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class _Guard:
    """ASGI middleware: the token or loopback-host check, then the security headers."""

    def __init__(self, app: Any, *, token: Optional[str], loopback: bool) -> None:
        self.app, self.token, self.loopback = app, token, loopback

    def _refusal(self, request: Request) -> Optional[JSONResponse]:
        if self.loopback and not is_loopback(_host_name(request.headers.get("host", ""))):
            return _error_response(400, "this server answers only requests to a loopback host")
        if self.token is None:
            return None
        given = (
            request.headers.get(TOKEN_HEADER)
            or request.query_params.get("token")
            or request.cookies.get(TOKEN_COOKIE)
            or ""
        )
        if not hmac.compare_digest(given.encode(), self.token.encode()):
            return _error_response(
                401, "a token is required: open the URL that rlhf-fast label printed at start"
            )
        return None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        refusal = self._refusal(request)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        set_cookie = self.token is not None and "token" in request.query_params

        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in _SECURITY_HEADERS.items():
                    headers[name] = value
                if set_cookie:
                    headers.append(
                        "set-cookie",
                        f"{TOKEN_COOKIE}={self.token}; Path=/; HttpOnly; SameSite=Strict",
                    )
            await send(message)

        await self.app(scope, receive, send_with_headers)


# ------------------------------------------------------------------- requests
async def _json_body(request: Request, allowed: tuple[str, ...]) -> dict[str, Any]:
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "application/json":
        raise ApiError(
            415, f"expected Content-Type: application/json, got {media_type or 'none'!r}"
        )
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
        raise ApiError(413, f"body too large: at most {MAX_BODY_BYTES} bytes")
    body = bytearray()
    async for chunk in request.stream():  # also caps a body sent without a length
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise ApiError(413, f"body too large: at most {MAX_BODY_BYTES} bytes")
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "body: not valid JSON") from None
    if not isinstance(data, dict):
        raise ApiError(400, f"body: expected a JSON object, got {type(data).__name__}")
    unexpected = sorted(set(data) - set(allowed))
    if unexpected:
        raise ApiError(400, f"body: unexpected field(s) {unexpected}; expected {list(allowed)}")
    return data


def _annotator(value: Any) -> str:
    if not isinstance(value, str) or not ANNOTATOR_PATTERN.fullmatch(value.strip()):
        raise ApiError(400, "annotator: expected a name of 1-64 printable characters")
    return value.strip()


def _text(data: dict[str, Any], name: str) -> str:
    value = data.get(name)
    if not isinstance(value, str):
        raise ApiError(400, f"{name}: expected a string, got {type(value).__name__}")
    return value


def _shown(pair: Pair, annotator: str) -> dict[str, str]:
    """The pair as ``annotator`` sees it: left and right in their fixed orientation."""
    left, right = pair.candidate_0, pair.candidate_1
    if swapped_for(pair.pair_id, annotator):
        left, right = right, left
    return {"pair_id": pair.pair_id, "prompt": pair.prompt, "left": left, "right": right}


def create_app(
    store: PreferenceStore, *, token: Optional[str] = None, loopback: bool = True
) -> Starlette:
    """The labelling app over ``store``; ``token`` required on every request when given,
    ``loopback``: refuse requests whose Host is not a loopback name."""
    static = resources.files(__package__).joinpath("static")
    assets = {name: static.joinpath(name).read_bytes() for name in (*_ASSETS, *_PAGES.values())}

    def state(annotator: str) -> dict[str, Any]:
        pair = store.next_pair(annotator)
        return {
            "annotator": annotator,
            "pair": None if pair is None else _shown(pair, annotator),
            "progress": {"pairs": len(store.pairs), "yours": store.count_of(annotator)},
        }

    async def page(request: Request) -> Response:
        return Response(assets[_PAGES[request.url.path]], media_type="text/html; charset=utf-8")

    async def asset(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in _ASSETS:
            raise ApiError(404, f"no such file: /static/{name}")
        return Response(assets[name], media_type=_ASSETS[name])

    async def next_pair(request: Request) -> JSONResponse:
        annotator = _annotator(request.query_params.get("annotator"))
        return JSONResponse(await run_in_threadpool(state, annotator))

    async def choice(request: Request) -> JSONResponse:
        data = await _json_body(request, ("annotator", "pair_id", "choice"))
        annotator = _annotator(data.get("annotator"))
        pair_id, verdict = _text(data, "pair_id"), _text(data, "choice")
        if verdict not in VERDICTS:
            raise ApiError(400, f"choice: expected one of {list(VERDICTS)}, got {verdict!r}")

        def record() -> dict[str, Any]:
            store.record(annotator, pair_id, verdict)
            return {"saved": {"pair_id": pair_id, "choice": verdict}, **state(annotator)}

        return JSONResponse(await run_in_threadpool(record))

    async def undo(request: Request) -> JSONResponse:
        annotator = _annotator((await _json_body(request, ("annotator",))).get("annotator"))

        def run() -> dict[str, Any]:
            undone = store.undo(annotator)
            return {"undone": None if undone is None else undone.pair_id, **state(annotator)}

        return JSONResponse(await run_in_threadpool(run))

    async def stats(request: Request) -> JSONResponse:
        judgements = await run_in_threadpool(store.judgements)
        return JSONResponse(label_stats(judgements, len(store.pairs)))

    async def api_error(request: Request, exc: Exception) -> Response:
        if isinstance(exc, ApiError):
            return _error_response(exc.status, exc.message)
        if isinstance(exc, UnknownPairError):
            return _error_response(404, str(exc))
        if isinstance(exc, AlreadyJudgedError):
            return _error_response(409, str(exc))
        if isinstance(exc, HTTPException):
            message = "not found" if exc.status_code == 404 else str(exc.detail)
            return _error_response(
                exc.status_code, f"{message}: {request.method} {request.url.path}"
            )
        return _error_response(400, str(exc))

    routes = [
        *(Route(path, page, methods=["GET"]) for path in _PAGES),
        Route("/static/{name:path}", asset, methods=["GET"]),
        Route("/api/next", next_pair, methods=["GET"]),
        Route("/api/choice", choice, methods=["POST"]),
        Route("/api/undo", undo, methods=["POST"]),
        Route("/api/stats", stats, methods=["GET"]),
    ]
    handlers: dict[Any, Callable[..., Any]] = {
        cls: api_error for cls in (ApiError, UnknownPairError, AlreadyJudgedError, HTTPException)
    }
    handlers[InvalidArgumentError] = api_error
    app = Starlette(routes=routes, exception_handlers=handlers)
    app.add_middleware(_Guard, token=token, loopback=loopback)
    return app


# ---------------------------------------------------------------------- serving
class LabelServer:
    """The app on a listening socket, served by uvicorn: :meth:`serve_forever` in the
    foreground (Ctrl-C stops it), or :meth:`start` / :meth:`stop` on a thread.

    ``port=0`` picks a free port; :attr:`url` tells which.
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 8000) -> None:
        import uvicorn

        try:
            family, kind, proto, _, address = socket.getaddrinfo(
                host, port, type=socket.SOCK_STREAM
            )[0]
            self.socket = socket.socket(family, kind, proto)
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.socket.bind(address)
            self.socket.listen(128)  # connections wait in the backlog until uvicorn serves
        except OSError as exc:
            raise InvalidArgumentError(
                f"host, port: cannot listen on {host}:{port}: {exc}"
            ) from None
        self.host, self.port = host, self.socket.getsockname()[1]
        config = uvicorn.Config(
            app, log_level="warning", access_log=False, lifespan="off", timeout_graceful_shutdown=3
        )
        self.server = uvicorn.Server(config)
        self._thread: Optional[threading.Thread] = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def serve_forever(self) -> None:
        self.server.run(sockets=[self.socket])

    def start(self, timeout: float = 10.0) -> LabelServer:
        self._thread = threading.Thread(target=self.serve_forever, name="label-server", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError(f"the label server did not start within {timeout} s")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
        self.socket.close()

    def __enter__(self) -> LabelServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
