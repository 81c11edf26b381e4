"""The HTTP routes: KServe v2 (+ Triton's statistics), the upload API with feedback and monitoring, /metrics, the
web page and the OpenAPI document.

Each route only translates: find the model, decode the request (kserve_v2 / upload), submit it to the model's
batcher, encode the answer. Every error is a JSON `{"error": "..."}` with the status of its kind (errors.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from functools import partial

from fastapi import APIRouter, Depends, FastAPI, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from ..config import ServeConfig
from ..errors import BadInput, NotFound, UserError, require
from ..version import __version__
from . import kserve_v2, page, upload
from .batcher import Batcher
from .metrics import Metrics, ModelStats
from .monitor import Collector, Monitor, new_ids, parse_feedback, prediction_ids
from .repository import ServedModel
from .transport import BodyLimit, Busy, ByteBudget, TooLarge, check_key, declared_length, decode_body

INLINE_BYTES = 64 << 10  # smaller KServe bodies decode on the event loop: a thread hop would cost more than decoding
INLINE_VALUES = 1 << 14  # smaller responses (rows x classes x outputs) encode on the loop, larger ones off it
DECODERS = 2  # threads that decode request bodies and encode large responses: each may hold one decoded image
BODY_BUDGET = 256 << 20  # bytes of request bodies in memory at once (at least 4 of the largest allowed)
IMAGE_TYPES = ("image/png", "image/jpeg", "application/octet-stream")
log = logging.getLogger(__name__)


@dataclass
class Endpoint:
    """A served model with its batcher and statistics."""

    served: ServedModel
    batcher: Batcher
    stats: ModelStats
    monitor: Monitor | None = None

    def monitoring(self) -> Monitor:
        require(self.monitor is not None, f"model {self.served.name} is served with --no-monitor", NotFound)
        return self.monitor


def _error(status: int, message: str) -> JSONResponse:
    headers = {"Retry-After": "1"} if status == 503 else {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse({"error": message}, status, headers)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(UserError)
    async def user_error(request, e: UserError):
        return _error(e.http_status, str(e))

    @app.exception_handler(RequestValidationError)
    async def invalid(request, e: RequestValidationError):
        problems = "; ".join(f"{'.'.join(map(str, err.get('loc', ())))}: {err.get('msg')}" for err in e.errors())
        return _error(400, f"invalid request ({problems})")

    @app.exception_handler(HTTPException)
    async def http_error(request, e: HTTPException):
        return _error(e.status_code, str(e.detail))

    @app.exception_handler(ClientDisconnect)
    async def gone(request, e: ClientDisconnect):  # one line, not a traceback: nobody is left to answer
        log.info("%s %s: the connection closed before the request had arrived (the client left, or was too slow "
                 "for --request-timeout)", request.method, request.url.path)
        return Response(status_code=400)

    @app.exception_handler(Exception)
    async def bug(request, e: Exception):  # a bug: the caller gets JSON; Starlette re-raises it for uvicorn to log
        return _error(500, "internal server error (logged on the server)")


class Service:
    """What the routes share: the models' endpoints, the settings, readiness; the handlers are its methods."""

    def __init__(self, models: list[ServedModel], config: ServeConfig):
        self.config, self.metrics, self.ready = config, Metrics(), False
        self.max_bytes = int(config.max_body_mb * 1e6)
        self.bodies = ByteBudget(max(BODY_BUDGET, 4 * self.max_bytes))
        self.decoder = ThreadPoolExecutor(DECODERS, thread_name_prefix="gpuvision-decode")
        self.endpoints: dict[str, Endpoint] = {}
        for served in models:
            batcher = Batcher(partial(served.runtime.logits_normalised, tta=config.tta), config.max_batch_size,
                              config.max_wait_ms / 1e3, config.max_queue, config.instances, name=served.name)
            stats = ModelStats(self.metrics, served.name, served.version, lambda b=batcher: b.depth)
            batcher.observers.append(stats)
            monitor = open_monitor(served, config) if config.monitor else None
            if monitor is not None:
                batcher.observers.append(monitor)
            self.endpoints[served.name] = Endpoint(served, batcher, stats, monitor)
        monitors = [e.monitor for e in self.endpoints.values() if e.monitor is not None]
        if monitors:
            self.metrics.registry.register(Collector(monitors))

    @asynccontextmanager
    async def lifespan(self, app):
        for endpoint in self.endpoints.values():
            endpoint.batcher.start()
        self.ready = True
        yield
        self.ready = False
        await asyncio.gather(*(endpoint.batcher.stop() for endpoint in self.endpoints.values()))
        for endpoint in self.endpoints.values():
            if endpoint.monitor is not None:
                endpoint.monitor.close()
        self.decoder.shutdown(wait=False, cancel_futures=True)

    def find(self, name: str, version: str | None = None) -> Endpoint:
        require(name in self.endpoints, f"no model named {name!r}; this server has {', '.join(self.endpoints)}",
                NotFound)
        endpoint = self.endpoints[name]
        require(version in (None, endpoint.served.version), f"model {name} has version {endpoint.served.version}, "
                f"not {version!r}", NotFound)
        return endpoint

    def body(self, request: Request, raw: bytes) -> bytes:
        return decode_body(raw, request.headers.get("content-encoding"), self.max_bytes)

    @asynccontextmanager
    async def receive(self, request: Request, limit: int | None = None) -> AsyncIterator[bytes | None]:
        """Room for the request's body in the server's budget of bodies held in memory, for as long as the block
        runs; with `limit`, the body itself, read (at most `limit` bytes, decompressed) once there is room. Without
        room within half the request timeout, the body is read and dropped, and the answer is 503 (Retry-After)."""
        declared = declared_length(request.headers.get("content-length"))
        if limit is not None and declared is not None and declared > limit:  # refused before it is read
            raise TooLarge(self._over(limit))
        try:
            held = await self.bodies.acquire(declared if declared is not None else limit or self.max_bytes,
                                             self.config.request_timeout / 2)
        except Busy:
            async for _ in request.stream():  # drained, not kept: the client then reads the 503
                pass
            raise
        try:
            if limit is None:
                yield None
                return
            chunks, size = [], 0
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise TooLarge(self._over(limit))
                chunks.append(chunk)
            yield decode_body(b"".join(chunks), request.headers.get("content-encoding"), limit)
        finally:
            await self.bodies.release(held)

    def _over(self, limit: int) -> str:
        why = "(--max-body-mb)" if limit >= self.max_bytes else "(the most this model's inputs can need)"
        return f"the request body is over {limit:,} bytes {why}"

    async def offload(self, inline: bool, fn, *args):
        """fn(*args) on the event loop when `inline` (small work: a thread hop would cost more), else in one of the
        server's DECODERS threads: never a large decode or encode on the loop, never more than DECODERS at once."""
        if inline:
            return fn(*args)
        return await asyncio.get_running_loop().run_in_executor(self.decoder, partial(fn, *args))

    async def live(self) -> dict:
        """The server process is up"""
        return {"live": True}

    async def readiness(self) -> Response:
        """Every model is loaded, warmed up and serving"""
        return JSONResponse({"ready": self.ready}, 200 if self.ready else 503)

    async def prometheus(self) -> Response:
        """Prometheus metrics, labelled by model and version"""
        return Response(generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def server_metadata(self) -> dict:
        """Server metadata"""
        return kserve_v2.server_metadata()

    async def metadata(self, request: Request, endpoint: Endpoint) -> dict:
        """Model metadata: inputs, outputs, and the runtime the server chose"""
        served, runtime = endpoint.served, endpoint.served.runtime
        parameters = {"backend": runtime.backend, "precision": runtime.precision, "device": str(runtime.device),
                      "runtime_choice": served.choice, "runtime_timings_ms": served.timings_ms,
                      "max_batch_size": self.config.max_batch_size, "tta": self.config.tta,
                      "temperature": runtime.temperature(self.config.tta)}
        return kserve_v2.model_metadata(served.name, served.version, runtime.spec, runtime.classes, parameters)

    async def model_ready(self, request: Request, endpoint: Endpoint) -> Response:
        """The model is ready for inference"""
        return JSONResponse({"name": endpoint.served.name, "ready": self.ready}, 200 if self.ready else 503)

    async def stats(self, request: Request, endpoint: Endpoint) -> dict:
        """Triton's statistics extension: counts and cumulative times"""
        return {"model_stats": [endpoint.stats.triton()]}

    async def infer(self, request: Request, endpoint: Endpoint) -> Response:
        """Inference: JSON, or with Triton's binary tensor data extension"""
        served, spec, max_batch = endpoint.served, endpoint.served.runtime.spec, self.config.max_batch_size
        header_length = request.headers.get(kserve_v2.HEADER_LENGTH)
        limit = min(self.max_bytes, kserve_v2.max_request_bytes(spec, max_batch, binary=header_length is not None))
        with endpoint.stats.request():
            async with self.receive(request, limit) as body:
                decoded = await self.offload(len(body) < INLINE_BYTES, kserve_v2.decode_request, body, header_length,
                                             spec, max_batch)
            response_id, ids = prediction_ids(decoded.id, len(decoded.x))
            logits = await endpoint.batcher.submit(decoded.x, decoded.pixels, ids)
            small = logits.numel() * len(decoded.outputs) <= INLINE_VALUES
            content, headers = await self.offload(small, kserve_v2.encode_response, replace(decoded, id=response_id),
                                                  logits, served.name, served.version, served.runtime.classes, ids,
                                                  served.runtime.temperature(self.config.tta))
        return Response(content, headers=headers)

    async def predict(self, request: Request, name: str, top_k: int = Query(1, ge=1, le=upload.MAX_TOP_K)) -> dict:
        """Classify image files (multipart `file`, repeatable, or one image as the body)"""
        endpoint = self.find(name)
        served, spec = endpoint.served, endpoint.served.runtime.spec
        with endpoint.stats.request():
            async with self.receive(request):
                files = await self.files(request)
                upload.check_pixels(files, spec, self.config.max_batch_size)  # from the headers: microseconds
                pixels, x = await self.offload(False, upload.decode_images, files, spec)  # never on the event loop
            ids = new_ids(len(files))
            logits = await endpoint.batcher.submit(x, pixels, ids)
            return upload.encode_response([n for n, _ in files], logits, served.runtime.classes, top_k,
                                          served.name, served.version, ids,
                                          served.runtime.temperature(self.config.tta))

    async def models(self) -> dict:
        """The models served: name, version, classes, and whether they are monitored"""
        return {"models": [{"name": e.served.name, "version": e.served.version, "classes": e.served.runtime.classes,
                            "monitored": e.monitor is not None} for e in self.endpoints.values()]}

    async def feedback(self, request: Request, name: str) -> dict:
        """Give a prediction (by its id) its true label: {"id": "...", "label": "<class>"}"""
        endpoint = self.find(name)
        async with self.receive(request, self.max_bytes) as body:
            prediction_id, label = parse_feedback(body)
        return endpoint.monitoring().feedback(prediction_id, label)

    async def monitor(self, name: str) -> dict:
        """Production against test: live accuracy and drift beside the test split's figures, and serving figures"""
        endpoint = self.find(name)
        return {"schema_version": 1, "model": name, "version": endpoint.served.version,
                "runtime": endpoint.served.runtime.name, "tta": self.config.tta,
                "serving": endpoint.stats.summary(), **endpoint.monitoring().report()}

    async def files(self, request: Request) -> list[tuple[str, bytes]]:
        """The uploaded images, (name, bytes) each."""
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            return [("body", self.body(request, await request.body()))]
        limit = self.config.max_batch_size
        form = await request.form(max_files=limit, max_fields=limit)
        files = []
        for i, item in enumerate(form.getlist(upload.FIELD)):
            require(not isinstance(item, str), f"multipart field {upload.FIELD!r} must be a file, not text",
                    BadInput)
            files.append((item.filename or f"file-{i}", await item.read()))
        return files


def open_monitor(served: ServedModel, config: ServeConfig) -> Monitor:
    """The monitor of a served model, its window restored from --monitor-dir if kept there."""
    runtime, manifest = served.runtime, served.model.manifest
    return Monitor(served.name, served.version, runtime.classes, runtime.spec.mean, runtime.spec.std,
                   manifest.reference, config.feedback_window, config.monitor_dir, runtime.name,
                   config.tta and manifest.tta_level > 0)


def _model_routes(router: APIRouter, service: Service, method: str, suffix: str, handler, **kwargs) -> None:
    """handler(request, endpoint) at /v2/models/{name}SUFFIX and at /v2/models/{name}/versions/{version}SUFFIX."""
    async def latest(request: Request, name: str):
        return await handler(request, service.find(name))

    async def versioned(request: Request, name: str, version: str):
        return await handler(request, service.find(name, version))

    for path, endpoint in (("", latest), ("/versions/{version}", versioned)):
        router.add_api_route(f"/v2/models/{{name}}{path}{suffix}", endpoint, methods=[method], summary=handler.__doc__,
                             name=f"{handler.__name__}{path and '_version'}", **kwargs)


BINARY = {"schema": {"type": "string", "format": "binary"}}
INFER_DOC = {"openapi_extra": {"requestBody": {"required": True, "content": {
                 "application/json": {"schema": kserve_v2.INFER_REQUEST_SCHEMA}, "application/octet-stream": BINARY}}},
             "responses": {200: {"content": {"application/json": {"schema": kserve_v2.INFER_RESPONSE_SCHEMA}}}}}
PREDICT_DOC = {"openapi_extra": {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "properties": {
        upload.FIELD: {"type": "array", "items": BINARY["schema"]}}}},
    **dict.fromkeys(IMAGE_TYPES, BINARY)}}}}
FEEDBACK_DOC = {"openapi_extra": {"requestBody": {"required": True, "content": {"application/json": {"schema": {
    "type": "object", "required": ["id", "label"], "additionalProperties": False,
    "properties": {"id": {"type": "string"}, "label": {"type": "string"}}}}}}}}


def build_app(models: list[ServedModel], config: ServeConfig, api_key: str | None = None) -> FastAPI:
    """The ASGI app serving these models (loaded and warmed up) with these settings."""
    service = Service(models, config)
    app = FastAPI(title="gpuvision", version=__version__, lifespan=service.lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None, description="Image classification: KServe v2 / Open Inference Protocol (with "
                  "Triton's binary tensor data, classification and statistics extensions) and an upload API.")
    app.add_middleware(BodyLimit, max_bytes=service.max_bytes)
    _add_error_handlers(app)

    async def require_key(credentials: HTTPAuthorizationCredentials | None = Depends(HTTPBearer(auto_error=False))):
        check_key(api_key, f"Bearer {credentials.credentials}" if credentials else None)

    public = APIRouter()
    private = APIRouter(dependencies=[Depends(require_key)] if api_key is not None else [])
    public.add_api_route("/v2/health/live", service.live, methods=["GET"], summary=service.live.__doc__)
    public.add_api_route("/v2/health/ready", service.readiness, methods=["GET"], summary=service.readiness.__doc__)
    (public if config.metrics_public else private).add_api_route(
        "/metrics", service.prometheus, methods=["GET"], summary=service.prometheus.__doc__, response_class=Response)
    private.add_api_route("/v2", service.server_metadata, methods=["GET"], summary=service.server_metadata.__doc__)
    private.add_api_route("/openapi.json", app.openapi, methods=["GET"], include_in_schema=False)
    model_routes = [("GET", "", service.metadata, {}), ("GET", "/ready", service.model_ready, {}),
                    ("GET", "/stats", service.stats, {}), ("POST", "/infer", service.infer, INFER_DOC)]
    for method, suffix, handler, doc in model_routes:
        _model_routes(private, service, method, suffix, handler, **doc)
    private.add_api_route("/models/{name}/predict", service.predict, methods=["POST"],
                          summary=service.predict.__doc__, **PREDICT_DOC)
    private.add_api_route("/models", service.models, methods=["GET"], summary=service.models.__doc__)
    private.add_api_route("/models/{name}/feedback", service.feedback, methods=["POST"],
                          summary=service.feedback.__doc__, **FEEDBACK_DOC)
    private.add_api_route("/models/{name}/monitor", service.monitor, methods=["GET"],
                          summary=service.monitor.__doc__)
    page.add_routes(public)
    app.include_router(public)
    app.include_router(private)
    return app
