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

from allq.core.idempotency import IdempotencyKeys
from allq.core.interests import InterestTable
from allq.core.queue import Queue
from allq.errors import AllQError, BadRequest
from allq.vocabulary import JobRef, check_event_data, check_event_scope

#: Between an event's idempotency key and a tube name in a copy's key: a control
#: character, so no put's key (client-made or not) can collide with it.
_KEY_SEPARATOR = "\x1f"


def fan_out(queue: Queue, keys: IdempotencyKeys, interests: InterestTable, server_id: str,
            now: float, *, data, scope, idempotency_key, **options) -> dict:
    """Apply one ``event`` request; ``{"copies": [{"tube", "job_id"}, ...]}``.

    :param options: the copies' put options (priority, ttl, delay, ...).
    :raises AllQError: the first copy the queue refused (none is kept then).
    """
    check_event_data(data)
    check_event_scope(scope)
    tubes = interests.match(data, scope)
    if not tubes:
        return {"copies": []}
    body = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    if not body.isascii():
        # JSON's "\ud800" escapes decode to lone surrogates, which UTF-8 cannot
        # encode: stored, such a body would make every reply carrying it fail.
        try:
            body.encode("utf-8")
        except UnicodeEncodeError:
            raise BadRequest("event: data must be valid Unicode text "
                             "(no lone surrogates)") from None
    copies, stored = [], []
    try:
        for tube in tubes:
            key = None if idempotency_key is None else idempotency_key + _KEY_SEPARATOR + tube
            number = None if key is None else keys.lookup(key, now)
            if number is None:
                job = queue.put(tube, body, now=now, **options)
                stored.append((key, job))
                number = job.id
            copies.append({"tube": tube, "job_id": str(JobRef(server_id, number))})
    except AllQError:
        for _, job in stored:
            queue.delete(job.id, now=now)
        raise
    for key, job in stored:
        if key is not None:
            keys.remember(key, job.id, now)
    return {"copies": copies}
