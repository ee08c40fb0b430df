"""HTTP servers on 127.0.0.1 that the download tests start themselves.

``FileServer`` serves named byte strings with programmable misbehaviour: a connection dropped halfway, a 500, wrong
bytes, and Google Drive's large-file confirm page. ``HubServer`` speaks the part of the Hugging Face Hub protocol
that ``hf_hub_download`` uses (HEAD/GET ``/{repo}/resolve/{revision}/{filename}`` with ``X-Repo-Commit`` and
``ETag``), so the real client runs against it through ``HF_ENDPOINT``.
"""
from __future__ import annotations

import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse


class _Server:
    def __init__(self, handler_cls):
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler_cls)
        self.httpd.owner = self
        self.requests: list[str] = []
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


class _FileHandler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep test output clean
        pass

    def do_GET(self):
        owner: FileServer = self.server.owner
        parsed = urlparse(self.path)
        query = {k: v[0] for k, v in parse_qs(parsed.query).items()}
        owner.requests.append(self.path)
        name = parsed.path.lstrip("/")
        if name == "uc":  # Google Drive: /uc?id=...&export=download[&confirm=...]
            name = query.get("id", "")
            if owner.gdrive_confirm and query.get("confirm") != "t0ken":
                page = (f'<html><body>Google Drive can\'t scan this file for viruses.'
                        f'<form id="download-form" action="{owner.url}/uc" method="get">'
                        f'<input type="hidden" name="id" value="{name}">'
                        f'<input type="hidden" name="export" value="download">'
                        f'<input type="hidden" name="confirm" value="t0ken"></form></body></html>').encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(page)))
                self.end_headers()
                self.wfile.write(page)
                return
        if name not in owner.files:
            self.send_error(404)
            return
        mode = owner.modes.get(name, "ok")
        if mode == "error500":
            self.send_error(500, "Internal Server Error")
            return
        body = owner.files[name]
        if mode == "wrong_bytes":
            body = bytes(b ^ 0xFF for b in body[:16]) + body[16:]
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if mode == "drop_halfway":
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.connection.shutdown(2)  # the peer sees the connection closed before Content-Length bytes
            return
        self.wfile.write(body)


class FileServer(_Server):
    """``files``: {name: bytes}; ``modes``: {name: "ok" | "drop_halfway" | "error500" | "wrong_bytes"}."""

    def __init__(self, files: dict[str, bytes], modes: dict[str, str] | None = None, gdrive_confirm: bool = False):
        super().__init__(_FileHandler)
        self.files, self.modes, self.gdrive_confirm = files, dict(modes or {}), gdrive_confirm


class _HubHandler(BaseHTTPRequestHandler):
    COMMIT = "0123456789abcdef0123456789abcdef01234567"

    def log_message(self, *args):
        pass

    def _resolve(self):
        owner: HubServer = self.server.owner
        owner.requests.append(f"{self.command} {self.path}")
        parts = urlparse(self.path).path.strip("/").split("/")
        # /{org}/{repo}/resolve/{revision}/{filename...}
        if len(parts) < 5 or parts[2] != "resolve":
            return None
        repo, revision, filename = "/".join(parts[:2]), parts[3], "/".join(parts[4:])
        return owner.files.get((repo, filename)) if revision in ("main", self.COMMIT) else None

    def _headers(self, body: bytes):
        self.send_header("X-Repo-Commit", self.COMMIT)
        self.send_header("ETag", '"' + hashlib.sha256(body).hexdigest() + '"')
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()

    def do_HEAD(self):
        body = self._resolve()
        if body is None:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self._headers(body)

    def do_GET(self):
        body = self._resolve()
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self._headers(body)
        self.wfile.write(body)


class HubServer(_Server):
    """``files``: {(repo_id, filename): bytes}."""

    def __init__(self, files: dict[tuple[str, str], bytes]):
        super().__init__(_HubHandler)
        self.files = files
