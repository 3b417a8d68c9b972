"""The FastAPI app: a thin HTTP layer over :class:`~cincer.app.session.Session`.

Errors are always 4xx with a JSON ``{"detail": ...}``: 400 bad JSON, 401 missing token, 404 unknown
query/example, 409 already answered (with the stored decision and the current state), 413 body too
large, 422 invalid values. Nothing is changed by a rejected request. Images are served by example
id only.
"""

from __future__ import annotations

import hmac
import html
import json
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import CincerError, ConflictError, NotFoundError
from .session import Session

MAX_BODY = 16 * 1024
TOKEN_COOKIE = "cincer_token"
STATIC = {"app.js": "text/javascript; charset=utf-8", "app.css": "text/css; charset=utf-8"}


class BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")


def create_app(session: Session, *, token: str | None = None, allowed_hosts: tuple[str, ...] = ()) -> FastAPI:
    """Without a token only loopback ``Host`` names (plus ``allowed_hosts``) are accepted, which stops
    DNS-rebinding pages; POST bodies must be ``application/json``, which a cross-site form cannot send."""
    app = FastAPI(title="cincer", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.session = session
    hosts = set(LOOPBACK_NAMES) | set(allowed_hosts)

    @app.middleware("http")
    async def guard(request: Request, call_next):
        if token is None and _hostname(request.headers.get("host", "")) not in hosts:
            return JSONResponse({"detail": "this server only answers requests addressed to localhost "
                                 "(start it with --host and a token to share it)"}, status_code=403)
        if token is not None and not _token_ok(request, token):
            return JSONResponse({"detail": "missing or wrong token: open the URL printed by `cincer serve` "
                                 "(…/?token=…) or send 'Authorization: Bearer <token>'"}, status_code=401)
        if request.method == "POST" and request.headers.get("content-type", "").split(";")[0].strip() \
                != "application/json":
            return JSONResponse({"detail": "POST bodies must be sent as Content-Type: application/json"},
                                status_code=415)
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY):
            return JSONResponse({"detail": f"request body too large (at most {MAX_BODY} bytes)"}, status_code=413)
        response = await call_next(request)
        if token is not None and request.query_params.get("token") == token:
            response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict")
        response.headers["Cache-Control"] = "no-store"
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    @app.exception_handler(NotFoundError)
    async def not_found(request: Request, err: NotFoundError):
        return JSONResponse({"detail": str(err)}, status_code=404)

    @app.exception_handler(ConflictError)
    async def conflict(request: Request, err: ConflictError):
        state = await run_in_threadpool(session.state)
        return JSONResponse({"detail": f"{err}; this answer was not applied. The current state is attached.",
                             "decision": err.decision, "state": state}, status_code=409)

    @app.exception_handler(BadRequest)
    async def bad_request(request: Request, err: BadRequest):
        return JSONResponse({"detail": str(err)}, status_code=err.status)

    @app.exception_handler(CincerError)
    async def invalid(request: Request, err: CincerError):
        return JSONResponse({"detail": str(err)}, status_code=422)

    @app.exception_handler(RequestValidationError)
    async def validation(request: Request, err: RequestValidationError):
        msgs = "; ".join(f"{'.'.join(map(str, e.get('loc', ())))}: {e.get('msg')}" for e in err.errors())
        return JSONResponse({"detail": f"invalid request: {msgs}"}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException):
        return JSONResponse({"detail": str(err.detail)}, status_code=err.status_code)

    # ------------------------------------------------------------------ pages
    @app.get("/", response_class=HTMLResponse)
    def index():
        state = session.state()
        return HTMLResponse(_page(state))

    @app.get("/static/{name}")
    def static(name: str):
        if name not in STATIC:  # a fixed list: nothing else is ever read from disk
            raise NotFoundError(f"no static file {name!r}")
        body = resources.files("cincer.app").joinpath("static", name).read_bytes()
        return Response(body, media_type=STATIC[name])

    @app.get("/healthz")
    def healthz():
        return {"ok": True, "model_version": session.model_version}

    # ------------------------------------------------------------------ API
    @app.get("/api/state")
    def state():
        return session.state()

    @app.get("/api/queries/{query_id}")
    def query(query_id: str, counter: int | None = None):
        stored = session.store.query(query_id)
        if counter is not None and counter not in [i for i, _ in stored.ranking]:
            raise CincerError(f"counter {counter} is not one of this query's counter-examples")
        return session.query_view(stored, counter_index=counter)

    @app.get("/api/queries/{query_id}/alternatives")
    def alternatives(query_id: str):
        stored = session.store.query(query_id)
        return {"query_id": query_id,
                "alternatives": [{**session.example(i), "score": s, "rank": r + 1}
                                 for r, (i, s) in enumerate(stored.ranking)]}

    @app.post("/api/queries/{query_id}/answer")
    async def answer(query_id: str, request: Request):
        body = await _read_json(request)
        args = _fields(body, {"action": str, "suspicious_label": int, "counter_label": int,
                              "counter_index": int, "who": str})
        if "action" not in args:
            args["action"] = "label" if ("suspicious_label" in args or "counter_label" in args) else "confirm"
        decision = await run_in_threadpool(lambda: session.answer(query_id, **args))
        state = await run_in_threadpool(session.state)
        return {"decision": decision, "state": state}

    @app.post("/api/undo")
    async def undo(request: Request):
        body = await _read_json(request)
        args = _fields(body, {"decision_id": int})
        if "decision_id" not in args:
            raise CincerError("decision_id is required (the id of the last decision, from /api/state)")
        decision, reopened = await run_in_threadpool(lambda: session.undo(args["decision_id"]))
        state = await run_in_threadpool(session.state)
        return {"undone": decision, "reopened": reopened.id, "state": state}

    @app.get("/api/examples/{index}")
    def example(index: int):
        return session.example(index)

    @app.get("/api/examples/{index}/image.png")
    def image(index: int):
        session.example(index)  # 404 for an unknown id
        if session.project.kind != "image":
            raise NotFoundError(f"example {index} has no image (this is a {session.project.kind} project)")
        try:
            png = session.project.image_png(index)
        except OSError:
            raise NotFoundError(f"the image of example {index} is missing from the project folder") from None
        return Response(png, media_type="image/png")

    @app.get("/api/decisions")
    def decisions():
        return {"decisions": session.store.decisions()}

    return app


def _hostname(host: str) -> str:
    if host.startswith("["):
        return host[1:].split("]")[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _token_ok(request: Request, token: str) -> bool:
    auth = request.headers.get("authorization", "")
    candidates = [auth[7:] if auth.lower().startswith("bearer ") else "",
                  request.headers.get("x-cincer-token", ""), request.cookies.get(TOKEN_COOKIE, ""),
                  request.query_params.get("token", "")]
    return any(c and hmac.compare_digest(c.encode(), token.encode()) for c in candidates)


async def _read_json(request: Request) -> dict:
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise BadRequest(413, f"request body too large (at most {MAX_BODY} bytes)")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw:
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as err:
        raise BadRequest(400, f"the body is not valid JSON: {err}") from None
    except RecursionError:
        raise BadRequest(400, "the body is not valid JSON: nested too deeply") from None
    if not isinstance(body, dict):
        raise BadRequest(400, "the body must be a JSON object")
    return body


def _fields(body: dict, schema: dict[str, type]) -> dict:
    unknown = set(body) - set(schema)
    if unknown:
        raise CincerError(f"unknown field(s): {', '.join(sorted(unknown))}")
    out = {}
    for name, kind in schema.items():
        value = body.get(name)
        if value is None:
            continue
        if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise CincerError(f"{name} must be an integer, got {json.dumps(value)[:40]}")
        if kind is int and not -2**62 <= value < 2**62:
            raise CincerError(f"{name} is out of range")
        if kind is str and not isinstance(value, str):
            raise CincerError(f"{name} must be a string")
        out[name] = value
    return out


def _page(state: dict) -> str:
    data = json.dumps(state).replace("</", "<\\/")
    name = html.escape(state["project"]["name"])
    p = state["progress"]
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>cincer · {name}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="stylesheet" href="/static/app.css"></head>
<body>
<header><h1>CINCER <span class="project">{name}</span></h1>
<div id="progress" class="progress">{p['answered']} queries answered · {p['labels_changed']} labels changed ·
{p['seen']}/{p['total']} examples seen</div></header>
<main id="main"><p>Loading…</p></main>
<div id="message" role="status" aria-live="polite"></div>
<div id="help" class="help" hidden></div>
<footer>Keys: <kbd>0</kbd>–<kbd>9</kbd>/letters pick a label · <kbd>Tab</kbd> switches example ·
<kbd>Enter</kbd> confirms · <kbd>u</kbd> undo · <kbd>s</kbd> skip · <kbd>n</kbd> next-best ·
<kbd>?</kbd> keys</footer>
<script id="initial-state" type="application/json">{data}</script>
<script src="/static/app.js"></script>
</body></html>"""
