"""The interest routing part of ``/openapi.json`` (:mod:`allq.client.openapi`):
``PUT``/``DELETE /interest``, ``GET /interests`` and ``POST /event``, with their
limits from :mod:`allq.vocabulary`."""

from allq.vocabulary import (
    EVENT_SCOPES,
    EVENT_UNMATCHED,
    MAX_EVENT_FIELDS,
    MAX_INTEREST_FIELDS,
    MAX_INTEREST_PATTERN,
    TUBE_NAME,
)

#: Event options shared with a put (their NewJob schemas).
_JOB_OPTIONS = ("priority", "ttl", "delay", "run_at", "expired_limit", "shard_key",
                "idempotency_key")


def _ref(kind: str, name: str) -> dict:
    return {"$ref": f"#/components/{kind}/{name}"}


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _op(op_id: str, summary: str, ok: dict, errors: tuple[str, ...], errors_by_code: dict,
        params: tuple[str, ...] = (), body: str | None = None) -> dict:
    operation = {
        "operationId": op_id, "tags": ["interests"], "summary": summary,
        "parameters": [_ref("parameters", p) for p in params],
        "responses": {"200": ok, **{code: _ref("responses", errors_by_code[code])
                                    for code in errors}},
    }
    if body is not None:
        operation["requestBody"] = {"required": True, "content": {
            "application/json": {"schema": _ref("schemas", body)}}}
    return operation


def schemas(new_job_fields: dict) -> dict:
    tube = {"type": "string", "pattern": f"^{TUBE_NAME.pattern}$"}
    interests = {"oneOf": [
        {"const": "*", "description": "every event"},
        {"type": "object", "minProperties": 1, "maxProperties": MAX_INTEREST_FIELDS,
         "additionalProperties": {"type": "string", "maxLength": MAX_INTEREST_PATTERN},
         "description": "field name → RE2 regex, searched in that top-level field of an "
                        "event's data (a non-string value as its JSON text)"},
    ]}
    copy = {"type": "object", "required": ["tube", "job_id"],
            "properties": {"tube": {"type": "string"}, "job_id": {"type": "string"}}}
    return {
        "Interest": {
            "type": "object", "required": ["tube", "interests"], "additionalProperties": False,
            "properties": {"tube": tube, "interests": interests},
        },
        "InterestResult": {
            "type": "object", "required": ["action", "tube", "servers"],
            "properties": {"action": {"enum": ["interest", "delete_interest"]},
                           "tube": {"type": "string"}, "interests": interests,
                           "servers": {"type": "integer",
                                       "description": "the servers that took it"}},
        },
        "Interests": {
            "type": "object", "required": ["interests"],
            "properties": {"interests": {"type": "array", "items": {
                "type": "object", "required": ["tube", "interests"],
                "properties": {"tube": {"type": "string"}, "interests": interests}}}},
        },
        "Event": {
            "type": "object", "required": ["data"], "additionalProperties": False,
            "properties": {
                "data": {"type": "object", "maxProperties": MAX_EVENT_FIELDS,
                         "description": "the event; each copy's job body is its JSON text "
                                        "(at most the server's maximum job size)"},
                "scope": {"enum": list(EVENT_SCOPES), "default": "any",
                          "description": "any: a tube matches when one of its fields does "
                                         "(couchqueue's OR); all: when every one does"},
                "unmatched": {"enum": list(EVENT_UNMATCHED), "default": "drop",
                              "description": "an event no tube wants: drop it (200, no "
                                             "copies; counted) or answer 404"},
                **{name: new_job_fields[name] for name in _JOB_OPTIONS},
            },
        },
        "EventResult": {
            "type": "object", "required": ["action", "matched", "copies"],
            "properties": {"action": {"const": "event"},
                           "matched": {"type": "integer", "minimum": 0},
                           "copies": {"type": "array", "items": copy,
                                      "description": "one job per interested tube, all "
                                                     "on one server, by tube name"}},
        },
    }


def paths(errors_by_code: dict, body_note: str) -> dict:
    federated = ("500", "503", "504")
    return {
        "/interest": {
            "put": _op("interest_put", "Register a tube's interests on every reachable "
                       "server (a server that was down gets them when it reconnects). A bad "
                       "regex is 400." + body_note,
                       _json(_ref("schemas", "InterestResult"), "Registered"),
                       ("400", "413", "415", *federated), errors_by_code, body="Interest"),
            "delete": _op("interest_delete", "Remove a tube's interests everywhere.",
                          _json(_ref("schemas", "InterestResult"), "Removed"),
                          ("400", *federated), errors_by_code, ("tube", "tube_name")),
        },
        "/interests": {"get": _op(
            "interests_get", "Every tube's interests, by tube.",
            _json(_ref("schemas", "Interests"), "The interests"), federated, errors_by_code)},
        "/event": {"post": _op(
            "event_post", "Publish an event: one job in every tube whose interests match, "
            "stored together on one server (all or none). A retry with the same "
            "idempotency_key answers the same copies." + body_note,
            _json(_ref("schemas", "EventResult"), "The copies (none: dropped)"),
            ("400", "404", "413", "415", *federated, "507"), errors_by_code, body="Event")},
    }


def extend(document: dict, errors_by_code: dict, body_note: str) -> dict:
    """``document`` with the interest routes and schemas added."""
    components = document["components"]["schemas"]
    components.update(schemas(components["NewJob"]["properties"]))
    components["StatsResults"]["properties"].update({
        "events": {"type": "integer", "description": "events published through this "
                   "server since it started"},
        "events_unmatched": {"type": "integer", "description": "of those, events no "
                             "tube's interests matched (dropped, or refused with 404)"},
    })
    document["paths"].update(paths(errors_by_code, body_note))
    document["tags"].append({"name": "interests",
                             "description": "interest routing: publish once, fan out"})
    return document
