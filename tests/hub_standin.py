"""A stand-in for the Hugging Face Hub's download side, on 127.0.0.1: what `snapshot_download` asks for.

The real `huggingface_hub` client talks to it through `HF_ENDPOINT`. It serves model repositories
from local folders (`repos`: {"ORG/NAME": folder}) with the Hub's read routes: the repository's
revision (`/api/models/ORG/NAME/revision/REV`), its file tree (`/api/models/ORG/NAME/tree/REV`)
and each file (`HEAD`/`GET /ORG/NAME/resolve/REV/FILE`, with `X-Repo-Commit` and `ETag`). An
unknown repository is a 404 with `X-Error-Code: RepoNotFound`, as the Hub answers.
"""
import contextlib
import hashlib
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _files(folder):
    return sorted(os.path.relpath(os.path.join(root, f), folder).replace(os.sep, "/")
                  for root, _, names in os.walk(folder) for f in names)


def _sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


class _Handler(BaseHTTPRequestHandler):
    repos = {}
    requests = []

    def log_message(self, *args):  # quiet
        pass

    def do_HEAD(self):
        self._answer(body=False)

    def do_GET(self):
        self._answer(body=True)

    def _answer(self, body):
        path = unquote(urlparse(self.path).path)
        type(self).requests.append((self.command, path))
        parts = path.strip("/").split("/")
        if parts[:2] == ["api", "models"] and len(parts) >= 6:
            return self._api(parts[2] + "/" + parts[3], parts[4], body)
        if len(parts) >= 5 and parts[2] == "resolve":
            return self._file(parts[0] + "/" + parts[1], "/".join(parts[4:]), body)
        self._json(404, {"error": "not found"}, body)

    def _api(self, rid, kind, body):
        folder = type(self).repos.get(rid)
        if folder is None:
            return self._json(404, {"error": "Repository not found"}, body, RepoNotFound=True)
        if kind == "revision":
            return self._json(200, {"id": rid, "modelId": rid, "sha": COMMIT, "private": False,
                                    "siblings": [{"rfilename": f} for f in _files(folder)]}, body)
        entries = []
        for f in _files(folder):
            full = os.path.join(folder, f)
            entry = {"type": "file", "path": f, "size": os.path.getsize(full), "oid": _sha256(full)[:40]}
            if f.endswith(".safetensors"):
                entry["lfs"] = {"oid": _sha256(full), "size": os.path.getsize(full), "pointerSize": 134}
            entries.append(entry)
        return self._json(200, entries, body)

    def _file(self, rid, name, body):
        folder = type(self).repos.get(rid)
        path = os.path.join(folder, name) if folder else None
        if path is None or not os.path.isfile(path):
            return self._json(404, {"error": "Entry not found"}, body, RepoNotFound=folder is None)
        with open(path, "rb") as f:
            data = f.read()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        self.send_header("X-Repo-Commit", COMMIT)
        self.end_headers()
        if body:
            self.wfile.write(data)

    def _json(self, status, payload, body, RepoNotFound=False):  # noqa: N803 (the Hub's header name)
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if RepoNotFound:
            self.send_header("X-Error-Code", "RepoNotFound")
        elif status == 404:
            self.send_header("X-Error-Code", "EntryNotFound")
        self.end_headers()
        if body:
            self.wfile.write(data)


@contextlib.contextmanager
def hub_standin(repos):
    """Serve `repos` ({"ORG/NAME": folder}); yields (endpoint URL, the list of (method, path) it was asked)."""
    handler = type("Handler", (_Handler,), {"repos": dict(repos), "requests": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler.requests
    finally:
        server.shutdown()
        server.server_close()
