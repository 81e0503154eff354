"""A local stand-in for the Hub API calls ``huggingface_hub`` makes in create_repo, create_branch and create_commit.

It answers both clients the project supports: 0.3x (requests; ``private`` in create_repo) and 2.x
(httpx2; ``visibility``). Uploads take the plain LFS path: the tests set HF_HUB_DISABLE_XET=1, since
Xet storage (hf_xet, 2.x's default for large files) talks to a separate CAS service this server does not fake.

It binds to 127.0.0.1 only, records every request (with its Authorization header), stores what the
commit endpoint receives (regular files inline, LFS files through the batch API and a PUT), and
shuts itself down after ``lifetime_s`` even if a test forgets to.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

LFS_THRESHOLD = 10 * 1024 * 1024  # the Hub stores files of 10 MB and more, and binary files, through LFS


@dataclass
class FakeHubState:
    repos: dict[str, dict] = field(default_factory=dict)  # repo_id -> {"private": bool, "branches": set}
    requests: list[dict] = field(default_factory=list)  # method, path, query, authorization
    lfs_objects: dict[str, bytes] = field(default_factory=dict)  # sha256 -> content
    commits: list[dict] = field(default_factory=list)  # repo_id, revision, create_pr, summary, files, lfs_files
    unexpected: list[str] = field(default_factory=list)


class _Handler(BaseHTTPRequestHandler):
    server: "FakeHub"

    def log_message(self, *args):  # keep pytest output clean
        pass

    # --- plumbing
    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _reply(self, status: int, payload=None) -> None:
        data = json.dumps(payload if payload is not None else {}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        if status >= 400 and payload and "error" in payload:  # the Hub repeats the error in a header, which clients read
            self.send_header("X-Error-Message", payload["error"])
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _record(self) -> tuple[str, dict]:
        url = urlsplit(self.path)
        self.server.state.requests.append(
            {"method": self.command, "path": unquote(url.path), "query": parse_qs(url.query), "authorization": self.headers.get("Authorization")}
        )
        return url.path, parse_qs(url.query)

    # --- endpoints
    def _authorised(self, write: bool = True) -> bool:
        expected, read_only = self.server.valid_token, self.server.read_only_token
        authorization = self.headers.get("Authorization")
        if expected is None or authorization == f"Bearer {expected}":
            return True
        if read_only is not None and authorization == f"Bearer {read_only}":
            if not write:
                return True
            self._reply(403, {"error": "You don't have the rights to write to this repository"})
            return False
        self._reply(401, {"error": "Invalid credentials in Authorization header"})
        return False

    def do_POST(self):  # noqa: N802 (http.server naming)
        path, query = self._record()
        body = self._body()
        state = self.server.state
        if not self._authorised(write=path != "/api/validate-yaml"):  # checking a card's metadata writes nothing
            return None
        if path == "/api/repos/create":
            req = json.loads(body)
            repo_id = f"{req.get('organization') or 'me'}/{req['name']}"
            if repo_id in state.repos:  # the Hub's 409 still carries the url, which create_repo(exist_ok=True) returns
                return self._reply(409, {"error": "You already created this model repo", "url": f"{self.server.endpoint}/{repo_id}"})
            # huggingface_hub 0.x sends "private": bool, 1.x and later "visibility": "private" | "public"
            private = req["visibility"] == "private" if "visibility" in req else req.get("private")
            state.repos[repo_id] = {"private": private, "branches": {"main"}}
            return self._reply(200, {"url": f"{self.server.endpoint}/{repo_id}"})
        if path == "/api/validate-yaml":
            return self._reply(200, {"errors": [], "warnings": []})
        if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/branch/([^/]+)", path):
            repo = state.repos.get(m[1])
            if repo is None:
                return self._reply(404, {"error": "Repository not found"})
            branch = unquote(m[2])
            if branch in repo["branches"]:
                return self._reply(409, {"error": "Branch already exists"})
            repo["branches"].add(branch)
            return self._reply(200, {})
        if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/preupload/([^/]+)", path):
            files = json.loads(body)["files"]
            modes = []
            for f in files:
                sample = base64.b64decode(f["sample"])
                lfs = f["size"] >= LFS_THRESHOLD or b"\x00" in sample
                modes.append({"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False})
            return self._reply(200, {"files": modes})
        if m := re.fullmatch(r"/([^/]+/[^/]+)\.git/info/lfs/objects/batch", path):
            req = json.loads(body)
            objects = [
                {"oid": o["oid"], "size": o["size"], "actions": {"upload": {"href": f"{self.server.endpoint}/lfs-upload/{o['oid']}"}}}
                for o in req["objects"]
            ]
            return self._reply(200, {"transfer": "basic", "objects": objects})
        if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/commit/([^/]+)", path):
            return self._commit(m[1], unquote(m[2]), query, body)
        state.unexpected.append(f"POST {path}")
        return self._reply(404, {"error": f"unexpected POST {path}"})

    def do_PUT(self):  # noqa: N802
        path, _ = self._record()
        body = self._body()
        if m := re.fullmatch(r"/lfs-upload/([0-9a-f]{64})", path):
            if hashlib.sha256(body).hexdigest() != m[1]:
                return self._reply(400, {"error": "sha256 mismatch"})
            self.server.state.lfs_objects[m[1]] = body
            return self._reply(200, {})
        self.server.state.unexpected.append(f"PUT {path}")
        return self._reply(404, {})

    def do_GET(self):  # noqa: N802
        path, _ = self._record()
        if not self._authorised(write=False):
            return None
        if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)", path):  # repo_info: create_repo(exist_ok=True) asks after a 403
            repo = self.server.state.repos.get(m[1])
            if repo is None:
                return self._reply(404, {"error": "Repository not found"})
            return self._reply(200, {"id": m[1], "private": repo["private"], "sha": "0" * 40})
        self.server.state.unexpected.append(f"GET {path}")
        return self._reply(404, {"error": f"unexpected GET {path}"})

    def _commit(self, repo_id: str, revision: str, query: dict, body: bytes):
        state = self.server.state
        repo = state.repos.get(repo_id)
        if repo is None:
            return self._reply(404, {"error": "Repository not found"})
        create_pr = query.get("create_pr") == ["1"]
        if revision not in repo["branches"]:
            return self._reply(404, {"error": f"Invalid rev id: {revision}"})
        commit = {"repo_id": repo_id, "revision": revision, "create_pr": create_pr, "files": {}, "lfs_files": {}}
        for line in body.splitlines():
            item = json.loads(line)
            value = item["value"]
            if item["key"] == "header":
                commit["summary"], commit["description"] = value["summary"], value.get("description", "")
            elif item["key"] == "file":
                commit["files"][value["path"]] = base64.b64decode(value["content"])
            elif item["key"] == "lfsFile":
                if value["oid"] not in state.lfs_objects:
                    return self._reply(400, {"error": f"LFS object {value['oid']} was never uploaded"})
                commit["lfs_files"][value["path"]] = {"oid": value["oid"], "size": value["size"]}
            else:
                state.unexpected.append(f"commit item {item['key']}")
        oid = hashlib.sha1(body).hexdigest()
        commit["oid"] = oid
        state.commits.append(commit)
        reply = {"commitUrl": f"{self.server.endpoint}/{repo_id}/commit/{oid}", "commitOid": oid}
        if create_pr:
            reply["pullRequestUrl"] = f"{self.server.endpoint}/{repo_id}/discussions/{len(state.commits)}"
        return self._reply(200, reply)


class FakeHub(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, valid_token: str | None = None, read_only_token: str | None = None, lifetime_s: float = 120.0):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.valid_token = valid_token  # when set, API calls with another token get 401 as on the Hub
        self.read_only_token = read_only_token  # may read (GET); its writes get 403, as a read token's do on the Hub
        self.state = FakeHubState()
        self.endpoint = f"http://127.0.0.1:{self.server_address[1]}"
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._deadline = threading.Timer(lifetime_s, self.shutdown)
        self._deadline.daemon = True

    def __enter__(self) -> "FakeHub":
        self._thread.start()
        self._deadline.start()
        return self

    def __exit__(self, *exc) -> None:
        self._deadline.cancel()
        self.shutdown()
        self.server_close()
        self._thread.join(timeout=5)
