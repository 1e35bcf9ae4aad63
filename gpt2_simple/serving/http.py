"""HTTP plumbing the server's routes share: the optional stack, bounded JSON bodies, errors, the API key.

This module owns what every route needs and no route decides: importing Starlette and Uvicorn
(the optional `serve` extra) with a one-line error naming the install command, reading a request
body as JSON within a size limit (413 beyond, 400 for bad JSON), turning an `openai_api.APIError`
into its JSON response, and the `Authorization: Bearer` middleware. The routes are `routes.py`'s.
"""
import hmac
import json

from .openai_api import APIError

INSTALL = 'pip install "gpt2_simple[serve]"  (from a checkout: pip install -e ".[serve]")'
PUBLIC = ("/health", "/", "/gallery")  # no key needed: the health check, and the static pages (they ask for the key)


def stack():
    """(starlette, uvicorn), the modules, or a one-line error saying how to install them."""
    try:
        import starlette.applications
        import starlette.responses
        import starlette.routing
        import uvicorn
    except ImportError as e:
        raise ModuleNotFoundError(f"gpt2_simple serve needs Starlette and Uvicorn ({e.name} is missing); "
                                  f"install them with: {INSTALL}") from None
    return starlette, uvicorn


def error_response(e):
    """An `APIError` as its JSON response, in OpenAI's error shape."""
    from starlette.responses import JSONResponse

    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


async def read_json(request, limit):
    """The body as JSON, at most `limit` bytes (413 beyond), or a 400 APIError."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise APIError(413, f"the request body is {declared} bytes; at most {limit} are allowed")
    body = b""
    async for part in request.stream():
        body += part
        if len(body) > limit:
            raise APIError(413, f"the request body is over {limit} bytes; at most {limit} are allowed")
    try:
        return json.loads(body, parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError) as e:
        raise APIError(400, f"the request body is not valid JSON: {e}") from None


def _no_constant(name):
    raise ValueError(f"{name} is not a JSON number")


class Auth:
    """ASGI middleware: `Authorization: Bearer <key>` on every route but PUBLIC, compared in constant time."""

    def __init__(self, app, key):
        self.app, self.key, self.state = app, key.encode(), app.state

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"] not in PUBLIC:
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, b"Bearer " + self.key):
                e = APIError(401, "missing or wrong API key: send the header 'Authorization: Bearer <key>'",
                             kind="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
                return await error_response(e)(scope, receive, send)
        return await self.app(scope, receive, send)
