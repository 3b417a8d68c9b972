"""The FastAPI app: a thin HTTP layer over :class:`~cincer.app.session.Session`.

Errors are always 4xx with a JSON ``{"detail": ...}``: 400 bad JSON, 401 missing, unknown or revoked
token, 404 unknown query/example, 409 already answered (with the stored decision and the current
state), 413 body too large, 415 not JSON, 422 invalid values. Nothing is changed by a rejected
request. Images are served by example id only.

Token mode (the project has annotators, :mod:`cincer.app.users`): every request carries an
annotator's token, which decides who the request is from (``who`` in the audit log, whose query is
shown, whose last decision an undo reverts). Otherwise one shared ``token`` (or none on loopback)
and the session's ``who``.
"""

from __future__ import annotations

import hmac
import html
import json
import re
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import CincerError, ConflictError, NotFoundError
from .export import export_tables, render
from .session import Session
from .users import Annotators

MAX_BODY = 16 * 1024
TOKEN_COOKIE = "cincer_token"
STATIC = {"app.js": "text/javascript; charset=utf-8", "app.css": "text/css; charset=utf-8",
          "favicon.svg": "image/svg+xml"}
EXPORTS = {"labels.csv": "text/csv; charset=utf-8", "audit.csv": "text/csv; charset=utf-8",
           "cleaned.json": "application/json", "labels.parquet": "application/vnd.apache.parquet",
           "audit.parquet": "application/vnd.apache.parquet"}


class BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")


def create_app(session: Session, *, token: str | None = None, allowed_hosts: tuple[str, ...] = (),
               annotators: Annotators | None = None) -> FastAPI:
    """Without a token only loopback ``Host`` names (plus ``allowed_hosts``) are accepted, which stops
    DNS-rebinding pages; POST bodies must be ``application/json``, which a cross-site form cannot send.
    With ``annotators`` the app runs in token mode (and the session ``per_user``)."""
    if annotators is not None and token is not None:
        raise CincerError("a project with annotators takes their tokens only, not a shared --token "
                          "(see `cincer project user list`)")
    if annotators is not None:
        session.per_user = True
        session.is_annotator = lambda name: any(u["name"] == name for u in annotators.active())
    app = FastAPI(title="cincer", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.session = session
    hosts = set(LOOPBACK_NAMES) | set(allowed_hosts)
    guarded = token is not None or annotators is not None

    @app.middleware("http")
    async def guard(request: Request, call_next):
        if not guarded and _hostname(request.headers.get("host", "")) not in hosts:
            return JSONResponse({"detail": "this server only answers requests addressed to localhost "
                                 "(start it with --host and a token to share it)"}, status_code=403)
        user, given = session.who, None
        if annotators is not None:
            candidates = _tokens(request)
            found = await run_in_threadpool(_authenticate, annotators, candidates)  # a first check hashes: slow
            if found is None:
                why = "unknown or revoked token" if candidates else "missing token"
                return JSONResponse({"detail": f"{why}: open the link `cincer project user add` printed for you "
                                     "(…/?token=…), or ask for a new one"}, status_code=401)
            given, user = found
        elif token is not None and not _token_ok(request, token):
            return JSONResponse({"detail": "missing or wrong token: open the URL printed by `cincer serve` "
                                 "(…/?token=…) or send 'Authorization: Bearer <token>'"}, status_code=401)
        request.state.user = user
        if request.method == "POST" and request.headers.get("content-type", "").split(";")[0].strip().lower() \
                != "application/json":
            return JSONResponse({"detail": "POST bodies must be sent as Content-Type: application/json"},
                                status_code=415)
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY):
            return JSONResponse({"detail": f"request body too large (at most {MAX_BODY} bytes)"}, status_code=413)
        response = await call_next(request)
        cookie = given if annotators is not None else token
        if cookie is not None and request.query_params.get("token") == cookie:
            response.set_cookie(TOKEN_COOKIE, cookie, httponly=True, samesite="strict")
        response.headers["Cache-Control"] = "no-store"
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    @app.exception_handler(NotFoundError)
    async def not_found(request: Request, err: NotFoundError):
        return JSONResponse({"detail": str(err)}, status_code=404)

    @app.exception_handler(ConflictError)
    async def conflict(request: Request, err: ConflictError):
        state = await run_in_threadpool(session.state, _user(request))
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
    def index(request: Request):
        return HTMLResponse(_page(session.state(_user(request))))

    @app.get("/static/{name}")
    def static(name: str):
        if name not in STATIC:  # a fixed list: nothing else is ever read from disk
            raise NotFoundError(f"no static file {name!r}")
        body = resources.files("cincer.app").joinpath("static", name).read_bytes()
        return Response(body, media_type=STATIC[name])

    @app.get("/favicon.ico")
    def favicon():
        return static("favicon.svg")

    @app.get("/healthz")
    def healthz():
        return {"ok": True, "model_version": session.model_version}

    # ------------------------------------------------------------------ API
    @app.get("/api/state")
    def state(request: Request):
        return session.state(_user(request))

    @app.get("/api/status")
    def status(request: Request):
        return session.status(_user(request))

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
                "alternatives": [{**session.example(i, model=True), "score": s, "rank": r + 1}
                                 for r, (i, s) in enumerate(stored.ranking)]}

    @app.post("/api/queries/{query_id}/answer")
    async def answer(query_id: str, request: Request):
        body = await _read_json(request)
        args = _fields(body, {"action": str, "suspicious_label": int, "counter_label": int,
                              "counter_index": int, "who": str})
        if "action" not in args:
            args["action"] = "label" if ("suspicious_label" in args or "counter_label" in args) else "confirm"
        user = _user(request)
        decision = await run_in_threadpool(lambda: session.answer(query_id, **args, user=user))
        state = await run_in_threadpool(session.state, user)
        return {"decision": decision, "state": state}

    @app.post("/api/undo")
    async def undo(request: Request):
        body = await _read_json(request)
        args = _fields(body, {"decision_id": int})
        if "decision_id" not in args:
            raise CincerError("decision_id is required (the id of the last decision, from /api/state)")
        user = _user(request)
        decision, reopened = await run_in_threadpool(lambda: session.undo(args["decision_id"], user))
        state = await run_in_threadpool(session.state, user)
        return {"undone": decision, "reopened": reopened.id, "state": state}

    @app.get("/api/skipped")
    def skipped():
        return {"skipped": session.skipped()}

    @app.post("/api/skipped/{decision_id}/revisit")
    async def revisit(decision_id: int, request: Request):
        _fields(await _read_json(request), {})
        user = _user(request)
        decision, reopened = await run_in_threadpool(lambda: session.revisit(decision_id, user))
        state = await run_in_threadpool(session.state, user)
        return {"revisited": decision, "reopened": reopened.id, "state": state}

    @app.get("/api/examples/{index}")
    def example(index: int):
        return session.example(index, model=True)

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

    @app.get("/api/export/{name}")
    def export(name: str):
        if name not in EXPORTS:
            raise NotFoundError(f"no export {name!r} (one of {', '.join(EXPORTS)})")
        with session.lock:  # labels and audit of one moment
            labels, audit = export_tables(session.project, session.store)
        body = render(labels, audit, name.rsplit(".", 1)[1])[name]
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", session.project.name).strip("._") or "cincer"
        return Response(body, media_type=EXPORTS[name],
                        headers={"Content-Disposition": f'attachment; filename="{stem[:60]}-{name}"'})

    return app


def _user(request: Request) -> str:
    return getattr(request.state, "user", None) or request.app.state.session.who


def _hostname(host: str) -> str:
    if host.startswith("["):
        return host[1:].split("]")[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _tokens(request: Request) -> list[str]:
    """The tokens a request carries, in order of precedence: header, X-Cincer-Token, ``?token=``, cookie."""
    auth = request.headers.get("authorization", "")
    found = [auth[7:].strip() if auth.lower().startswith("bearer ") else "",
             request.headers.get("x-cincer-token", ""), request.query_params.get("token", ""),
             request.cookies.get(TOKEN_COOKIE, "")]
    return [c for c in found if c]


def _authenticate(annotators: Annotators, candidates: list[str]) -> tuple[str, str] | None:
    """``(token, annotator)`` for the first candidate that is an active annotator's token."""
    for candidate in candidates:
        name = annotators.authenticate(candidate)
        if name is not None:
            return candidate, name
    return None


def _token_ok(request: Request, token: str) -> bool:
    return any(hmac.compare_digest(c.encode(), token.encode()) for c in _tokens(request))


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


def script_json(data) -> str:
    """JSON that is safe inside ``<script>``: no ``<``, ``>`` or ``&`` (so no ``</script>`` or ``<!--``) and
    no U+2028/U+2029 (line breaks to older JavaScript parsers) appear as such; JSON.parse reads it back."""
    text = json.dumps(data)
    for char, escaped in (("&", "\\u0026"), ("<", "\\u003c"), (">", "\\u003e"),
                          ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(char, escaped)
    return text


def _page(state: dict) -> str:
    data = script_json(state)
    name = html.escape(state["project"]["name"])
    p = state["progress"]
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>cincer · {name}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="/static/favicon.svg" type="image/svg+xml">
<link rel="stylesheet" href="/static/app.css"></head>
<body>
<header><div class="top"><h1>CINCER <span class="project">{name}</span></h1>
<nav id="tools" class="tools" aria-label="tools"></nav></div>
<div id="progress" class="progress">{p['answered']} queries answered · {p['labels_changed']} labels changed ·
{p['seen']}/{p['total']} examples seen</div></header>
<div id="message" role="status" aria-live="polite"></div>
<main id="main"><p>Loading…</p></main>
<section id="skipped" class="skipped" hidden aria-label="skipped queries"></section>
<div id="help" class="help" role="dialog" aria-label="instructions and keys" hidden></div>
<footer>Keys: the key on a label's button picks it · <kbd>←</kbd> <kbd>→</kbd> switch example ·
<kbd>a</kbd> accept the model's suggestion · <kbd>Enter</kbd> save · <kbd>s</kbd> skip · <kbd>u</kbd> undo ·
<kbd>n</kbd> next-best · <kbd>?</kbd> instructions and keys</footer>
<script id="initial-state" type="application/json">{data}</script>
<script src="/static/app.js"></script>
</body></html>"""
