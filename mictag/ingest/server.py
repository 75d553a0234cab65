"""``mictag serve``: the tagging service over HTTP/JSON, on aiohttp's server.

Endpoints (JSON in and out; every one but health and ready needs ``Authorization: Bearer <token>``):

- ``POST /v1/tag``: ``{"paths": [...]}``, files on the server under one of its ``--root`` folders
  (any other path is refused with 403 before anything is opened), or a multipart upload of one
  audio file in the field ``file`` (at most ``--max-upload`` bytes: 413; its first bytes must look
  like audio: 415; kept in a temporary file that is removed whatever happens). The answer:
  ``{"results": [<one object per file, as mictag tag --json prints>]}``, in the order asked.
- ``GET /v1/health``: the process answers. ``GET /v1/ready``: the model is loaded (503 before).
- ``GET /v1/model``: labels, thresholds, the model's name and sha256, engine, mictag version.
- ``GET /v1/stats``: files, windows and engine calls so far (windows per call: the batching).

A full queue answers 503 with ``Retry-After``. Error bodies are ``{"error": "..."}`` and never
hold a path, a token or a traceback. One JSON line per request goes to the access log (stderr):
time, id, method, endpoint, status, files, seconds. SIGTERM or SIGINT: no new connection is
accepted, the requests in flight are answered, and the process exits 0.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import os
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path

from aiohttp import web

from mictag import __version__
from mictag.digest import file_digest
from mictag.errors import ConfigError, MictagError
from mictag.ingest.record import file_record
from mictag.ingest.service import Busy, TaggingService

MAX_PATHS = 1000  # paths in one request
# The first bytes of the audio formats mictag decodes (an upload that starts otherwise is refused).
_MAGIC = (b"RIFF", b"fLaC", b"OggS", b"ID3", b"FORM", b"caff", b"wvpk", b"MAC ", b"#!AMR", b"\x30\x26\xb2\x75",
          b".snd", b"MThd")


def looks_like_audio(head: bytes) -> bool:
    """Whether ``head`` (a file's first bytes) starts like an audio file mictag can decode."""
    if head.startswith(_MAGIC):
        return True
    if len(head) >= 12 and head[4:8] == b"ftyp":  # MP4 / M4A
        return True
    return len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0  # an MPEG audio frame (MP3, ADTS AAC)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_token(token_file: str | None) -> str | None:
    """The token from ``token_file`` (its first line) or $MICTAG_TOKEN; None where neither is set."""
    if token_file:
        try:
            token = Path(token_file).read_text("utf-8").strip().splitlines()[0].strip() if Path(token_file).stat().st_size else ""
        except (OSError, UnicodeDecodeError, IndexError) as exc:
            raise ConfigError(f"cannot read it ({getattr(exc, 'strerror', None) or exc})", "--token-file") from None
        if not token:
            raise ConfigError("it is empty", "--token-file")
        return token
    return os.environ.get("MICTAG_TOKEN") or None


class _Roots:
    def __init__(self, roots: list[str]):
        self.roots = [os.path.realpath(r) for r in roots]

    def allows(self, path: str) -> str | None:
        """The path resolved (symlinks followed, without opening anything) if it lies under a root."""
        if not isinstance(path, str) or not path or "\0" in path:
            return None
        real = os.path.realpath(path)
        for root in self.roots:
            if real == root or real.startswith(root.rstrip(os.sep) + os.sep):
                return real
        return None


def _error(status: int, message: str, **headers) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


def make_app(service_factory, token: str | None, roots: list[str], max_upload: int,
             log=sys.stderr) -> web.Application:
    """The aiohttp application. ``service_factory()`` loads the model (in a thread, at start-up:
    /v1/ready says when it is done)."""
    allowed = _Roots(roots)
    state: dict = {"service": None, "model": None, "failed": None}

    @web.middleware
    async def access_log(request: web.Request, handler):
        t0 = time.perf_counter()
        request["id"] = uuid.uuid4().hex[:12]
        request["files"] = 0
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            response = _error(exc.status, exc.reason or "error")
        except Exception as exc:  # never a traceback in a body; the log says what it was
            print(json.dumps({"event": "error", "id": request["id"], "error": type(exc).__name__}), file=log,
                  flush=True)
            response = _error(500, "internal error")
        print(json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "id": request["id"], "method": request.method,
                          "endpoint": request.path, "status": response.status, "files": request["files"],
                          "seconds": round(time.perf_counter() - t0, 4)}), file=log, flush=True)
        response.headers["X-Request-Id"] = request["id"]
        return response

    @web.middleware
    async def auth(request: web.Request, handler):
        if request.path in ("/v1/health", "/v1/ready") or token is None:
            return await handler(request)
        given = request.headers.get("Authorization", "")
        scheme, _, value = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), token.encode()):
            return _error(401, "a valid bearer token is required", **{"WWW-Authenticate": "Bearer"})
        return await handler(request)

    async def health(request):
        return web.json_response({"status": "ok"})

    async def ready(request):
        if state["service"] is None:
            return _error(503, "the model is not loaded yet")
        return web.json_response({"ready": True})

    async def model(request):
        service = _ready_service()
        return web.json_response(state["model"] | {"engine": service.engine, "mictag_version": __version__,
                                                   "thresholds": [float(t) for t in service.thresholds]})

    async def stats(request):
        return web.json_response(_ready_service().stats())

    def _ready_service() -> TaggingService:
        if state["service"] is None:
            raise web.HTTPServiceUnavailable(reason="the model is not loaded yet", headers={"Retry-After": "5"})
        return state["service"]

    async def tag(request: web.Request):
        service = _ready_service()
        if request.content_type.startswith("multipart/"):
            return await _upload(request, service)
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            return _error(400, 'the body is not JSON: send {"paths": [...]} or a multipart upload')
        paths = body.get("paths") if isinstance(body, dict) else None
        if not isinstance(paths, list) or not paths or not all(isinstance(p, str) for p in paths):
            return _error(400, 'send {"paths": ["..."]}: a non-empty list of paths on the server')
        if len(paths) > MAX_PATHS:
            return _error(413, f"at most {MAX_PATHS} paths a request")
        resolved = [allowed.allows(p) for p in paths]
        if any(r is None for r in resolved):
            return _error(403, "a path lies outside the folders this service may read")
        request["files"] = len(paths)
        return await _answer(service, resolved, paths)

    async def _answer(service: TaggingService, resolved: list[str], shown: list[str]):
        try:
            futures = service.submit(resolved)
        except Busy:
            return _error(503, "busy: try again shortly", **{"Retry-After": "1"})
        results = await asyncio.gather(*(asyncio.wrap_future(f) for f in futures))
        labels = service.labels
        records = []
        for result, path in zip(results, shown):
            result.path = path
            records.append(file_record(result, labels, state["model"]["model"]))
        return web.json_response({"results": records})

    async def _upload(request: web.Request, service: TaggingService):
        if request.content_length is not None and request.content_length > max_upload + 65536:
            return _error(413, f"an upload may hold at most {max_upload} bytes")
        reader = await request.multipart()
        part = await reader.next()
        while part is not None and part.name != "file":
            part = await reader.next()
        if part is None:
            return _error(400, 'send the audio file in the multipart field "file"')
        name = Path(part.filename or "upload").name[:200] or "upload"
        fd, tmp = tempfile.mkstemp(prefix="mictag-upload-", suffix=Path(name).suffix[:10])
        try:
            size, head = 0, b""
            with os.fdopen(fd, "wb") as f:
                while chunk := await part.read_chunk(1 << 16):
                    size += len(chunk)
                    if size > max_upload:
                        return _error(413, f"an upload may hold at most {max_upload} bytes")
                    if len(head) < 16:
                        head += chunk[: 16 - len(head)]
                    f.write(chunk)
            if not looks_like_audio(head):
                return _error(415, "the upload does not look like an audio file")
            request["files"] = 1
            return await _answer(service, [tmp], [name])
        finally:
            try:
                os.unlink(tmp)
            except OSError:
                pass

    async def start(app):
        loop = asyncio.get_running_loop()

        def load():
            try:
                service = service_factory()
            except Exception as exc:  # the service cannot serve: it stops, and the command says why
                state["failed"] = exc
                print(json.dumps({"event": "model failed", "error": str(exc)}), file=log, flush=True)
                os.kill(os.getpid(), signal.SIGTERM)
                return
            state["model"] = {"labels": service.labels,
                              "model": {"name": service.model.name, "sha256": file_digest(service.model)}}
            state["service"] = service
            print(json.dumps({"event": "ready", "engine": service.engine}), file=log, flush=True)

        app["loading"] = loop.run_in_executor(None, load)

    async def stop(app):
        await app["loading"]
        if state["service"] is not None:
            await asyncio.get_running_loop().run_in_executor(None, state["service"].close)

    app = web.Application(middlewares=[access_log, auth], client_max_size=max_upload + 65536)
    app["state"] = state
    app.router.add_get("/v1/health", health)
    app.router.add_get("/v1/ready", ready)
    app.router.add_get("/v1/model", model)
    app.router.add_get("/v1/stats", stats)
    app.router.add_post("/v1/tag", tag)
    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    return app


def serve(host: str, port: int, roots: list[str], token: str | None, max_upload: int, service_factory,
          shutdown_timeout: float = 120.0) -> None:
    """Run until SIGTERM or SIGINT (then answer what is in flight and return)."""
    if token is None and not is_loopback(host):
        raise ConfigError(f"{host} is not a loopback address: give a token (--token-file, or MICTAG_TOKEN)", "--host")
    for root in roots:
        if not Path(root).is_dir():
            raise ConfigError(f"{root} is not a folder", "--root")
    app = make_app(service_factory, token, roots, max_upload)

    def say(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    web.run_app(app, host=host, port=port, shutdown_timeout=shutdown_timeout, access_log=None, print=say,
                handle_signals=True)
    failed = app["state"]["failed"]
    if failed is not None:  # the model did not load: one line, exit 2 (a MictagError says it best)
        raise failed if isinstance(failed, MictagError) else MictagError(f"the model could not be loaded: {failed}")
