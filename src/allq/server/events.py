"""An event's fan-out on one server: one job per interested tube, all or none.

The whole fan-out runs in one dispatcher call, so its jobs reach the journal in
one commit, before the reply (:mod:`allq.server.journal`): a kill -9 keeps all
of them or none. A copy the core refuses (a tube draining or full, a fair tube
without ``shard_key``) undoes the copies stored before it and fails the event
with that error, so the client's placement may try another server.

Idempotency: each copy is remembered under ``<key>\\x1f<tube>`` in the server's
idempotency keys (journaled like a put's), so a retry with the same key gets the
first copies' ids back and stores only what is missing; a tube that became
interested between the tries gets its copy then (no tube ever gets two).
"""

import json

from allq.errors import AllQError, BadRequest
from allq.vocabulary import check_event_data, check_event_scope

#: Between an event's idempotency key and a tube name in a copy's key: a control
#: character, so no put's key (client-made or not) can collide with it.
_KEY_SEPARATOR = "\x1f"


def fan_out(dispatcher, now: float, *, data, scope, idempotency_key, **options) -> dict:
    """Apply one ``event`` request on ``dispatcher``'s queue; ``{"copies": [...]}``."""
    check_event_data(data)
    check_event_scope(scope)
    tubes = dispatcher.interests.match(data, scope)
    if not tubes:
        return {"copies": []}
    try:
        body = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    except ValueError as e:  # a lone surrogate, say
        raise BadRequest(f"event: data cannot be written as JSON: {str(e)[:80]}") from None
    queue, keys = dispatcher._queue, dispatcher._idempotency
    copies, stored = [], []
    try:
        for tube in tubes:
            key = None if idempotency_key is None else idempotency_key + _KEY_SEPARATOR + tube
            earlier = None if key is None else keys.lookup(key, now)
            if earlier is None:
                job = queue.put(tube, body, now=now, **options)
                stored.append((key, job))
                number = job.id
            else:
                number = earlier
            copies.append({"tube": tube, "job_id": f"{dispatcher._server_id()},{number}"})
    except AllQError:
        for _, job in stored:
            queue.delete(job.id, now=now)
        raise
    for key, job in stored:
        if key is not None:
            keys.remember(key, job.id, now)
    return {"copies": copies}
