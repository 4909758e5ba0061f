"""Every route of MLflow's server, classified: what the registry gateway lets
through, and where the request names the object it acts on.

The gateway decides from this table and nothing else: a route that is not
here is refused with a 403 naming it, so a route that a new MLflow adds stays
closed until someone classifies it. tests/integration/test_registry_route_coverage.py
compares the table with the route table of the MLflow image the lab runs,
both ways (an unclassified route, or a classified one MLflow no longer has,
fails it).

Paths are written as MLflow's Flask app registers them (`<name>` is one path
segment, `<path:name>` the rest of the path); its FastAPI routes (`{name}`,
`{name:path}`) are written the same way.

Classes:
  OPEN      MLflow's page and its files, health, version: anyone logged in.
  READ      changes nothing. With registry.others = "none", what it names must
            be the caller's team's or shared.
  WRITE     changes what a team owns: everything it names must be the caller's
            team's or shared (hub admins: any team's).
  CREATE    makes an experiment or a registered model: it gets a team.
  PLATFORM  the platform's own (webhooks, workspaces, the AI gateway's secrets
            and endpoints): the controller does these against MLflow directly,
            nobody does them through the gateway.
  REFUSED   what DataLab does not offer (GenAI traces, evaluation datasets and
            scorers, server-side jobs, the assistant, MCP servers, URLs straight
            into the artifact store): nobody.
"""

import re
from dataclasses import dataclass

OPEN, READ, WRITE, CREATE, PLATFORM, REFUSED = "open", "read", "write", "create", "platform", "refused"


@dataclass(frozen=True)
class Ref:
    """An object a request names: its kind, and the request fields that carry its
    id (path parameters, query arguments, JSON body fields, as MLflow spells them;
    twins like run_id/run_uuid together). The gateway reads every place MLflow
    may read them from, and refuses a request whose places disagree."""

    kind: str  # experiment | experiment_name | run | model | logged_model | artifact | source
    keys: tuple
    required: bool = True
    many: bool = False  # a list (searches, bulk reads); else exactly one value
    deep: bool = False  # also inside the body's nested objects and lists


@dataclass(frozen=True)
class Rule:
    cls: str
    refs: tuple = ()
    raw_body: bool = False  # the body is a file's bytes: MLflow reads no field from it
    listing: str = ""  # the answer's list of team-owned things, filtered with others = "none"
    guard: str = ""  # "object" | "version": deleting or renaming what serves production needs an approver
    seals: str = ""  # "artifacts": a registered version's are sealed; "tags": its run's datalab.* are write-once
    reserved_tags: bool = False  # datalab.* tags here are the platform's
    user: str = ""  # "create" | "set-tag" | "delete-tag" | "batch": mlflow.user is the caller
    promotes: bool = False  # the production alias: approvers only
    graphql: bool = False  # ids in GraphQL variables; literal arguments refused with others = "none"


EXPERIMENT = Ref("experiment", ("experiment_id",))
EXPERIMENTS = Ref("experiment", ("experiment_ids",), required=False, many=True)
EXPERIMENT_NAME = Ref("experiment_name", ("experiment_name",))
RUN = Ref("run", ("run_id", "run_uuid"))
UPLOAD_RUN = Ref("run", ("run_uuid",))  # MLflow's upload handler reads run_uuid alone
BULK_RUNS = Ref("run", ("run_id",), many=True)
INTERVAL_RUNS = Ref("run", ("run_ids",), many=True)
SOURCE_RUN = Ref("run", ("source_run_id",), required=False)
OPTIONAL_RUN = Ref("run", ("run_id",), required=False)
MODEL = Ref("model", ("name",))
LOGGED_MODEL = Ref("logged_model", ("model_id",))
OPTIONAL_LOGGED_MODEL = Ref("logged_model", ("model_id",), required=False)
LINKED_MODELS = Ref("logged_model", ("model_id",), required=False, many=True, deep=True)
ARTIFACT = Ref("artifact", ("artifact_path",))
LISTED_ARTIFACTS = Ref("artifact", ("path",))
SOURCE = Ref("source", ("source",))
GRAPHQL_IDS = (Ref("experiment", ("experiment_id", "experiment_ids"), required=False, many=True, deep=True),
               Ref("run", ("run_id", "run_uuid", "run_ids"), required=False, many=True, deep=True))

V2 = ("/api/2.0/mlflow/", "/ajax-api/2.0/mlflow/")
V3 = ("/api/3.0/mlflow/", "/ajax-api/3.0/mlflow/")
AJAX2 = ("/ajax-api/2.0/mlflow/",)
AJAX3 = ("/ajax-api/3.0/mlflow/",)
STORE = ("/api/2.0/mlflow-artifacts/", "/ajax-api/2.0/mlflow-artifacts/")


def _at(prefixes, *names):
    return [prefix + name for name in names for prefix in prefixes]


def _routes(methods, paths, rule):
    return [(method, path, rule) for method in methods.split() for path in paths]


_OPEN, _PLATFORM, _REFUSED = Rule(OPEN), Rule(PLATFORM), Rule(REFUSED)

TABLE = [
    # MLflow's page and its files
    *_routes("GET", ["/", "/static-files/<path:path>", "/build/<path:filename>", "/health", "/version"], _OPEN),
    *_routes("GET", _at(V3, "server-info"), _OPEN),

    # experiments
    *_routes("GET", _at(V2, "experiments/get"), Rule(READ, (EXPERIMENT,))),
    *_routes("GET", _at(V2, "experiments/get-by-name"), Rule(READ, (EXPERIMENT_NAME,))),
    *_routes("GET POST", _at(V2, "experiments/search"), Rule(READ, listing="experiments")),
    *_routes("POST", _at(AJAX2, "experiments/search-datasets")
             # (MLflow also registers these two, its REST prefix without the slash)
             + ["/api/2.0mlflow/experiments/search-datasets", "/ajax-api/2.0mlflow/experiments/search-datasets"],
             Rule(READ, (EXPERIMENTS,))),
    *_routes("POST", _at(V2, "experiments/create"), Rule(CREATE, reserved_tags=True)),
    *_routes("POST", _at(V2, "experiments/delete"), Rule(WRITE, (EXPERIMENT,), guard="object")),
    *_routes("POST", _at(V2, "experiments/restore", "experiments/update"), Rule(WRITE, (EXPERIMENT,))),
    *_routes("POST", _at(V2, "experiments/set-experiment-tag", "experiments/delete-experiment-tag"),
             Rule(WRITE, (EXPERIMENT,), reserved_tags=True)),

    # runs, their metrics, parameters, tags, inputs and outputs
    *_routes("GET", _at(V2, "runs/get", "metrics/get-history", "artifacts/list"), Rule(READ, (RUN,))),
    *_routes("GET", _at(AJAX2, "metrics/get-history-bulk"), Rule(READ, (BULK_RUNS,))),
    *_routes("GET", _at(V2, "metrics/get-history-bulk-interval"), Rule(READ, (INTERVAL_RUNS,))),
    *_routes("POST", _at(V2, "runs/search"), Rule(READ, (EXPERIMENTS,))),
    *_routes("POST", _at(V2, "runs/create"), Rule(WRITE, (EXPERIMENT,), user="create")),
    *_routes("POST", _at(V2, "runs/delete"), Rule(WRITE, (RUN,), guard="object")),
    *_routes("POST", _at(V2, "runs/update", "runs/restore", "runs/log-metric", "runs/log-parameter", "runs/log-model"),
             Rule(WRITE, (RUN,))),
    *_routes("POST", _at(V2, "runs/set-tag"), Rule(WRITE, (RUN,), user="set-tag", seals="tags")),
    *_routes("POST", _at(V2, "runs/delete-tag"), Rule(WRITE, (RUN,), user="delete-tag", seals="tags")),
    *_routes("POST", _at(V2, "runs/log-batch"), Rule(WRITE, (RUN,), user="batch", seals="tags")),
    *_routes("POST", _at(V2, "runs/log-inputs", "runs/outputs"), Rule(WRITE, (RUN, LINKED_MODELS))),

    # artifacts: by run, and in the artifact store by path
    *_routes("GET", ["/get-artifact"], Rule(READ, (RUN,))),
    *_routes("POST", _at(AJAX2, "upload-artifact"), Rule(WRITE, (UPLOAD_RUN,), raw_body=True, seals="artifacts")),
    *_routes("GET", _at(STORE, "artifacts/<path:artifact_path>"), Rule(READ, (ARTIFACT,))),
    *_routes("GET", _at(STORE, "artifacts"), Rule(READ, (LISTED_ARTIFACTS,))),
    *_routes("PUT DELETE", _at(STORE, "artifacts/<path:artifact_path>"),
             Rule(WRITE, (ARTIFACT,), raw_body=True, seals="artifacts")),
    *_routes("POST", _at(STORE, "mpu/create/<path:artifact_path>", "mpu/complete/<path:artifact_path>",
                         "mpu/abort/<path:artifact_path>"), Rule(WRITE, (ARTIFACT,), seals="artifacts")),

    # logged models (MLflow 3's models, which versions are registered from)
    *_routes("POST", _at(V2, "logged-models"), Rule(WRITE, (EXPERIMENT, SOURCE_RUN))),
    *_routes("POST", _at(V2, "logged-models/search"), Rule(READ, (EXPERIMENTS,))),
    *_routes("GET", _at(V2, "logged-models/<model_id>", "logged-models/<model_id>/artifacts/directories")
             + _at(AJAX2, "logged-models/<model_id>/artifacts/files"), Rule(READ, (LOGGED_MODEL,))),
    *_routes("DELETE", _at(V2, "logged-models/<model_id>"), Rule(WRITE, (LOGGED_MODEL,), guard="object")),
    *_routes("PATCH", _at(V2, "logged-models/<model_id>", "logged-models/<model_id>/tags"),
             Rule(WRITE, (LOGGED_MODEL,))),
    *_routes("POST", _at(V2, "logged-models/<model_id>/params"), Rule(WRITE, (LOGGED_MODEL,))),
    *_routes("DELETE", _at(V2, "logged-models/<model_id>/tags/<tag_key>"), Rule(WRITE, (LOGGED_MODEL,))),

    # registered models and their versions
    *_routes("GET", _at(V2, "registered-models/get", "registered-models/alias", "model-versions/get",
                        "model-versions/get-download-uri") + ["/model-versions/get-artifact"],
             Rule(READ, (MODEL,))),
    *_routes("GET POST", _at(V2, "registered-models/get-latest-versions"), Rule(READ, (MODEL,))),
    *_routes("GET", _at(V2, "registered-models/search"), Rule(READ, listing="registered_models")),
    *_routes("GET", _at(V2, "model-versions/search"), Rule(READ, listing="model_versions")),
    *_routes("POST", _at(V2, "registered-models/create"), Rule(CREATE, reserved_tags=True)),
    *_routes("POST", _at(V2, "registered-models/rename"), Rule(WRITE, (MODEL,), guard="object")),
    *_routes("DELETE", _at(V2, "registered-models/delete"), Rule(WRITE, (MODEL,), guard="object")),
    *_routes("PATCH", _at(V2, "registered-models/update", "model-versions/update"), Rule(WRITE, (MODEL,))),
    *_routes("POST", _at(V2, "model-versions/transition-stage"), Rule(WRITE, (MODEL,))),
    *_routes("POST", _at(V2, "registered-models/set-tag", "model-versions/set-tag"),
             Rule(WRITE, (MODEL,), reserved_tags=True)),
    *_routes("DELETE", _at(V2, "registered-models/delete-tag", "model-versions/delete-tag"),
             Rule(WRITE, (MODEL,), reserved_tags=True)),
    *_routes("POST", _at(V2, "model-versions/create"),
             Rule(WRITE, (MODEL, SOURCE, OPTIONAL_RUN, OPTIONAL_LOGGED_MODEL), reserved_tags=True)),
    *_routes("DELETE", _at(V2, "model-versions/delete"), Rule(WRITE, (MODEL,), guard="version")),
    *_routes("POST DELETE", _at(V2, "registered-models/alias"), Rule(WRITE, (MODEL,), promotes=True)),

    # GraphQL: reads only (MLflow's "mutations" are searches)
    *_routes("GET POST", ["/graphql"], Rule(READ, GRAPHQL_IDS, graphql=True)),

    # the platform's
    *_routes("GET POST", _at(V2, "webhooks"), _PLATFORM),
    *_routes("GET PATCH DELETE", _at(V2, "webhooks/<webhook_id>"), _PLATFORM),
    *_routes("POST", _at(V2, "webhooks/<webhook_id>/test"), _PLATFORM),
    *_routes("GET POST", _at(V3, "workspaces"), _PLATFORM),
    *_routes("GET PATCH DELETE", _at(V3, "workspaces/<workspace_name>"), _PLATFORM),
    *_routes("POST", _at(V3, "gateway/secrets/create", "gateway/secrets/update", "gateway/endpoints/create",
                         "gateway/endpoints/update", "gateway/endpoints/set-tag", "gateway/endpoints/models/attach",
                         "gateway/endpoints/models/detach", "gateway/endpoints/bindings/create",
                         "gateway/model-definitions/create", "gateway/model-definitions/update",
                         "gateway/budgets/create", "gateway/budgets/update", "gateway/guardrails/create",
                         "gateway/guardrails/add-to-endpoint"), _PLATFORM),
    *_routes("GET", _at(V3, "gateway/secrets/get", "gateway/secrets/list", "gateway/endpoints/get",
                        "gateway/endpoints/list", "gateway/endpoints/bindings/list", "gateway/model-definitions/get",
                        "gateway/model-definitions/list", "gateway/budgets/get", "gateway/budgets/list",
                        "gateway/budgets/windows", "gateway/guardrails/get", "gateway/guardrails/list",
                        "gateway/guardrails/list-for-endpoint")
             + _at(AJAX3, "gateway/supported-providers", "gateway/supported-models", "gateway/provider-config",
                   "gateway/secrets/config"), _PLATFORM),
    *_routes("DELETE", _at(V3, "gateway/secrets/delete", "gateway/endpoints/delete", "gateway/endpoints/delete-tag",
                           "gateway/endpoints/bindings/delete", "gateway/model-definitions/delete",
                           "gateway/budgets/delete", "gateway/guardrails/delete",
                           "gateway/guardrails/remove-from-endpoint"), _PLATFORM),
    *_routes("PATCH", _at(V3, "gateway/guardrails/update-config"), _PLATFORM),

    # not offered: GenAI traces and their assessments
    *_routes("GET", _at(V2, "traces", "traces/<request_id>/info", "unified-traces", "get-online-trace-details")
             + _at(V3, "traces/<trace_id>", "traces/get", "traces/batchGet")
             + _at(AJAX2, "get-trace-artifact") + _at(AJAX3, "get-trace-artifact"), _REFUSED),
    *_routes("POST", _at(V2, "traces", "traces/link-to-run", "traces/link-prompts", "traces/delete-traces")
             + _at(V3, "traces", "traces/search", "traces/batchGetInfos", "traces/delete-traces",
                   "traces/calculate-filter-correlation", "traces/metrics", "traces/<trace_id>/assessments")
             + ["/v1/traces"], _REFUSED),
    *_routes("PATCH", _at(V2, "traces/<request_id>", "traces/<request_id>/tags")
             + _at(V3, "traces/<trace_id>/tags", "traces/<trace_id>/assessments/<assessment_id>"), _REFUSED),
    *_routes("DELETE", _at(V2, "traces/<request_id>/tags")
             + _at(V3, "traces/<trace_id>/tags", "traces/<trace_id>/assessments/<assessment_id>"), _REFUSED),
    *_routes("GET", _at(V3, "traces/<trace_id>/assessments/<assessment_id>"), _REFUSED),
    # not offered: evaluation datasets, scorers, issues, labels, review queues, prompt optimisation
    *_routes("POST", _at(V3, "datasets/create", "datasets/<dataset_id>/records",
                         "datasets/<dataset_id>/add-experiments", "datasets/<dataset_id>/remove-experiments",
                         "scorers/register", "issues", "issues/search",
                         "label-schemas/create", "review-queues/create", "review-queues/get-or-create-user",
                         "review-queues/update", "review-queues/delete", "review-queues/items/add",
                         "review-queues/items/remove", "review-queues/items/set-status", "prompt-optimization/jobs",
                         "prompt-optimization/jobs/search", "prompt-optimization/jobs/<job_id>/cancel")
             + _at(AJAX3, "scorer/invoke", "issues/invoke", "genai/evaluate/invoke"), _REFUSED),
    *_routes("GET", _at(V3, "datasets/<dataset_id>", "datasets/<dataset_id>/records",
                        "datasets/<dataset_id>/experiment-ids", "scorers/list", "scorers/versions", "scorers/get",
                        "scorers/online-configs", "issues/<issue_id>", "label-schemas/get", "label-schemas/get-by-name",
                        "label-schemas/list", "review-queues/get", "review-queues/get-by-name", "review-queues/list",
                        "review-queues/items/list", "prompt-optimization/jobs/<job_id>",
                        "prompt-optimization/jobs/search"), _REFUSED),
    *_routes("GET POST", _at(V3, "datasets/search"), _REFUSED),
    *_routes("DELETE", _at(V3, "datasets/<dataset_id>", "datasets/<dataset_id>/tags/<key>",
                           "datasets/<dataset_id>/records", "scorers/delete", "label-schemas/delete",
                           "prompt-optimization/jobs/<job_id>"), _REFUSED),
    *_routes("PATCH", _at(V3, "datasets/<dataset_id>/tags", "issues/<issue_id>", "label-schemas/update"), _REFUSED),
    *_routes("PUT", _at(V3, "scorers/online-config"), _REFUSED),
    *_routes("POST", _at(AJAX2, "runs/create-promptlab-run"), _REFUSED),
    # not offered: the AI gateway's traffic, server-side jobs, demo data, the UI's telemetry
    *_routes("GET POST", _at(AJAX2, "gateway-proxy"), _REFUSED),
    *_routes("POST", ["/gateway/<endpoint_name>/mlflow/invocations", "/gateway/mlflow/v1/chat/completions",
                      "/gateway/openai/v1/chat/completions", "/gateway/openai/v1/embeddings",
                      "/gateway/openai/v1/responses", "/gateway/openai/v1/responses/compact",
                      "/gateway/anthropic/v1/messages", "/gateway/typesafe/v1/systemone",
                      "/gateway/gemini/v1beta/models/<endpoint_name>:generateContent",
                      "/gateway/gemini/v1beta/models/<endpoint_name>:streamGenerateContent",
                      "/gateway/proxy/<endpoint_name>/<path:path>"], _REFUSED),
    *_routes("GET", ["/gateway/mlflow/v1/models"], _REFUSED),
    *_routes("POST", ["/ajax-api/3.0/jobs/", "/ajax-api/3.0/jobs/search"] + _at(AJAX3, "demo/generate", "demo/delete"),
             _REFUSED),
    *_routes("GET", ["/ajax-api/3.0/jobs/<job_id>"] + _at(AJAX3, "jobs/<job_id>"), _REFUSED),
    *_routes("PATCH", ["/ajax-api/3.0/jobs/cancel/<job_id>"] + _at(AJAX3, "jobs/cancel/<job_id>"), _REFUSED),
    *_routes("GET POST", _at(AJAX3, "ui-telemetry"), _REFUSED),
    # not offered: the assistant (it runs commands on the MLflow server) and MCP servers
    *_routes("GET", _at(AJAX3, "assistant/sessions/<session_id>/stream", "assistant/providers",
                        "assistant/providers/<provider>/health", "assistant/providers/<provider>/models",
                        "assistant/config"), _REFUSED),
    *_routes("POST", _at(AJAX3, "assistant/message", "assistant/sessions/<session_id>/permission",
                         "assistant/sessions/<session_id>/tool-result", "assistant/skills/install"), _REFUSED),
    *_routes("PATCH", _at(AJAX3, "assistant/sessions/<session_id>"), _REFUSED),
    *_routes("PUT", _at(AJAX3, "assistant/config"), _REFUSED),
    *_routes("GET POST", _at(V3, "mcp-servers", "mcp-servers/<path:name>/versions",
                             "mcp-servers/<path:name>/endpoints"), _REFUSED),
    *_routes("GET", _at(V3, "mcp-servers/endpoints", "mcp-servers/<path:name>/aliases/<path:alias>"), _REFUSED),
    *_routes("GET PATCH DELETE", _at(V3, "mcp-servers/<path:name>", "mcp-servers/<path:name>/versions/<path:version>",
                                     "mcp-servers/<path:name>/endpoints/<endpoint_id>"), _REFUSED),
    *_routes("POST", _at(V3, "mcp-servers/<path:name>/tags", "mcp-servers/<path:name>/aliases",
                         "mcp-servers/<path:name>/versions/<path:version>/tags"), _REFUSED),
    *_routes("DELETE", _at(V3, "mcp-servers/<path:name>/tags/<path:key>",
                           "mcp-servers/<path:name>/aliases/<path:alias>",
                           "mcp-servers/<path:name>/versions/<path:version>/tags/<path:key>"), _REFUSED),
    # not offered: URLs straight into the artifact store (they would bypass the gateway)
    *_routes("POST", _at(V2, "artifacts/presigned-upload-url", "artifacts/presigned-download-url"), _REFUSED),
    *_routes("GET", _at(STORE, "presigned/<path:artifact_path>"), _REFUSED),
]

_PARAM = re.compile(r"<(?:(path):)?(\w+)>")


@dataclass(frozen=True)
class Route:
    method: str
    path: str  # MLflow's rule
    rule: Rule

    @property
    def label(self):
        return f"{self.method} {self.path}"


def _compile(path):
    pattern, at = "", 0
    for found in _PARAM.finditer(path):
        pattern += re.escape(path[at:found.start()])
        pattern += f"(?P<{found.group(2)}>{'.+' if found.group(1) else '[^/]+'})"
        at = found.end()
    return re.compile(pattern + re.escape(path[at:]))


def _precedence(path):
    # Werkzeug's order, where two rules match: per segment, literal text before a
    # parameter, a parameter before the rest of the path (<path:...>), and a rule
    # that goes on after a segment before one that ends there.
    return tuple(2 if "<path:" in s else 1 if "<" in s else 0 for s in path.split("/")) + (3,)


def _index(table):
    routes = {}
    for method, path, rule in table:
        if (method, path) in routes:
            raise ValueError(f"{method} {path} is classified twice")
        routes[method, path] = Route(method, path, rule)
    return routes


ROUTES = _index(TABLE)
_MATCHERS = sorted(((_precedence(p), _compile(p), route) for (m, p), route in ROUTES.items()),
                   key=lambda entry: entry[0])


def match(method, path):
    """(the Route MLflow would serve `method /path` with, its path parameters), or (None, {})."""
    method = "GET" if method == "HEAD" else method  # MLflow answers HEAD with its GET routes
    for _, pattern, route in _MATCHERS:
        if route.method == method:
            found = pattern.fullmatch(path)
            if found:
                return route, found.groupdict()
    return None, {}
