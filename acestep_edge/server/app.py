"""The Starlette app: routes and WebSocket endpoints over one Renderer, behind the Host/Origin guard."""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from starlette.applications import Starlette
from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket

from .auth import Access
from .guard import PathGuard
from .hooks import Hooks
from .jobs import Renderer
from .loras import LoraDir, install, route
from .routes import STATIC, Routes, reply
from .state import State
from .studio import studio_routes
from .tasks import Tasks
from .websocket import Connection
from .wire import INTERNAL, entry

log = logging.getLogger("acestep_edge.server")


@dataclass
class ServerOptions:
    api_key: str | None = None
    allow_dirs: tuple[str, ...] = ()
    max_body_bytes: int = 64 * 2**20
    bundle_info: dict = field(default_factory=dict)
    bind_host: str = "127.0.0.1"
    public_url: str | None = None
    cors_origins: tuple[str, ...] = ()
    webhook_allow: tuple[str, ...] = ()
    ws_grace_seconds: float = 30.0
    lora_dir: str | None = None  # adapters (request `lora` names) are read from here only


class Guarded:
    """ASGI middleware: refuse foreign Host and Origin headers (403), answer CORS for --cors-origin pages."""

    def __init__(self, app, access: Access):
        self.app, self.access = app, access

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        refusal = self.access.refusal(headers)
        if refusal is not None:
            log.warning("refused %s %s: %s", scope["type"], scope.get("path"), refusal["message"])
            if scope["type"] == "websocket":
                return await send({"type": "websocket.close", "code": 1008})  # before accept: HTTP 403
            return await JSONResponse({"errors": [refusal]}, status_code=403)(scope, receive, send)
        origin = headers.get("origin")
        if scope["type"] == "websocket" or not self.access.cross_origin(origin):
            return await self.app(scope, receive, send)
        cors = {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}
        if scope["method"] == "OPTIONS":
            return await Response(status_code=204, headers={
                **cors, "Access-Control-Allow-Methods": "GET, POST, DELETE",
                "Access-Control-Allow-Headers": "Authorization, Content-Type", "Access-Control-Max-Age": "600",
            })(scope, receive, send)

        async def send_with_cors(message):
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message).update(cors)
            await send(message)

        return await self.app(scope, receive, send_with_cors)


def create_app(renderer: Renderer, options: ServerOptions | None = None) -> Guarded:
    options = options or ServerOptions()
    if renderer.hooks is None:
        renderer.hooks = Hooks(options.webhook_allow)
    access = Access(options.api_key, options.bind_host, options.public_url, options.cors_origins)
    public = options.public_url.rstrip("/") + "/" if options.public_url else None
    info = renderer.pipeline.info()
    if options.bundle_info:
        info["bundle"] = options.bundle_info
    state = State(renderer, Tasks(renderer, PathGuard(options.allow_dirs), renderer.hooks), access,
                  options.max_body_bytes, public, info, options.ws_grace_seconds)
    routes = Routes(state)
    loras = LoraDir(options.lora_dir)
    install(renderer.pipeline, loras)

    async def socket(websocket: WebSocket) -> None:
        await Connection(state, websocket).run()

    async def not_found(request, exc) -> Response:
        return reply([], [entry("endpointNotFound", f"{request.url.path[:80]}: no such endpoint; POST tasks to /v1",
                                None, None, None)])

    async def not_allowed(request, exc) -> Response:
        return reply([], [entry("unsupportedMethod", f"{request.method} {request.url.path[:80]}: method not "
                                "allowed; POST tasks to /v1", None, None, None)])

    async def server_error(request, exc) -> Response:
        log.exception("unhandled error on %s", request.url.path)  # the type and traceback stay in the log
        return JSONResponse({"errors": [entry(INTERNAL, "the server failed to answer this request; its log has "
                                              "the details", None, None, None)]}, status_code=500)

    @asynccontextmanager
    async def lifespan(app):
        yield
        await asyncio.to_thread(renderer.close)

    app = Starlette(routes=[
        Route("/", routes.studio, methods=["GET"]),
        Route("/", routes.tasks, methods=["POST"]),
        WebSocketRoute("/", socket),
        Route("/v1", routes.tasks, methods=["POST"]),
        WebSocketRoute("/v1", socket),
        Route("/v1/tasks/{task_uuid}/events", routes.events, methods=["GET"]),
        Route("/v1/tasks/{task_uuid}", routes.cancel, methods=["DELETE"]),
        Route("/v1/renders", routes.renders, methods=["GET"]),
        Route("/audio/{name}", routes.audio, methods=["GET", "HEAD"]),
        Route("/health", routes.health, methods=["GET"]),
        route(loras, routes.denied),
        *studio_routes(options.max_body_bytes, state.tasks.precheck, routes.denied),
        Mount("/static", app=StaticFiles(directory=STATIC), name="static"),
    ], lifespan=lifespan, exception_handlers={404: not_found, 405: not_allowed, Exception: server_error})
    app.state.server = state
    return Guarded(app, access)
