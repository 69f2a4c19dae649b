"""The OpenAPI 3.1 document of the REST facade (:mod:`allq.client.rest`).

:func:`document` builds the description of every route the facade serves: its
methods, query parameters, request bodies, success shapes and error responses.
The facade serves it at ``GET /openapi.json``; ``tests/test_rest.py`` checks
that the routes registered on the Klein app and the paths and methods here are
the same set, so a route cannot be added on one side only.

Pure data: no I/O, no Twisted. Limits are arguments so the document states the
values the running facade enforces.
"""

from allq import __version__
from allq.client import openapi_events
from allq.vocabulary import (
    CLEAR_STATES,
    FAIR_SETTINGS,
    JOB_ID,
    LIST_STATES,
    MAX_CHILD_LIMIT,
    MAX_CONCURRENCY,
    MAX_COUNT,
    MAX_ERROR_LENGTH,
    MAX_EXPIRED_LIMIT,
    MAX_JOB_KEY_LENGTH,
    MAX_KICK_COUNT,
    MAX_LIST_LIMIT,
    MAX_OFFSET,
    MAX_PRIORITY,
    MAX_RUN_AT,
    MAX_SECONDS,
    MAX_TUBE_SIZE,
    MAX_WAIT,
    PARENT_ALIAS,
    TUBE_NAME,
)
from allq.vocabulary import MAX_EVERY, MIN_EVERY, MISSED_POLICIES, SCHEDULE_NAME

_BOOLEAN_WORDS = ("true", "false", "1", "0", "yes", "no")


def _any_case(word: str) -> str:
    return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else c for c in word)


#: ECMA-262 has no inline case-insensitive flag: spell each letter's two cases.
BOOLEAN_PATTERN = "^(" + "|".join(_any_case(w) for w in _BOOLEAN_WORDS) + ")$"
_NUMERIC_STRING = r"^-?[0-9]{1,20}(\.[0-9]{1,9})?$"
_INTEGER_STRING = r"^-?[0-9]{1,20}$"
#: Seconds in a query string: a plain decimal, as the facade reads it.
_SECONDS_STRING = r"^[0-9]{1,20}(\.[0-9]{1,9})?$"
#: ``host:port`` (``[v6]:port``), as the client reads a server address.
_ADDRESS = r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):[0-9]{1,5}$"


def _ref(kind: str, name: str) -> dict:
    return {"$ref": f"#/components/{kind}/{name}"}


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _query(name: str, schema: dict, description: str, required: bool = False) -> dict:
    return {"name": name, "in": "query", "required": required, "schema": schema,
            "description": description}


def _op(op_id: str, tag: str, summary: str, ok: dict, errors: tuple[str, ...],
        params: tuple[str, ...] = (), body: dict | None = None) -> dict:
    operation = {
        "operationId": op_id,
        "tags": [tag],
        "summary": summary,
        "parameters": [_ref("parameters", p) for p in params],
        "responses": {"200": ok, **{code: _ref("responses", _ERRORS[code]) for code in errors}},
    }
    if body is not None:
        operation["requestBody"] = body
    return operation


_ERRORS = {
    "400": "BadRequest",
    "404": "NotFound",
    "409": "WrongState",
    "413": "TooLarge",
    "415": "UnsupportedMediaType",
    "500": "InternalError",
    "503": "Unavailable",
    "504": "Timeout",
    "507": "Full",
}
_FEDERATED = ("500", "503", "504")
_JOB_ERRORS = ("400", "404", "409", *_FEDERATED)
#: A put: bad input, missing parent, parent not waiting, too large, no server /
#: draining, timeout, full.
_PUT_ERRORS = ("400", "404", "409", "413", "415", *_FEDERATED, "507")
_SETTING_ERRORS = ("400", *_FEDERATED)


def _schemas() -> dict:
    seconds = {"oneOf": [{"type": "number", "minimum": 0, "maximum": MAX_SECONDS},
                         {"type": "string", "pattern": _SECONDS_STRING}]}

    def bounded(low: int, high: int) -> dict:
        return {"oneOf": [{"type": "integer", "minimum": low, "maximum": high},
                          {"type": "string", "pattern": _INTEGER_STRING}]}
    tube = {"type": "string", "pattern": f"^{TUBE_NAME.pattern}$"}
    job_id = {"type": "string", "pattern": f"^{JOB_ID.pattern}$"}
    alias = {"type": "string", "pattern": f"^{PARENT_ALIAS.pattern}$"}
    new_job = {
        "tube": {**tube, "description": "the tube to put the job in"},
        "body": {"type": ["string", "null"], "default": "",
                 "description": "the job's payload as text"},
        "body_base64": {"type": ["string", "null"],
                        "description": "a binary payload (any bytes), base64-encoded; "
                        "instead of body (400 with both, or if it is not base64)"},
        "ttl": {"oneOf": [{"type": "number", "exclusiveMinimum": 0, "maximum": MAX_SECONDS},
                          {"type": "string", "pattern": _SECONDS_STRING}, {"type": "null"}],
                "description": "seconds a reserved job may run before it "
                "expires (> 0); absent or null: the server default (3600)"},
        "delay": {**seconds, "description": "seconds before the job becomes ready; "
                  "absent or null: 0"},
        "run_at": {"oneOf": [{"type": "number", "minimum": 0, "maximum": MAX_RUN_AT},
                             {"type": "string", "pattern": _NUMERIC_STRING},
                             {"type": "null"}],
                   "description": "the unix time (seconds) at which the job becomes "
                   "ready, by the server's clock; not together with a non-zero delay"},
        "priority": {"oneOf": [*bounded(0, MAX_PRIORITY)["oneOf"], {"type": "null"}],
                     "description": f"0 (most urgent) to {MAX_PRIORITY}; absent or null: "
                     "the server default (5)"},
        "expired_limit": {"oneOf": [*bounded(1, MAX_EXPIRED_LIMIT)["oneOf"], {"type": "null"}],
                          "description": "expiries before the job is buried "
                          "(1..2^31); absent or null: the server default (3)"},
        "parent_id": {"oneOf": [job_id, alias, {"type": "null"}, {"const": ""}],
                      "description": "the waiting parent job this job is a child of, by "
                      "job id or by the id its put chose; the job goes to the parent's "
                      "server (404 if no such parent, 503 if its server is down: never "
                      "another server); \"\" or null: none"},
        "shard_key": {"type": ["string", "null"], "description": "the job's key in a fair "
                      "tube (required there: 400 without it); 1-200 letters, digits and "
                      "_.:@$!#=+/-; ignored by other tubes; \"\" or null: none"},
        "idempotency_key": {"type": ["string", "null"], "pattern": "^[!-~]{1,200}$",
                            "description": "your key for this put (default: a fresh one); "
                            "the key of a 504 outcome_unknown answer sends the put to the "
                            "server that may hold the job, which never stores it twice"},
        "unique_key": {"type": ["string", "null"], "minLength": 1,
                       "maxLength": MAX_JOB_KEY_LENGTH,
                       "description": "while a job of the tube with this key is ready, "
                       "delayed, reserved or buried, the put stores nothing and answers "
                       "that job's id with \"duplicate\": true. The job goes to the server "
                       "its key chooses (its concurrency_key's when it has one): 503 while "
                       "that server is down or draining, never another server. "
                       f"1-{MAX_JOB_KEY_LENGTH} characters, no control characters"},
        "concurrency_key": {"type": ["string", "null"], "minLength": 1,
                            "maxLength": MAX_JOB_KEY_LENGTH,
                            "description": "at most the tube's concurrency limit (PUT "
                            "/concurrency, default 1) of the jobs with this key are reserved "
                            "at once, federation-wide; the others wait, ready, in order. "
                            "Routed like unique_key"},
    }
    parent_fields = {name: schema for name, schema in new_job.items()
                     if name not in ("idempotency_key", "unique_key", "concurrency_key")}
    job = {
        "type": "object",
        "required": ["id", "tube", "expireds", "releases"],
        "properties": {
            "id": {**job_id, "description": "\"<server_id>,<number>\"; percent-encode it "
                   "in URLs"},
            "body": {"type": "string", "description": "the payload, when it is UTF-8 text"},
            "body_base64": {"type": "string", "description": "the payload in base64, when "
                            "it is not UTF-8 text (binary); body_encoding says so"},
            "body_encoding": {"const": "base64"},
            "tube": {"type": "string"},
            "expireds": {"type": "integer", "description": "how often its ttl elapsed"},
            "releases": {"type": "integer", "description": "how often it was released"},
            "ttl": {"type": "number", "description": "seconds the job may stay reserved "
                    "before it goes back to ready (touch restarts it)"},
            "priority": {"type": "integer", "description": "lower runs first"},
            "error": {"type": "string", "maxLength": MAX_ERROR_LENGTH,
                      "description": "the last error a bury recorded (absent: none)"},
        },
    }
    return {
        "Error": {
            "type": "object",
            "required": ["error", "detail"],
            "properties": {
                "error": {"type": "string", "description": "a machine-readable code, e.g. "
                          "bad_request, not_found, method_not_allowed, "
                          "wrong_state, too_large, unavailable, timeout, internal_error"},
                "detail": {"type": "string", "description": "a human-readable explanation"},
                "idempotency_key": {"type": "string", "description": "with a 504 "
                                    "outcome_unknown: the key to put the job again with"},
            },
        },
        "NewJob": {"type": "object", "required": ["tube"], "additionalProperties": False,
                   "properties": new_job},
        "NewParentJob": {
            "type": "object", "required": ["tube"], "additionalProperties": False,
            "properties": {
                **parent_fields,
                "timeout": {"oneOf": [{"type": "number", "exclusiveMinimum": 0,
                                       "maximum": MAX_SECONDS},
                                      {"type": "string", "pattern": _SECONDS_STRING},
                                      {"type": "null"}], "default": 3600,
                            "description": "seconds (> 0, from creation) the parent waits "
                            "for its children"},
                "run_on_timeout": {"type": ["boolean", "string", "null"], "default": False,
                                   "description": "after the timeout: true runs the "
                                   "parent, false buries it"},
                "limit": {"oneOf": [*bounded(0, MAX_CHILD_LIMIT)["oneOf"], {"type": "null"}],
                          "description": "the parent becomes ready once this many children "
                          "are finished (0: at once); null: wait for "
                          "PUT /set_children_started"},
                "noop": {"type": ["boolean", "string", "null"],
                         "description": "true: the parent never runs; once its children "
                         "are finished it counts as a finished child of its own parent "
                         "(a join point)"},
                "id": {"oneOf": [alias, {"type": "null"}, {"const": ""}],
                       "description": "a caller-chosen id (no comma, not digits only) that "
                       "names the parent while it waits, as parent_id of its children and "
                       "job_id of PUT /set_children_started; 409 if it already names a "
                       "waiting parent. The answer's job_id is still the server's"},
            },
            "description": "NewJob's fields (delay and run_at only 0 or null) plus the "
            "parent's own; parent_id makes it a child of another parent (nested), on that "
            "parent's server",
        },
        "Throttle": {
            "type": "object", "required": ["tube", "tps"], "additionalProperties": False,
            "properties": {"tube": tube,
                           "tps": {"oneOf": [{"type": "number", "minimum": -1e18,
                                              "maximum": 1e18},
                                             {"type": "string", "pattern": _NUMERIC_STRING},
                                             {"type": "null"}],
                                   "description": "jobs per second for the whole federation; "
                                   "null or <= 0 removes the throttle"}},
        },
        "ThrottleResult": {
            "type": "object", "required": ["action", "value", "tube", "tps", "servers"],
            "properties": {
                "action": {"const": "throttle"},
                "value": {"const": "true", "description": "AllQueue's reply, kept for old "
                          "clients"},
                "tube": {"type": "string"},
                "tps": {"type": ["number", "null"], "description": "the federation-wide "
                        "cap, null when removed"},
                "servers": {"type": "integer", "description": "the healthy servers it was "
                            "split over; each got tps / servers"},
            },
        },
        "ParentJobRef": {
            "type": "object", "required": ["action", "job_id", "job"],
            "properties": {
                "action": {"const": "set_parent"},
                "job_id": job_id,
                "job": {"type": "object", "required": ["job_id", "tube"],
                        "properties": {"job_id": job_id, "tube": {"type": "string"},
                                       "body": {"type": "string"},
                                       "body_base64": {"type": "string"},
                                       "body_encoding": {"const": "base64"},
                                       "expireds": {"type": "integer"},
                                       "releases": {"type": "integer"}}},
            },
        },
        "TubeSetting": {
            "type": "object", "required": ["action", "tube", "servers"],
            "properties": {
                "action": {"type": "string"},
                "tube": {"type": "string"},
                "servers": {"type": "integer", "description": "how many servers applied "
                            "it (the healthy ones; compare with GET /health)"},
            },
        },
        "FairSetting": {
            "type": "object", "required": ["action", "tube", "policy", "servers"],
            "properties": {"action": {"const": "fair"}, "tube": {"type": "string"},
                           "policy": {"enum": list(FAIR_SETTINGS)},
                           "servers": {"type": "integer"}},
        },
        "ConcurrencySetting": {
            "type": "object", "required": ["action", "tube", "limit", "servers"],
            "properties": {"action": {"const": "concurrency"}, "tube": {"type": "string"},
                           "limit": {"type": "integer", "minimum": 1,
                                     "maximum": MAX_CONCURRENCY},
                           "servers": {"type": "integer"}},
        },
        "MaxSizeSetting": {
            "type": "object", "required": ["action", "tube", "max_size", "servers"],
            "properties": {"action": {"const": "max_size"}, "tube": {"type": "string"},
                           "max_size": {"type": ["integer", "null"]},
                           "servers": {"type": "integer"}},
        },
        "ServerDrain": {
            "type": "object", "required": ["action", "server_id", "draining", "notified"],
            "properties": {
                "action": {"enum": ["drain", "undrain"]},
                "server_id": {"type": "string"},
                "draining": {"type": "boolean"},
                "notified": {"type": "boolean", "description": "false: the server is not "
                             "connected; it is told when it reconnects"},
            },
        },
        "JobRef": {
            "type": "object", "required": ["action", "job_id"],
            "properties": {"action": {"const": "put"}, "job_id": job_id,
                           "duplicate": {"const": True, "description": "only when a "
                                         "unique_key found its live job: job_id is that "
                                         "job's, nothing new was stored"}},
        },
        "Job": job,
        "JobPage": {
            "type": "object",
            "required": ["tube", "state", "offset", "limit", "total", "jobs"],
            "properties": {
                "tube": {"type": "string"}, "state": {"enum": list(LIST_STATES)},
                "offset": {"type": "integer"}, "limit": {"type": "integer"},
                "total": {"type": "integer", "minimum": 0,
                          "description": "jobs in that state on the reachable servers"},
                "jobs": {"type": "array", "items": {"allOf": [
                    _ref("schemas", "Job"),
                    {"type": "object", "required": ["server"],
                     "properties": {"server": {"type": "string",
                                               "description": "the id of its server"}}}]}},
            },
        },
        "JobOrEmpty": {"oneOf": [_ref("schemas", "Job"),
                                 {"type": "object", "maxProperties": 0}]},
        "NewJobBatch": {
            "type": "object", "required": ["jobs"], "additionalProperties": False,
            "properties": {
                **{name: schema for name, schema in new_job.items()
                   if name not in ("body", "body_base64", "idempotency_key")},
                "jobs": {"type": "array", "minItems": 1, "maxItems": MAX_COUNT,
                         "items": {"type": "object", "additionalProperties": False,
                                   "properties": new_job},
                         "description": "the jobs, each a NewJob; the top-level fields "
                         "are defaults for every job (a job's own field wins)"},
            },
        },
        "JobIdBatch": {
            "type": "object", "required": ["job_ids"], "additionalProperties": False,
            "properties": {"job_ids": {"type": "array", "minItems": 1, "maxItems": MAX_COUNT,
                                       "items": job_id}},
        },
        "BatchResult": {
            "type": "object", "required": ["action", "job_ids"],
            "properties": {
                "action": {"enum": ["put", "delete"]},
                "job_ids": {"type": "array", "items": {"oneOf": [job_id, {"type": "null"}]},
                            "description": "in request order; null where that job failed "
                            "(only in an error answer)"},
                "duplicates": {"type": "array", "items": {"type": "integer", "minimum": 0},
                               "description": "puts only, when any: the indexes of the "
                               "jobs whose unique_key found a live job (their ids are "
                               "those jobs')"},
                "error": {"type": "string", "description": "error answers: the first "
                          "failed job's code (its HTTP status is the answer's)"},
                "detail": {"type": "string"},
                "errors": {"type": "array", "description": "error answers: one entry per "
                           "failed job", "items": {
                               "type": "object", "required": ["index", "error", "detail"],
                               "properties": {"index": {"type": "integer", "minimum": 0},
                                              "error": {"type": "string"},
                                              "detail": {"type": "string"}}}},
            },
        },
        "MultipleJobResponse": {
            "type": "object", "required": ["jobs"],
            "properties": {"jobs": {"type": "array", "items": _ref("schemas", "Job")}},
        },
        "JobAction": {
            "type": "object", "required": ["action", "job_id"],
            "properties": {"action": {"type": "string"}, "job_id": job_id},
        },
        "KickedJobs": {
            "type": "object", "required": ["action", "job_ids"],
            "properties": {"action": {"const": "kick"},
                           "job_ids": {"type": "array", "items": job_id}},
        },
        "Cleared": {
            "type": "object", "required": ["action", "cleared"],
            "properties": {"action": {"const": "clear"},
                           "cleared": {"type": "integer", "minimum": 0}},
        },
        "StatsTube": {
            "type": "object",
            "required": ["tube", "ready", "reserved", "delayed", "buried", "parents",
                         "avg", "tps"],
            "properties": {
                "tube": {"type": "string"},
                **{k: {"type": "integer"}
                   for k in ("ready", "reserved", "delayed", "buried", "parents")},
                "throttle_size": {"type": "number", "description": "only when throttled: "
                                  "this server's share of the throttle, jobs per second "
                                  "(fractional when a throttle is split)"},
                "avg": {"type": "number", "description": "mean seconds a reservation "
                        "took, 2 decimals"},
                "tps": {"type": "number", "description": "finished reservations per "
                        "second, 2 decimals"},
                "paused": {"type": "boolean"},
                "draining": {"type": "boolean", "description": "the tube takes no new jobs"},
                "fair": {"type": ["string", "null"], "description": "the fair-queuing "
                         "policy in force (round_robin, weighted) or null"},
                "max_size": {"type": ["integer", "null"], "description": "the tube's bound "
                             "on this server, or null"},
                "concurrency": {"type": "integer", "minimum": 1, "description": "jobs of "
                                "one concurrency_key reserved at once (PUT /concurrency; "
                                "default 1)"},
            },
        },
        "StatsResults": {
            "type": "object",
            "required": ["server_name", "action_count", "job_put", "job_get", "stats"],
            "properties": {
                "server_name": {"type": "string",
                                "description": "\"<server_id>,<host>:<port>\""},
                "action_count": {"type": "integer"},
                "job_put": {"type": "integer"},
                "job_get": {"type": "integer"},
                "draining": {"type": "boolean", "description": "the server takes no new "
                             "jobs (server drain)"},
                "disk_full": {"type": "boolean", "description": "the server's data "
                              "directory is full: it takes no changes (507 disk_full) until "
                              "space returns"},
                "schedule_failures": {"type": "integer", "description": "schedule "
                                      "firings whose put this server refused (a draining "
                                      "or full tube), logged and skipped"},
                "stats": {"type": "array", "items": _ref("schemas", "StatsTube")},
            },
        },
        "Health": {
            "type": "object", "required": ["servers", "up", "total"],
            "properties": {
                "servers": {"type": "array", "items": {
                    "type": "object", "required": ["address", "server_id", "up", "draining"],
                    "properties": {"address": {"type": "string"},
                                   "server_id": {"type": ["string", "null"]},
                                   "up": {"type": "boolean"},
                                   "draining": {"type": "boolean"},
                                   "reason": {"type": ["string", "null"], "description":
                                              "only while down: why (key not authorized, "
                                              "server.pub mismatch, connection refused...)"},
                                   "disk_full": {"type": "boolean", "description":
                                                 "only when true: the server's disk was "
                                                 "full at its last stats"}}}},
                "up": {"type": "integer"},
                "total": {"type": "integer"},
                "pid": {"type": "integer", "description": "the client process that answered "
                        "(one of several with --workers)"},
            },
        },
        "ServerUrl": {
            "type": "object", "required": ["server_url"], "additionalProperties": False,
            "properties": {"server_url": {"type": "string", "pattern": _ADDRESS,
                                          "description": "\"host:port\""}},
        },
        "BuryError": {
            "type": "object", "additionalProperties": False,
            "properties": {"error": {"type": "string", "minLength": 1,
                                     "maxLength": MAX_ERROR_LENGTH,
                                     "description": "why the job failed; kept as its "
                                     "last error"}},
        },
        "Empty": {"type": "object", "maxProperties": 0},
        "OpenApi": {"type": "object", "description": "this document"},
    }


def _parameters() -> dict:
    boolean = {"type": "string", "pattern": BOOLEAN_PATTERN, "default": "false"}
    tube_rule = "one of tube and tube_name is required"
    return {
        "tube": _query("tube", {"type": "string", "pattern": f"^{TUBE_NAME.pattern}$"},
                       f"the tube ({tube_rule})"),
        "tube_name": _query("tube_name", {"type": "string"},
                            "an alias of tube (AllQueue accepted both)"),
        "tube_optional": _query("tube", {"type": "string"},
                                "optional; checked for shape, not used to find the job"),
        "job_id": _query("job_id", {"type": "string", "pattern": f"^{JOB_ID.pattern}$"},
                         "\"<server_id>,<number>\", percent-encoded", required=True),
        "parent_ref": _query(
            "job_id", {"oneOf": [{"type": "string", "pattern": f"^{JOB_ID.pattern}$"},
                                 {"type": "string", "pattern": f"^{PARENT_ALIAS.pattern}$"}]},
            "the waiting parent: \"<server_id>,<number>\" (percent-encoded), or the id "
            "its put chose", required=True),
        "job_id_optional": _query(
            "job_id", {"type": "string", "pattern": f"^{JOB_ID.pattern}$"},
            "kick this job; without it, kick buried jobs of tube"),
        "delete": _query("delete", boolean, "remove the jobs as they are handed out "
                         "(true/false/1/0/yes/no, any case)"),
        "wait": _query("wait", {"type": "string", "pattern": _SECONDS_STRING,
                                "default": "0"},
                       "long poll: answer as soon as a job is ready, or after this many "
                       f"seconds (at most {MAX_WAIT:g}) with nothing"),
        "count": _query("count", {"type": "integer", "minimum": 1, "maximum": MAX_COUNT,
                                  "default": 1}, "how many jobs at most"),
        "kick_count": _query("count", {"type": "integer", "minimum": 1,
                                       "maximum": MAX_KICK_COUNT, "default": 1},
                             "how many buried jobs of tube to kick at most"),
        "buried": _query("buried", boolean, "peek at buried jobs instead of ready ones"),
        "offset": _query("offset", {"type": "integer", "minimum": 0, "maximum": MAX_OFFSET,
                                    "default": 0},
                         "skip this many jobs"),
        "list_state": _query("state", {"type": "string", "enum": list(LIST_STATES)},
                             "which of the tube's jobs to list", required=True),
        "list_offset": _query("offset", {"type": "integer", "minimum": 0,
                                         "maximum": MAX_OFFSET, "default": 0},
                              "skip this many jobs (counting servers in id order)"),
        "list_limit": _query("limit", {"type": "integer", "minimum": 1,
                                       "maximum": MAX_LIST_LIMIT, "default": 50},
                             "how many jobs at most"),
        "delay": _query("delay", {"type": "string", "pattern": _SECONDS_STRING,
                                  "default": "0"},
                        "seconds before the released job is ready again"),
        "cache_type": _query("cache_type", {"type": "string", "enum": list(CLEAR_STATES),
                                            "default": "all"}, "which jobs to drop"),
        "server_urls": _query("server_urls", {"type": "string"},
                              "the new set of servers, \"host:port,host:port\"",
                              required=True),
        "server_id": _query("server_id", {"type": "string"},
                            "drain a whole server: its id or \"host:port\" (give this or "
                            "tube)"),
        "drain_tube": _query("tube", {"type": "string", "pattern": f"^{TUBE_NAME.pattern}$"},
                             "drain a tube on every server (give this or server_id)"),
        "policy": _query("policy", {"type": "string", "enum": list(FAIR_SETTINGS)},
                         "round_robin or weighted: fair over shard keys; off: not fair; "
                         "default: by name (fair when it starts with fq-)", required=True),
        "concurrency_limit": _query(
            "limit", {"type": "string", "pattern": "^[0-9]{1,5}$", "default": "1"},
            f"how many jobs of one concurrency_key are reserved at once (1..{MAX_CONCURRENCY})"),
        "max_size": _query("max_size", {"type": "string", "pattern": "^([0-9]{1,13})?$"},
                           f"the most jobs the tube holds on each server (1..{MAX_TUBE_SIZE});"
                           " empty or absent: unbounded"),
        "error": _query("error", {"type": "string", "minLength": 1,
                                  "maxLength": MAX_ERROR_LENGTH},
                        "why the job failed, kept as its last error (when the request "
                        "has no JSON body)"),
        "server_url": _query("server_url", {"type": "string", "pattern": _ADDRESS},
                             "\"host:port\" (when the request has no JSON body)"),
    }


def _responses() -> dict:
    error = _ref("schemas", "Error")
    return {
        "BadRequest": _json(error, "Bad input: missing or malformed parameter, bad JSON, "
                            "unknown field, or a fair tube's put without shard_key"),
        "NotFound": _json(error, "No such job (or server)"),
        "WrongState": _json(error, "The job is not in a state the action applies to"),
        "TooLarge": _json(error, "The request body or the job is larger than allowed"),
        "Unavailable": _json(error, "No server (or not the job's or parent's server) is "
                             "reachable (error unavailable, connection_lost), or every "
                             "reachable server refused a put as draining (error draining)"),
        "Full": _json(error, "Every reachable server refused the put: its tube, or the "
                      "server, holds as many jobs as allowed (error full)"),
        "Timeout": _json(error, "No answer in time; the outcome is unknown (a put: error "
                         "outcome_unknown, with the idempotency_key to put it again with)"),
        "UnsupportedMediaType": _json(error, "The body is not sent as application/json"),
        "InternalError": _json(error, "A bug; it was logged"),
    }


def document(*, max_body: int) -> dict:
    """The OpenAPI 3.1 document of the REST facade; its limits and patterns are
    :mod:`allq.vocabulary`'s, the ones the facade checks.

    :param max_body: the largest request body accepted, in bytes.
    :returns: a JSON-encodable dict.
    """
    action = _json(_ref("schemas", "JobAction"), "{\"action\": <name>, \"job_id\"}")
    body_note = f" The body may be at most {max_body} bytes."

    def body(schema: str, required: bool = True) -> dict:
        return {"required": required,
                "content": {"application/json": {"schema": _ref("schemas", schema)}}}

    paths = {
        "/job": {
            "post": _op("job_post", "actions", "Put a job on the next server (round robin; "
                        "a server that answers draining or full is skipped), or with "
                        "parent_id on the parent's server." + body_note,
                        _json(_ref("schemas", "JobRef"), "The new job's id"),
                        _PUT_ERRORS, body=body("NewJob")),
            "get": _op("job_get", "actions", "Reserve the next ready job of a tube "
                       "(with delete, take it), or {} when none is ready.",
                       _json(_ref("schemas", "JobOrEmpty"), "The job, or {}"),
                       ("400", *_FEDERATED), ("tube", "tube_name", "delete", "wait")),
            "delete": _op("job_delete", "actions", "Finish a reserved job, or delete a "
                          "ready, delayed or buried one.",
                          action, _JOB_ERRORS, ("job_id", "tube_optional")),
        },
        "/multiple_job": {
            "get": _op("multiple_job_get", "actions", "Reserve up to count jobs of a tube.",
                       _json(_ref("schemas", "MultipleJobResponse"),
                             "The jobs (a list, possibly empty)"),
                       ("400", *_FEDERATED), ("tube", "tube_name", "count", "delete", "wait")),
            "post": _op("multiple_job_post", "actions", "Put a batch of up to "
                        f"{MAX_COUNT} jobs, each placed as POST /job places one (one frame per "
                        "server carries them). Every job is validated before any is put. "
                        "200 when every job was stored; otherwise the first failure's status, "
                        "and the body still lists the ids of the jobs that were stored."
                        + body_note,
                        _json(_ref("schemas", "BatchResult"), "The new jobs' ids, in order"),
                        _PUT_ERRORS, body=body("NewJobBatch")),
            "delete": _op("multiple_job_delete", "actions", f"Finish or delete up to "
                          f"{MAX_COUNT} jobs, as DELETE /job does one. 200 when every job was "
                          "deleted; otherwise the first failure's status, and the body lists "
                          "the ids that were deleted (null for the others) and each error.",
                          _json(_ref("schemas", "BatchResult"), "The deleted jobs' ids"),
                          _JOB_ERRORS, body=body("JobIdBatch")),
        },
        "/touch": {"put": _op("touch_put", "actions", "Restart a reserved job's ttl.",
                              action, _JOB_ERRORS, ("job_id",))},
        "/release": {"put": _op("release_put", "actions", "Give a reserved job back "
                                "(ready, or delayed by delay seconds).",
                                action, _JOB_ERRORS, ("job_id", "delay"))},
        "/bury": {"put": _op("bury_put", "actions", "Bury a reserved job, with the error "
                             "that made it fail (kept as the job's last error, shown by "
                             "peek and get)." + body_note,
                             action, ("400", "404", "409", "413", "415", *_FEDERATED),
                             ("job_id", "error"),
                             body=body("BuryError", required=False))},
        "/kick": {"put": _op(
            "kick_put", "actions", "Kick a buried or delayed job (job_id), or up to count "
            "buried jobs of a tube.",
            _json({"oneOf": [_ref("schemas", "JobAction"), _ref("schemas", "KickedJobs")]},
                  "With job_id: {action, job_id}; with tube: {action, job_ids}"),
            _JOB_ERRORS, ("job_id_optional", "tube", "tube_name", "kick_count"))},
        "/set_children_started": {"put": _op(
            "set_children_started_put", "actions",
            "Every child of the waiting parent job_id has been put: its limit becomes the "
            "number put so far (it starts at once if they are all finished).",
            action, _JOB_ERRORS, ("parent_ref",))},
        "/peek": {"get": _op("peek_get", "actions", "The next ready (or buried) job of a "
                             "tube without reserving it, or {}.",
                             _json(_ref("schemas", "JobOrEmpty"), "The job, or {}"),
                             ("400", *_FEDERATED), ("tube", "tube_name", "buried", "offset"))},
        "/jobs": {"get": _op("jobs_get", "actions", "A page of a tube's jobs in one state, "
                             "without reserving them: each server's list (ready: in get "
                             "order; buried: oldest first; delayed: soonest due first; "
                             "reserved: put order), servers in id order.",
                             _json(_ref("schemas", "JobPage"), "The page"),
                             ("400", *_FEDERATED),
                             ("tube", "tube_name", "list_state", "list_offset", "list_limit"))},
        "/tube": {"delete": _op("tube_delete", "actions", "Drop a tube's jobs (in one state, "
                                "or all) on every server.",
                                _json(_ref("schemas", "Cleared"), "How many were dropped"),
                                ("400", *_FEDERATED), ("tube", "tube_name", "cache_type"))},
        "/throttle": {"post": _op(
            "throttle_post", "actions", "Cap how many jobs per second the federation "
            "hands out from a tube: each of the N healthy servers gets tps / N (shares "
            "fixed at this moment). tps null or <= 0 removes the cap." + body_note,
            _json(_ref("schemas", "ThrottleResult"), "Set on every healthy server"),
            ("400", "413", "415", *_FEDERATED), body=body("Throttle"))},
        "/parent_job": {"post": _op(
            "parent_job_post", "actions", "Put a parent job: it becomes ready when limit "
            "of its children are finished (or at its timeout). Placed like a put; with "
            "parent_id on that parent's server." + body_note,
            _json(_ref("schemas", "ParentJobRef"), "The parent's id"),
            _PUT_ERRORS, body=body("NewParentJob"))},
        "/pause": {"put": _op(
            "pause_put", "actions", "Pause a tube on every healthy server: no jobs are "
            "handed out; puts are still taken.",
            _json(_ref("schemas", "TubeSetting"), "Paused"), _SETTING_ERRORS,
            ("tube", "tube_name"))},
        "/unpause": {"put": _op(
            "unpause_put", "actions", "Resume a paused tube on every healthy server.",
            _json(_ref("schemas", "TubeSetting"), "Resumed"), _SETTING_ERRORS,
            ("tube", "tube_name"))},
        "/fair": {"put": _op(
            "fair_put", "actions", "Set a tube's fair-queuing policy on every healthy "
            "server. Puts to a fair tube need a shard_key.",
            _json(_ref("schemas", "FairSetting"), "Set"), _SETTING_ERRORS,
            ("tube", "tube_name", "policy"))},
        "/concurrency": {"put": _op(
            "concurrency_put", "actions", "Set how many jobs of one concurrency_key of a "
            "tube are reserved at once (default 1), on every healthy server (a key's jobs "
            "all live on the one server its key chooses).",
            _json(_ref("schemas", "ConcurrencySetting"), "Set"), _SETTING_ERRORS,
            ("tube", "tube_name", "concurrency_limit"))},
        "/max_size": {"put": _op(
            "max_size_put", "actions", "Bound a tube to max_size jobs on each healthy "
            "server (the bound is per server). A put to a full tube goes to another "
            "server; when all are full it answers 507.",
            _json(_ref("schemas", "MaxSizeSetting"), "Set"), _SETTING_ERRORS,
            ("tube", "tube_name", "max_size"))},
        "/stats": {"get": _op("stats_get", "admin", "Counters of every reachable server.",
                              _json({"type": "array", "items": _ref("schemas", "StatsResults")},
                                    "One entry per reachable server"), _FEDERATED)},
        "/health": {"get": {
            **_op("health_get", "admin", "Which servers are up; 503 when none is.",
                  _json(_ref("schemas", "Health"), "At least one server is up"), ("500",)),
        }},
        "/update_servers": {"put": _op(
            "update_servers_put", "admin", "Replace the set of servers.",
            _json(_ref("schemas", "Empty"), "Done"), ("400", "500"), ("server_urls",))},
        "/drain": {"put": _op(
            "drain_put", "admin", "Drain a tube on every healthy server (tube), or a whole "
            "server (server_id): no new jobs are taken there, the jobs held are still "
            "handed out. A drained server is skipped by this client's puts and refuses "
            "puts from every other client.",
            _json({"oneOf": [_ref("schemas", "TubeSetting"), _ref("schemas", "ServerDrain")]},
                  "With tube: {action, tube, servers}; with server_id: "
                  "{action, server_id, draining, notified}"),
            ("400", "404", *_FEDERATED), ("drain_tube", "tube_name", "server_id"))},
        "/undrain": {"put": _op(
            "undrain_put", "admin", "Take new jobs again in a tube (tube) or on a server "
            "(server_id).",
            _json({"oneOf": [_ref("schemas", "TubeSetting"), _ref("schemas", "ServerDrain")]},
                  "As for PUT /drain"),
            ("400", "404", *_FEDERATED), ("drain_tube", "tube_name", "server_id"))},
        "/add_server": {"post": _op(
            "add_server_post", "admin", "Add a server (JSON body, or the server_url query "
            "parameter with no body)." + body_note,
            _json(_ref("schemas", "ServerUrl"), "Added"), ("400", "413", "415", "500"),
            ("server_url",), body=body("ServerUrl", required=False))},
        "/openapi.json": {"get": _op(
            "openapi_get", "admin", "This document.",
            _json(_ref("schemas", "OpenApi"), "The OpenAPI document"), ("500",))},
    }
    paths.update(_schedule_paths(body, body_note))
    paths["/health"]["get"]["responses"]["503"] = _json(
        _ref("schemas", "Health"), "No server is up (same body)")
    return openapi_events.extend({
        "openapi": "3.1.0",
        "info": {
            "title": "allq client REST API",
            "version": __version__,
            "description": (
                "The HTTP API of twistd allq-client: AllQueue's REST endpoints with real "
                "status codes. Every error has a JSON body {\"error\": <code>, \"detail\": "
                "<text>}. A path that is not listed answers 404 (error not_found); a "
                "listed path with a method not listed for it answers 405 (error "
                "method_not_allowed, with an Allow header). HEAD is not served. Job ids "
                "contain a comma: percent-encode them in query strings."
            ),
        },
        "servers": [{"url": "http://localhost:8090"}],
        "tags": [{"name": "actions", "description": "jobs and tubes"},
                 {"name": "admin", "description": "servers, stats and this document"},
                 {"name": "schedules", "description": "recurring schedules"}],
        "paths": paths,
        "components": {
            "schemas": {**_schemas(), **_schedule_schemas()},
            "parameters": {**_parameters(), "schedule_name": _query(
                "name", {"type": "string", "pattern": f"^{SCHEDULE_NAME.pattern}$"},
                "the schedule's name", required=True)},
            "responses": _responses(),
        },
    }, _ERRORS, body_note)


# -- recurring schedules (allq.client.schedules) ------------------------------------------


def _schedule_schemas() -> dict:
    name = {"type": "string", "pattern": f"^{SCHEDULE_NAME.pattern}$"}
    tube = {"type": "string", "pattern": f"^{TUBE_NAME.pattern}$"}
    seconds = {"type": "number", "minimum": 0, "maximum": MAX_SECONDS}
    every = {"type": "number", "minimum": MIN_EVERY, "maximum": MAX_EVERY,
             "description": "seconds between firings"}
    cron = {"type": "string", "maxLength": 200, "description": "five fields: minute hour "
            "day-of-month month day-of-week, in timezone (e.g. \"0 9 * * mon-fri\")"}
    options = {
        "name": name, "tube": tube,
        "timezone": {"type": "string", "maxLength": 100, "default": "UTC",
                     "description": "IANA time zone of the cron expression"},
        "missed": {"enum": list(MISSED_POLICIES), "default": "once",
                   "description": "firings missed while the schedule's server was down: "
                   "once (fire once on recovery) or skip"},
        "body": {"type": "string"},
        "body_base64": {"type": "string", "description": "a binary body, base64"},
        "priority": {"type": "integer", "minimum": 0, "maximum": MAX_PRIORITY},
        "ttl": {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_SECONDS},
        "delay": seconds,
        "expired_limit": {"type": "integer", "minimum": 1, "maximum": MAX_EXPIRED_LIMIT},
    }
    schedule = {
        "type": "object",
        "required": ["name", "tube", "cron", "every", "timezone", "paused", "next_run",
                     "server_id"],
        "properties": {
            "name": name, "tube": tube, "body": {"type": "string"},
            "cron": {"type": ["string", "null"]}, "every": {"type": ["number", "null"]},
            "timezone": {"type": "string"}, "missed": {"enum": list(MISSED_POLICIES)},
            "paused": {"type": "boolean"},
            "next_run": {"type": ["number", "null"], "description": "unix time of the next "
                         "firing (null while paused)"},
            "next_run_local": {"type": ["string", "null"],
                               "description": "the same, ISO 8601 in the schedule's zone"},
            "fired": {"type": "integer"}, "last_fired": {"type": ["number", "null"]},
            "missed_total": {"type": "integer", "description": "firings dropped: collapsed "
                             "after a late timer, or missed while the server was down"},
            "server_id": {"type": "string", "description": "the server it lives on"},
            "server": {"type": "string"},
        },
    }
    return {
        "NewSchedule": {
            "type": "object", "additionalProperties": False, "required": ["name", "tube"],
            "description": "exactly one of cron and every",
            "properties": {**options, "cron": cron, "every": every},
        },
        "Schedule": schedule,
        "ScheduleResult": {
            "type": "object", "required": ["action", "schedule"],
            "properties": {"action": {"type": "string"},
                           "schedule": _ref("schemas", "Schedule")},
        },
        "ScheduleList": {
            "type": "object", "required": ["schedules"],
            "properties": {"schedules": {"type": "array",
                                         "items": _ref("schemas", "Schedule")}},
        },
        "ScheduleRemoved": {
            "type": "object", "required": ["action", "name", "server_id"],
            "properties": {"action": {"const": "remove_schedule"}, "name": name,
                           "server_id": {"type": "string"}},
        },
    }


def _schedule_paths(body, body_note: str) -> dict:
    errors = ("400", "404", *_FEDERATED)
    return {
        "/schedule": {
            "post": _op(
                "schedule_post", "schedules", "Create (or replace, by name) a recurring "
                "schedule: every firing puts one job into tube, from the clock of the one "
                "server the name picks (rendezvous hashing over the server ids). 503 when "
                "that server is down. A bad cron expression or an unknown timezone is "
                "400." + body_note,
                _json(_ref("schemas", "ScheduleResult"), "Stored on its server"),
                ("400", "413", "415", *_FEDERATED), body=body("NewSchedule")),
            "delete": _op(
                "schedule_delete", "schedules", "Remove a schedule (the jobs it put stay).",
                _json(_ref("schemas", "ScheduleRemoved"), "Removed"), errors,
                ("schedule_name",)),
        },
        "/schedules": {"get": _op(
            "schedules_get", "schedules", "Every schedule of every reachable server, with "
            "its next firing.", _json(_ref("schemas", "ScheduleList"), "The schedules"),
            _FEDERATED)},
        "/schedule/pause": {"put": _op(
            "schedule_pause_put", "schedules", "Stop a schedule's firings until resumed.",
            _json(_ref("schemas", "ScheduleResult"), "Paused"), errors, ("schedule_name",))},
        "/schedule/resume": {"put": _op(
            "schedule_resume_put", "schedules", "Fire a paused schedule again, from its "
            "next firing after now (nothing missed while paused is caught up).",
            _json(_ref("schemas", "ScheduleResult"), "Resumed"), errors, ("schedule_name",))},
    }
