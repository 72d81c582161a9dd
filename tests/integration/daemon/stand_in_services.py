"""Stand-ins for HDFS's WebHDFS, the Hugging Face Hub and ModelScope, which cannot run here: one small HTTP server
(run as its own process by the tests) that speaks the parts of their documented HTTP APIs the daemon uses.

    python stand_in_services.py ROOT TOKEN      # prints the port it listens on, then serves until killed

Files come from ROOT: ``hdfs/<path>``, ``hf/<models|datasets>/<owner>/<repo>/<revision>/<path>``,
``ms/<models|datasets>/<owner>/<repo>/<revision>/<path>``. Repositories whose name starts with ``private`` and
HDFS paths under ``/secure`` need TOKEN (``Authorization: Bearer``; WebHDFS: ``delegation=``). ``GET /_stats``
answers how many requests served file bytes, by path.

- WebHDFS (Hadoop's WebHDFS REST API): ``/webhdfs/v1/<path>?op=GETFILESTATUS|LISTSTATUS|OPEN``; OPEN takes
  ``offset``/``length`` and answers 307 to a "DataNode" URL that serves exactly those bytes; errors are
  ``{"RemoteException": {...}}`` with 401/403/404.
- Hugging Face: ``/[datasets/]<owner>/<repo>/resolve/<revision>/<path>`` answers 302 to a CDN URL that serves the
  file with ``Range``; ``/api/<models|datasets>/<owner>/<repo>/tree/<revision>[/<path>]?recursive=true`` lists
  ``{"type", "path", "size"}``, two entries per page with ``Link: <...>; rel="next"``.
- ModelScope: ``/api/v1/<models|datasets>/<owner>/<repo>/repo?Revision=&FilePath=`` serves the file with ``Range``;
  ``/api/v1/models/<owner>/<repo>/repo/files?Revision=&Recursive=true&Root=`` lists
  ``{"Code": 200, "Data": {"Files": [{"Path", "Type": "blob"|"tree", "Size"}]}}``.
"""

from __future__ import annotations

import collections
import json
import socket
import sys
from pathlib import Path
from urllib.parse import quote

from aiohttp import web

PAGE = 2


def make_app(root: Path, token: str) -> web.Application:
    served: collections.Counter[str] = collections.Counter()

    def inside(base: Path, relative: str) -> Path | None:
        path = (base / relative).resolve()
        return path if path.is_relative_to(base.resolve()) else None

    def bearer_ok(request: web.Request, repo: str) -> bool:
        return not repo.startswith("private") or request.headers.get("Authorization") == f"Bearer {token}"

    # ---------------------------------------------------------------- WebHDFS

    def remote_exception(status: int, exception: str, message: str) -> web.Response:
        body = {
            "RemoteException": {"exception": exception, "javaClassName": f"java.io.{exception}", "message": message}
        }
        return web.json_response(body, status=status)

    async def webhdfs(request: web.Request) -> web.StreamResponse:
        path = "/" + request.match_info["path"]
        if path.startswith("/secure") and request.query.get("delegation") != token:
            return remote_exception(401, "SecurityException", "Failed to obtain user group information")
        target = inside(root / "hdfs", path.lstrip("/"))
        if target is None or not target.exists():
            return remote_exception(404, "FileNotFoundException", f"File does not exist: {path}")
        op = request.query.get("op", "").upper()
        if op == "GETFILESTATUS":
            kind = "DIRECTORY" if target.is_dir() else "FILE"
            length = 0 if target.is_dir() else target.stat().st_size
            return web.json_response({"FileStatus": {"type": kind, "length": length, "pathSuffix": ""}})
        if op == "LISTSTATUS":
            statuses = [
                {
                    "pathSuffix": child.name,
                    "type": "DIRECTORY" if child.is_dir() else "FILE",
                    "length": 0 if child.is_dir() else child.stat().st_size,
                }
                for child in sorted(target.iterdir())
            ]
            return web.json_response({"FileStatuses": {"FileStatus": statuses}})
        if op == "OPEN":
            query = f"offset={request.query.get('offset', '0')}&length={request.query.get('length', '-1')}"
            raise web.HTTPTemporaryRedirect(f"/datanode{quote(path)}?{query}")
        return remote_exception(400, "IllegalArgumentException", f"Invalid value for webhdfs parameter op: {op}")

    async def datanode(request: web.Request) -> web.Response:
        path = request.match_info["path"]
        target = inside(root / "hdfs", path)
        if target is None or not target.is_file():
            return remote_exception(404, "FileNotFoundException", f"File does not exist: /{path}")
        offset = int(request.query.get("offset", "0"))
        length = int(request.query.get("length", "-1"))
        with target.open("rb") as f:
            f.seek(offset)
            data = f.read() if length < 0 else f.read(length)
        served[f"hdfs:/{path}"] += 1
        return web.Response(body=data, content_type="application/octet-stream")

    # ---------------------------------------------------------------- Hugging Face

    async def hf_resolve(request: web.Request) -> web.StreamResponse:
        kind = request.match_info.get("kind", "models")
        owner, repo = request.match_info["owner"], request.match_info["repo"]
        revision, path = request.match_info["revision"], request.match_info["path"]
        if not bearer_ok(request, repo):
            return web.json_response({"error": "Invalid credentials in Authorization header"}, status=401)
        target = inside(root / "hf" / kind / owner / repo, f"{revision}/{path}")
        if target is None or not target.is_file():
            return web.Response(status=404, headers={"X-Error-Code": "EntryNotFound"}, text="Entry not found")
        # Large files leave the Hub for its CDN.
        raise web.HTTPFound(f"/cdn/hf/{kind}/{owner}/{repo}/{quote(revision)}/{quote(path)}")

    async def cdn(request: web.Request) -> web.StreamResponse:
        relative = request.match_info["path"]
        target = inside(root, relative)
        if target is None or not target.is_file():
            return web.Response(status=404)
        served[relative] += 1
        return web.FileResponse(target)

    async def hf_tree(request: web.Request) -> web.Response:
        kind, owner, repo = request.match_info["kind"], request.match_info["owner"], request.match_info["repo"]
        revision, sub = request.match_info["revision"], request.match_info.get("path", "")
        if not bearer_ok(request, repo):
            return web.json_response({"error": "Invalid credentials in Authorization header"}, status=401)
        base = root / "hf" / kind / owner / repo / revision
        start = inside(base, sub)
        if not base.is_dir() or start is None or not start.exists():
            return web.json_response({"error": f"Revision Not Found for url: {request.url}"}, status=404)
        items = []
        for entry in sorted(start.rglob("*")):
            relative = entry.relative_to(base).as_posix()
            if entry.is_dir():
                items.append({"type": "directory", "oid": "0", "size": 0, "path": relative})
            else:
                items.append({"type": "file", "oid": "0", "size": entry.stat().st_size, "path": relative})
        page = int(request.query.get("page", "0"))
        chunk = items[page * PAGE : (page + 1) * PAGE]
        headers = {}
        if (page + 1) * PAGE < len(items):
            headers["Link"] = f'<{request.url.update_query(page=str(page + 1))}>; rel="next"'
        return web.json_response(chunk, headers=headers)

    # ---------------------------------------------------------------- ModelScope

    async def ms_file(request: web.Request) -> web.StreamResponse:
        kind, owner, repo = request.match_info["kind"], request.match_info["owner"], request.match_info["repo"]
        if not bearer_ok(request, repo):
            return web.json_response({"Code": 401, "Message": "Unauthorized"}, status=401)
        revision = request.query.get("Revision", "master")
        target = inside(root / "ms" / kind / owner / repo, f"{revision}/{request.query.get('FilePath', '')}")
        if target is None or not target.is_file():
            return web.json_response({"Code": 404, "Message": "file not found"}, status=404)
        served[target.relative_to(root).as_posix()] += 1
        return web.FileResponse(target)

    async def ms_files(request: web.Request) -> web.Response:
        owner, repo = request.match_info["owner"], request.match_info["repo"]
        if not bearer_ok(request, repo):
            return web.json_response({"Code": 401, "Message": "Unauthorized"}, status=401)
        base = root / "ms" / "models" / owner / repo / request.query.get("Revision", "master")
        start = inside(base, request.query.get("Root", ""))
        if not base.is_dir() or start is None or not start.exists():
            return web.json_response({"Code": 404, "Message": "revision not found"}, status=404)
        files = [
            {
                "Path": entry.relative_to(base).as_posix(),
                "Name": entry.name,
                "Type": "tree" if entry.is_dir() else "blob",
                "Size": 0 if entry.is_dir() else entry.stat().st_size,
            }
            for entry in sorted(start.rglob("*"))
        ]
        return web.json_response({"Code": 200, "Data": {"Files": files}, "Success": True})

    async def stats(_request: web.Request) -> web.Response:
        return web.json_response(dict(served))

    app = web.Application()
    app.router.add_get("/_stats", stats)
    app.router.add_get("/webhdfs/v1/{path:.*}", webhdfs)
    app.router.add_get("/datanode/{path:.*}", datanode)
    app.router.add_get("/cdn/{path:.*}", cdn)
    app.router.add_get("/api/v1/models/{owner}/{repo}/repo/files", ms_files)
    app.router.add_get("/api/v1/{kind}/{owner}/{repo}/repo", ms_file)
    app.router.add_get("/api/{kind}/{owner}/{repo}/tree/{revision}", hf_tree)
    app.router.add_get("/api/{kind}/{owner}/{repo}/tree/{revision}/{path:.*}", hf_tree)
    app.router.add_get("/{kind:datasets|spaces}/{owner}/{repo}/resolve/{revision}/{path:.*}", hf_resolve)
    app.router.add_get("/{owner}/{repo}/resolve/{revision}/{path:.*}", hf_resolve)
    return app


def main() -> None:
    root, token = Path(sys.argv[1]), sys.argv[2]
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    print(json.dumps({"port": sock.getsockname()[1]}), flush=True)
    web.run_app(make_app(root, token), sock=sock, print=None, handle_signals=True)


if __name__ == "__main__":
    main()
