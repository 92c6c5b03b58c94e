"""A FAKE Hugging Face Hub: a boundary this machine cannot cross (no model hub is reachable).

It serves one folder as one model repository through the few endpoints huggingface_hub's
`snapshot_download` uses, so that `liminati model pull` runs the real client (inside the vLLM
image, as vllm-user) against it:

    GET  /api/models/<repo>/revision/<rev>     repository info: the commit sha
    GET  /api/models/<repo>/tree/<rev>          the files (recursive listing)
    HEAD /<repo>/resolve/<rev>/<path>           size, etag, commit
    GET  /<repo>/resolve/<rev>/<path>           the bytes (Range honoured)

Requests without `Authorization: Bearer <the token given>` get 401, as a gated model does; each
request's path and whether it carried the token go to the log file (never the token).
Standard library only: it runs with the test system's own python3.

    python3 fake_hub.py PORT REPO_ID FOLDER TOKEN_FILE LOG
"""

from __future__ import annotations

import hashlib
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class Hub(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    repo: str
    folder: Path
    token: str
    log: Path

    def log_message(self, fmt: str, *args: object) -> None:
        pass

    def _record(self, authorized: bool) -> None:
        with self.log.open("a") as f:
            f.write(json.dumps({"method": self.command, "path": self.path, "token": authorized}))
            f.write("\n")

    def _send(self, code: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, data: object) -> None:
        self._send(200, json.dumps(data).encode(), {"Content-Type": "application/json"})

    def _files(self) -> list[Path]:
        return sorted(p for p in self.folder.rglob("*") if p.is_file())

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        authorized = self.headers.get("Authorization", "") == f"Bearer {self.token}"
        self._record(authorized)
        if not authorized:
            self._send(401, b'{"error":"Access to this model is restricted."}')
            return
        path = unquote(urlparse(self.path).path)
        api = f"/api/models/{self.repo}/"
        if path.startswith(api + "revision/"):
            siblings = [{"rfilename": str(p.relative_to(self.folder))} for p in self._files()]
            self._json({"id": self.repo, "modelId": self.repo, "sha": COMMIT,
                        "siblings": siblings, "private": False, "gated": "manual"})  # fmt: skip
            return
        if path.startswith(api + "tree/"):
            entries = []
            for p in self._files():
                data = p.read_bytes()
                oid = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
                entries.append({"type": "file", "path": str(p.relative_to(self.folder)),
                                "size": len(data), "oid": oid})  # fmt: skip
            self._json(entries)
            return
        prefix = f"/{self.repo}/resolve/"
        if path.startswith(prefix):
            rel = path[len(prefix) :].split("/", 1)[1]
            file = (self.folder / rel).resolve()
            if not file.is_file() or self.folder.resolve() not in file.parents:
                self._send(404, b"not found", {"X-Error-Code": "EntryNotFound"})
                return
            data = file.read_bytes()
            oid = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
            headers = {
                "X-Repo-Commit": COMMIT,
                "ETag": f'"{oid}"',
                "Content-Type": "application/octet-stream",
                "Accept-Ranges": "bytes",
            }
            ranged = self.headers.get("Range", "")
            if ranged.startswith("bytes=") and self.command == "GET":
                start = int(ranged[6:].split("-")[0] or 0)
                headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
                self._send(206, data[start:], headers)
                return
            self._send(200, data, headers)
            return
        self._send(404, b"not found", {"X-Error-Code": "RepoNotFound"})


def main() -> None:
    port, repo, folder, token_file, log = sys.argv[1:6]
    Hub.repo, Hub.folder, Hub.log = repo, Path(folder), Path(log)
    Hub.token = Path(token_file).read_text().strip()
    with ThreadingHTTPServer(("127.0.0.1", int(port)), Hub) as server:
        print("ready", flush=True)
        server.serve_forever()


if __name__ == "__main__":
    main()
