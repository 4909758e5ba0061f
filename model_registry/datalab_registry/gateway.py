"""The registry gateway: MLflow's UI and API under /services/registry/, behind
the hub's login.

A JupyterHub service (run by the hub in its container). Browsers come with
the hub's OAuth cookie; the MLflow client in notebooks and jobs comes with
`Authorization: Bearer <JupyterHub token>` (MLFLOW_TRACKING_TOKEN). Every
request is matched against MLflow's route table (routes.py; a route it does
not know is refused), the objects it names are looked up, the team rules of
tenancy.py decide, and it is forwarded to the MLflow server, which only the
hub's backend network reaches, with the very query and body that were judged.
Every refusal is logged: who, the request, the route, why.

Files pass through, both ways, a chunk at a time: an upload (a route whose
body is a file's bytes, judged on its path and query alone) streams to MLflow
as it arrives, and a download streams back to the caller, each chunk sent
before the next is read, so the gateway holds a few chunks however large the
file (the hub container's memory is capped). What the gateway reads or
rewrites is bounded: a JSON request body (LARGEST_FIELDS), a search answer it
filters and a page it adds its script to (LARGEST_REWRITTEN).
"""

import asyncio
import contextlib
import json
import logging
import os
from pathlib import Path
import re
from urllib.parse import quote, urlencode

from jupyterhub.services.auth import HubOAuth, HubOAuthCallbackHandler, HubOAuthenticated
import httpx
from tornado import ioloop, iostream, web

from datalab_client import logs
from datalab_hub.config import runtime_settings, service_port
from datalab_hub.identity import HubUsers

from . import routes, tenancy
from .owners import Owners

log = logging.getLogger("datalab.registry")
# Hop-by-hop headers, the caller's credentials, which MLflow never sees, and
# MLflow's workspace selector (one lab, one workspace).
DROPPED_REQUEST_HEADERS = {"host", "cookie", "authorization", "content-length", "connection", "origin", "referer",
                           "accept-encoding", "transfer-encoding", "keep-alive", "upgrade", "x-mlflow-workspace"}
DROPPED_RESPONSE_HEADERS = {"content-length", "transfer-encoding", "connection", "content-encoding", "server",
                            "set-cookie", "keep-alive"}
LARGEST_UPLOAD = 8 << 30  # a file logged to the registry; streamed, never held
LARGEST_FIELDS = 32 << 20  # a JSON request body, which is read whole to be judged
LARGEST_REWRITTEN = 64 << 20  # an answer the gateway filters or adds its script to
UPLOAD_CHUNKS_AHEAD = 4  # chunks received but not yet sent to MLflow, at most
# A body refused on its headers alone is read (and dropped) before the answer goes, up to this size:
# past LARGEST_FIELDS, so that a JSON body refused for its declared size still gets its 413.
DRAINED_BODY = 64 << 20
BODY_METHODS = ("POST", "PUT", "PATCH", "DELETE")
# a transfer may take long; a stalled one (no byte for 15 minutes) does not
TRANSFER_TIMEOUT = httpx.Timeout(900, connect=10)
URL_PATH_SAFE = "/:@!$&'()*+,;=-._~"
API_PATHS = ("api/", "ajax-api/", "graphql", "get-artifact", "model-versions/get-artifact")
# Where MLflow serves artifacts (files users logged): get-artifact, model-versions/get-artifact,
# the artifact proxy (mlflow-artifacts/artifacts/...), logged models' artifact files.
ARTIFACT_PATH = re.compile(r"get-artifact|mlflow-artifacts/artifacts|logged-models/[^/]+/artifacts")
XSRF_SCRIPT_PATH = "_datalab/xsrf.js"


class Upload:
    """A request body on its way to MLflow: the chunks as the caller sends them,
    UPLOAD_CHUNKS_AHEAD at most held (the caller's connection is read no faster
    than MLflow takes them)."""

    END = object()

    def __init__(self):
        self.queue = asyncio.Queue(maxsize=UPLOAD_CHUNKS_AHEAD)

    async def put(self, chunk, sending):
        """Wait for room, unless forwarding has ended (MLflow answered, or failed): then the chunk is dropped."""
        queued = asyncio.ensure_future(self.queue.put(chunk))
        await asyncio.wait([queued, sending], return_when=asyncio.FIRST_COMPLETED)
        queued.cancel()

    async def chunks(self):
        while (chunk := await self.queue.get()) is not self.END:
            yield chunk


REFUSED = object()  # what a judgement returns once the gateway has answered the caller itself


@web.stream_request_body
class RegistryHandler(HubOAuthenticated, web.RequestHandler):
    """A request is judged once its headers are in when it uploads a file (its
    path and query say everything), else once its (bounded) JSON body is."""

    SUPPORTED_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
    judging_headers = False  # prepare() is deciding on the headers alone; the body is still to come
    refusal = None  # the answer to a request refused on its headers, sent once its body is read

    @property
    def hub_auth(self):
        return self.settings["hub_auth"]

    def refuse(self, status, message, who=None, route=None):
        log.warning("refused %s %s /%s%s: %d %s", who or "(not logged in)", self.request.method,
                    self.path_args[0] if self.path_args else "", f" (route {route.path})" if route else "", status,
                    message)
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        # MLflow's own error shape: its UI and client show `message`.
        code = {400: "INVALID_PARAMETER_VALUE", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
                404: "RESOURCE_DOES_NOT_EXIST", 413: "REQUEST_LIMIT_EXCEEDED"}.get(status, "ERROR")
        answer = {"error_code": code, "message": message}
        if self.body_unread():
            # Tornado closes the connection on an answer sent before the body is read, and the caller
            # still sending it (the hub's proxy) gets a reset: the proxy then shows its own 503 page, not
            # this answer. So a refused body is read first (and dropped): data_received or the handler answers.
            self.refusal = answer
            return None
        self.finish(answer)
        return None

    def body_unread(self):
        """Whether the request's body, DRAINED_BODY bytes at most, is still to come: the headers are being judged."""
        if not self.judging_headers:
            return False
        declared = self.request.headers.get("Content-Length", "")
        if declared.isdigit():
            return 0 < int(declared) <= DRAINED_BODY
        return "chunked" in self.request.headers.get("Transfer-Encoding", "").lower()

    def identity(self):
        model = self.current_user
        if model.get("kind") == "service":
            return None
        found = self.settings["users"].info(model["name"]) or {"groups": [], "admin": False}
        return tenancy.Identity(model["name"], frozenset(found["groups"]), bool(found["admin"]))

    async def prepare(self):
        self.fields, self.received, self.upload, self.sending = [], 0, None, None
        self.judging_headers = True
        try:
            await self.judge_headers()
        finally:
            self.judging_headers = False

    async def judge_headers(self):
        self.caller = await self.check_caller(self.path_args[0])
        if self.caller is None:
            return
        who, route, args, params = self.caller
        streams = route.rule.raw_body and self.request.method in BODY_METHODS
        limit = LARGEST_UPLOAD if streams else LARGEST_FIELDS
        declared = self.request.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > limit:  # refused before a byte of it is read
            return self.refuse(413, f"the request body is {declared} bytes; the registry gateway takes at most "
                                    f"{limit} bytes {'in a file' if streams else 'of JSON'}", who.name, route)
        # a chunked body past the limit: data_received answers 413; tornado's own check (a bare 400) is the backstop
        self.request.connection.set_max_body_size(limit + (1 << 20))
        if streams:
            req = tenancy.Request(self.request.method, self.path_args[0], args, None, params)
            if await self.judge(who, route, req) is REFUSED:
                return
            self.upload = Upload()
            self.sending = asyncio.ensure_future(self.forward(self.path_args[0], route, args, self.upload.chunks(),
                                                              who))

    async def data_received(self, chunk):
        if self._finished:  # answered already: the rest of the body is not wanted
            return
        if self.refusal is not None:  # refused on its headers: read and dropped, up to DRAINED_BODY
            self.received += len(chunk)
            if self.received > DRAINED_BODY:
                self.finish(self.refusal)
            return
        if self.upload is not None:
            return await self.upload.put(chunk, self.sending)
        self.fields.append(chunk)
        self.received += len(chunk)
        if self.received > LARGEST_FIELDS:
            self.fields = []
            who, route, _, _ = self.caller
            self.refuse(413, f"the request body is over {LARGEST_FIELDS} bytes, the most the registry gateway "
                             "takes of JSON", who.name, route)

    def on_connection_close(self):
        if self.sending is not None and not self.sending.done():
            self.sending.cancel()  # the caller went away mid-upload: MLflow gets no whole file

    async def check_caller(self, path):
        """(who, route, query, path parameters) of a request the gateway judges; None once it has answered."""
        if self.current_user is None:
            if self.request.method == "GET" and not path.startswith(API_PATHS):  # a page: log in first
                return self.redirect(self.get_login_url())
            return self.refuse(401, "log in to the hub, or send Authorization: Bearer <JupyterHub token> "
                                    "(MLFLOW_TRACKING_TOKEN) with access to the registry")
        who = await asyncio.to_thread(self.identity)
        if who is None:
            return self.refuse(403, "services do not use the registry gateway", "a service")
        if any(c in path for c in "?#") or any(ord(c) < 32 for c in path):
            # a %3F or %23 would move part of the path into MLflow's query string
            return self.refuse(400, "the path may not contain '?', '#' or control characters", who.name)
        route, params = routes.match(self.request.method, "/" + path)
        if route is None:
            return self.refuse(403, f"{self.request.method} /{path} is no route of MLflow's that the registry "
                                    "gateway knows (unclassified routes are refused)", who.name)
        try:
            args = {k: [v.decode() for v in vs] for k, vs in self.request.query_arguments.items()}
        except UnicodeDecodeError:
            return self.refuse(400, "the query is not UTF-8", who.name, route)
        return who, route, args, params

    async def get(self, path):
        if self._finished:
            return
        if self.refusal is not None:  # refused on its headers; its body is read now
            return self.finish(self.refusal)
        if self.sending is not None:  # an upload: its last chunk is in
            await self.upload.put(Upload.END, self.sending)
            with contextlib.suppress(asyncio.CancelledError):  # cancelled: the caller went away
                await self.sending
            return
        who, route, args, params = self.caller
        raw = b"".join(self.fields)
        body = None
        if raw and not route.rule.raw_body and route.rule.cls not in (routes.OPEN, routes.PLATFORM, routes.REFUSED):
            # MLflow parses the body as JSON whatever its Content-Type says
            try:
                body = json.loads(raw)
            except ValueError:
                return self.refuse(400, "the request body is not JSON", who.name, route)
            if not isinstance(body, dict):
                return self.refuse(400, "the request body must be a JSON object", who.name, route)
        forwarded = await self.judge(who, route, tenancy.Request(self.request.method, path, args, body, params))
        if forwarded is not REFUSED:
            await self.forward(path, route, args, raw if forwarded is None else json.dumps(forwarded).encode(), who)

    post = put = patch = delete = head = options = get

    async def judge(self, who, route, req):
        """The body to forward (None: as received), or REFUSED once the caller has been answered."""
        policy = self.settings["policy"]
        try:
            facts = await self.facts(who, route, req, policy)
            forwarded = tenancy.authorize(who, route, req, facts, policy)
        except LookupError as e:  # fail closed: an unknown owner is not "shared"
            self.refuse(503, str(e), who.name, route)
            return REFUSED
        except tenancy.Refused as e:
            self.refuse(e.status, e.message, who.name, route)
            return REFUSED
        if route.rule.promotes and self.request.method == "POST" \
                and (req.value("alias") or "").lower() == policy.production_alias.lower():
            # Who asked for the promotion: the controller reads it for its audit.
            await self.settings["owners"].tag_version(req.value("name"), req.value("version"),
                                                      tenancy.REQUESTED_BY_TAG, who.name)
            log.info("%s sets %s on %s v%s", who.name, req.value("alias"), req.value("name"), req.value("version"))
        return forwarded

    async def facts(self, who, route, req, policy):
        """What the decision needs to know about the objects the request names."""
        rule, owners, facts = route.rule, self.settings["owners"], tenancy.Facts()
        if rule.cls not in (routes.READ, routes.WRITE) or (rule.cls == routes.READ and not policy.judges_reads(who)):
            return facts
        refs = tenancy.references(route, req)
        facts.owners = {ref: await owners.team(ref) for ref in refs}
        if rule.seals:
            facts.sealed = {ref: found for ref in refs if (found := await owners.sealed(ref))}
        if rule.seals == "tags":
            facts.run_tags = {ref[1]: await owners.run_tags(ref[1]) for ref in facts.sealed if ref[0] == "run"}
        if rule.guard:
            facts.production = await owners.production(policy.production_alias)
        return facts

    async def forward(self, path, route, args, body, who):
        """Send the request as judged (body: bytes, or an upload's chunks) and relay MLflow's answer."""
        # the path and query as judged, encoded again (artifact names may hold spaces or '%')
        url = f"{self.settings['mlflow_url']}/{quote(path, safe=URL_PATH_SAFE)}"
        if args:
            url += "?" + urlencode([(k, v) for k, vs in args.items() for v in vs])
        headers = {k: v for k, v in self.request.headers.get_all() if k.lower() not in DROPPED_REQUEST_HEADERS}
        headers["X-Forwarded-User"] = who.name
        sends_body = self.request.method in BODY_METHODS
        if sends_body and not isinstance(body, bytes) and self.request.headers.get("Content-Length"):
            headers["Content-Length"] = self.request.headers["Content-Length"]  # else it goes chunked
        if sends_body and body and not any(k.lower() == "content-type" for k in headers):
            headers["Content-Type"] = "application/octet-stream"  # a body of no stated type is bytes, not a form
        client = self.settings["owners"].client
        request = client.build_request(self.request.method, url, headers=headers,
                                       content=body if sends_body else None, timeout=TRANSFER_TIMEOUT)
        try:
            response = await client.send(request, stream=True)
        except httpx.HTTPError as e:
            return self.refuse(502, f"the MLflow server did not answer: {e!r}", who.name, route)
        try:
            await self.relay(path, route, response, who)
        finally:
            await response.aclose()

    async def relay(self, path, route, response, who):
        """MLflow's answer: streamed as it comes, or read whole (bounded) where the gateway rewrites it."""
        is_artifact = ARTIFACT_PATH.search(path)
        is_page = not is_artifact and response.status_code == 200 \
            and response.headers.get("Content-Type", "").startswith("text/html")
        rewritten = None
        if route.rule.listing or is_page:
            try:
                rewritten = await read_bounded(response, LARGEST_REWRITTEN)
                rewritten = await self.filter_listing(route, response.status_code, rewritten, who)
            except ValueError as e:
                return self.refuse(502, str(e), who.name, route)
            except LookupError as e:  # fail closed
                return self.refuse(503, str(e), who.name, route)
            except httpx.HTTPError as e:
                return self.refuse(502, f"the MLflow server broke off its answer: {e!r}", who.name, route)
        self.set_status(response.status_code, response.reason_phrase)
        copied = set()
        for key, value in response.headers.multi_items():
            if key.lower() not in DROPPED_RESPONSE_HEADERS:
                # set first (replacing tornado's default Content-Type), add repeats
                (self.add_header if key.lower() in copied else self.set_header)(key, value)
                copied.add(key.lower())
        if is_artifact:
            # a user's file, whatever its type: opened directly, it renders in an origin of
            # its own (no registry cookies, no API calls as the viewer) and is never sniffed
            self.set_header("Content-Security-Policy", "sandbox")
            self.set_header("X-Content-Type-Options", "nosniff")
        if rewritten is not None:
            return self.finish(self.with_xsrf_script(rewritten) if is_page else rewritten)
        length = response.headers.get("Content-Length")
        if length and "Content-Encoding" not in response.headers and self.request.method != "HEAD" \
                and response.status_code >= 200 and response.status_code not in (204, 304):
            self.set_header("Content-Length", length)  # a download's progress and end are known to the caller
        try:
            async for chunk in response.aiter_bytes():
                self.write(chunk)
                await self.flush()  # sent before the next chunk is read
        except iostream.StreamClosedError:
            return  # the caller went away
        except httpx.HTTPError as e:
            # the status line is out: cut the connection, so the caller sees a broken answer, not a short one
            log.warning("MLflow broke off its answer to %s %s /%s: %r", who.name, self.request.method, path, e)
            self.request.connection.close()
            return
        self.finish()

    def with_xsrf_script(self, page):
        """MLflow's page, loading xsrf.js first; the _xsrf cookie it reads is set now."""
        self.xsrf_token  # noqa: B018 (sets the _xsrf cookie, bound to this login, on a page view)
        script = f'<script src="{self.settings["prefix"]}{XSRF_SCRIPT_PATH}"></script>'.encode()
        head = re.search(rb"<head[^>]*>", page, re.I)
        return page[:head.end()] + script + page[head.end():] if head else script + page

    async def filter_listing(self, route, status, body, who):
        """With registry.others = "none", searches list only the caller's teams' (and shared) things."""
        policy = self.settings["policy"]
        key = route.rule.listing
        if not key or not policy.judges_reads(who) or status != 200:
            return body
        data = json.loads(body)
        if key == "model_versions":  # a version is its model's: look the models up
            mine = policy.teams_of(who)
            teams = {name: await self.settings["owners"].team(("model", name))
                     for name in {v.get("name") for v in data.get(key, [])}}
            data[key] = [v for v in data.get(key, []) if teams[v.get("name")] in (None, tenancy.MISSING)
                         or teams[v.get("name")] in mine]
        elif key in data:
            data[key] = [x for x in data[key] if tenancy.visible(who, x.get("tags", []), policy)]
        return json.dumps(data).encode()



async def read_bounded(response, limit):
    """The whole answer; ValueError past limit bytes."""
    if int(response.headers.get("Content-Length") or 0) > limit:
        raise ValueError(f"the MLflow answer is over {limit} bytes, the most the registry gateway rewrites")
    chunks, size = [], 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > limit:
            raise ValueError(f"the MLflow answer is over {limit} bytes, the most the registry gateway rewrites")
        chunks.append(chunk)
    return b"".join(chunks)


def main():
    logs.configure()
    settings = runtime_settings()
    registry = settings["registry"]
    hub_auth = HubOAuth(api_token=os.environ["JUPYTERHUB_API_TOKEN"], cache_max_age=60)
    prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/services/registry/")
    app = web.Application([
        (rf"{prefix}oauth_callback", HubOAuthCallbackHandler),
        (rf"{prefix}_datalab/(xsrf\.js)", web.StaticFileHandler, {"path": str(Path(__file__).parent)}),
        (rf"{prefix}(.*)", RegistryHandler),
    ], hub_auth=hub_auth, cookie_secret=os.urandom(32), prefix=prefix,
        # the hub's OAuth cookie is Secure behind an HTTPS proxy by JupyterHub's own reading of it
        xsrf_cookie_kwargs={"secure": True} if settings["hub"]["public_url"].startswith("https:") else {},
        users=HubUsers(hub_auth.api_url, hub_auth.api_token),
        owners=Owners(registry["mlflow_url"]), mlflow_url=registry["mlflow_url"],
        policy=tenancy.Policy.from_settings(registry, registry["teams"]))
    app.listen(service_port(), "0.0.0.0", max_body_size=LARGEST_UPLOAD + (1 << 20))
    log.info("registry gateway on %s -> %s", prefix, registry["mlflow_url"])
    ioloop.IOLoop.current().start()


if __name__ == "__main__":
    main()
