"""Requests generated from /openapi.json: each is accepted or answered with a 4xx or
5xx its operation documents, with a JSON error body; never an undocumented status,
never a 500. (Red-team finding 8 of issue 10; its schema-driven run, kept in the suite.)

The document's schemas drive Hypothesis (:func:`from_schema` reads the JSON Schema
subset the document uses: types, enums, consts, patterns, bounds, oneOf, objects and
arrays); the requests go through StubTreq to the REST facade over the real federation
on in-memory servers, read by twisted.web, and for the job routes also by the client's
httptools protocol.
"""

import json
from urllib.parse import urlencode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from allq.client import openapi
from allq.client.rest import RestApi
from allq.core.queue import QueueConfig

from memory_servers import result_with_flush, start_federation
from rest_case import serve

MAX_BODY = 4096
DOCUMENT = openapi.document(max_body=MAX_BODY)
OPERATIONS = [(path, method) for path, item in DOCUMENT["paths"].items() for method in item]
#: Each operation over twisted.web; the job routes (the httptools protocol's) over both.
CASES = ([(path, method, "twisted") for path, method in OPERATIONS]
         + [(path, method, "httptools") for path, method in OPERATIONS
            if path in ("/job", "/multiple_job")])
EXAMPLES = 15


def resolve(node):
    """``node`` with every ``$ref`` into the document's components replaced by its target."""
    if isinstance(node, dict):
        if "$ref" in node:
            target = DOCUMENT
            for part in node["$ref"].removeprefix("#/").split("/"):
                target = target[part]
            return resolve(target)
        return {key: resolve(value) for key, value in node.items()}
    if isinstance(node, list):
        return [resolve(item) for item in node]
    return node


_SCALARS = {
    "null": st.none(),
    "boolean": st.booleans(),
    "integer": st.integers(),
    "number": st.integers() | st.floats(allow_nan=False, allow_infinity=False),
    "string": st.text(max_size=40),
}


def from_schema(schema: dict):
    """A strategy for values valid under ``schema`` (the subset the document uses)."""
    if "const" in schema:
        return st.just(schema["const"])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    if "oneOf" in schema:
        return st.one_of([from_schema(option) for option in schema["oneOf"]])
    kind = schema.get("type")
    if isinstance(kind, list):
        return st.one_of([from_schema({**schema, "type": one}) for one in kind])
    if kind == "object" or "properties" in schema:
        properties = schema.get("properties", {})
        required = set(schema.get("required", ()))
        if schema.get("maxProperties") == 0:
            return st.just({})
        return st.fixed_dictionaries(
            {name: from_schema(sub) for name, sub in properties.items() if name in required},
            optional={name: from_schema(sub) for name, sub in properties.items()
                      if name not in required})
    if kind == "array":
        return st.lists(from_schema(schema.get("items", {})),
                        min_size=schema.get("minItems", 0),
                        max_size=min(schema.get("maxItems", 5), 5))
    if kind == "string" and "pattern" in schema:
        # JSON Schema's "$" ends the text; Python's would allow a final newline.
        return st.from_regex(schema["pattern"].removesuffix("$") + r"\Z")
    if kind in ("integer", "number") and {"minimum", "maximum", "exclusiveMinimum"} & set(schema):
        low, high = schema.get("minimum"), schema.get("maximum")
        if kind == "integer":
            return st.integers(low, high)
        if "exclusiveMinimum" in schema:
            low = schema["exclusiveMinimum"]
            return (st.integers(int(low) + 1, high)
                    | st.floats(low, high, exclude_min=True, allow_nan=False))
        return st.integers(low, high) | st.floats(low, high, allow_nan=False)
    return _SCALARS[kind] if kind in _SCALARS else _SCALARS["string"]


def query_text(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def request_strategy(path: str, method: str):
    """(query string, JSON body or None) for one operation."""
    operation = resolve(DOCUMENT["paths"][path][method])
    params = {}
    for parameter in operation["parameters"]:
        value = from_schema(parameter["schema"]).map(query_text)
        params[parameter["name"]] = (value if parameter["required"]
                                     else st.none() | value)
    query = st.fixed_dictionaries(params).map(
        lambda chosen: urlencode({k: v for k, v in chosen.items() if v is not None}))
    body = operation.get("requestBody")
    if body is None:
        return st.tuples(query, st.none())
    schema = body["content"]["application/json"]["schema"]
    return st.tuples(query, from_schema(schema))


class Client:
    """The facade over a one-server federation, driven by a Clock."""

    def __init__(self, http_parser):
        self.clock = Clock()
        self.federation, _ = start_federation(
            self.clock, ["127.0.0.1:7711"], config=QueueConfig(max_job_size=1024),
            retry_budget=0.5)
        self.stub = serve(RestApi(self.federation, self.clock, max_body=MAX_BODY,
                                  request_timeout=5), http_parser)

    def send(self, case, method, path, query, body):
        url = f"http://localhost{path}" + (f"?{query}" if query else "")
        kwargs = {} if body is None else {"json": body}
        d = self.stub.request(method.upper(), url, **kwargs)
        d.addCallback(lambda r: r.content().addCallback(lambda content: (r.code, content)))
        return result_with_flush(case, self.stub, self.clock, d, limit=2000)


@pytest.mark.parametrize("path, method, http_parser", CASES, ids=lambda v: str(v))
def test_generated_requests_get_documented_answers(path, method, http_parser):
    client = Client(http_parser)
    documented = set(DOCUMENT["paths"][path][method]["responses"]) - {"500"}
    seen = {}

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(request_strategy(path, method))
    def check(request):
        query, body = request
        status, content = client.send(SynchronousTestCase(), method, path, query, body)
        assert str(status) in documented, (status, query, body, content)
        if status >= 400:
            reply = json.loads(content)
            assert set(reply) >= {"error", "detail"}, reply
        seen[status] = seen.get(status, 0) + 1

    try:
        check()
    finally:
        client.federation.stopService()
    assert seen  # the operation was exercised
