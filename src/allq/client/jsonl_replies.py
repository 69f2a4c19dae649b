"""The shapes of JSON-lines answers: federation records into AllQueue's envelopes.

AllQueue's own clients (the Ruby ``allq`` gem, ``allq_client_shard``) read the
reply line of its local TCP/UNIX API (``ALLQ-REFERENCE.md`` §7.3, §8.3): a put's
``job.job_id``, a get's ``job`` (``{}`` when none), the stats map of maps. These
pure functions write the same JSON values, so those clients keep working:

* put → ``{"response": {"action": "put", "job_id": ID}, "job": {"job_id": ID}}``;
* get (count 1) and peek → ``{"response": {"action": "get", "job": J}, "job": J}``,
  ``J = {"job_id", "body", "tube", "expireds", "releases"}`` with the counters
  as strings, as AllQueue sends them; ``J`` is ``{}`` when there is no job;
* get with another count → ``{"response": {"action": "get", "jobs": [J...]}, "jobs": [J...]}``;
* job actions → ``{"response": {"action": A, "job_id": ID}}``;
* stats → ``{"<server_id>,<host:port>": {"<tube>": {counters}, "global": {counters}}}``,
  every counter a string;
* ping → ``{"<server_id>": "true"}`` per healthy server;
* an error → ``{"response": {"action": A, "error": MESSAGE, "code": CODE}}``: AllQueue's
  ``error`` text, plus allq's error code (``allq.errors``) to branch on.

Compact JSON, one object per line (AllQueue's hand-written put reply had spaces;
no client depends on them). Nothing here reads a request or a socket.
"""

from collections.abc import Sequence

from allq.client.records import DuplicateJobId, FetchedJob, ServerStats
from allq.errors import AllQError

#: The longest error text a reply carries.
ERROR_LIMIT = 500


def job_hash(job: FetchedJob) -> dict:
    """A job as AllQueue's server hashed it: every value a string."""
    return {
        "job_id": job.job_id,
        "body": job.body,
        "tube": job.tube,
        "expireds": str(job.expireds),
        "releases": str(job.releases),
    }


def put_reply(job_id: str) -> dict:
    if isinstance(job_id, DuplicateJobId):  # a unique key's live job: nothing stored
        return {"response": {"action": "put", "job_id": job_id, "duplicate": True},
                "job": {"job_id": job_id}}
    return {"response": {"action": "put", "job_id": job_id}, "job": {"job_id": job_id}}


def job_reply(job: FetchedJob | None, action: str = "get") -> dict:
    """One job (or none: ``{}``), as get with count 1 and peek answer."""
    hashed = {} if job is None else job_hash(job)
    return {"response": {"action": action, "job": hashed}, "job": hashed}


def jobs_reply(jobs: Sequence[FetchedJob], action: str = "get") -> dict:
    hashed = [job_hash(job) for job in jobs]
    return {"response": {"action": action, "jobs": hashed}, "jobs": hashed}


def action_reply(action: str, job_id: str | None = None, **extra) -> dict:
    """A job action's or a setting's answer: ``{"response": {"action", ["job_id"], ...}}``."""
    response: dict = {"action": action}
    if job_id is not None:
        response["job_id"] = job_id
    response.update(extra)
    return {"response": response}


def parent_reply(job_id: str, tube: str, body: str) -> dict:
    """``set_parent_job``'s answer (AllQueue names the action ``set_parent``)."""
    job = {"job_id": job_id, "body": body, "tube": tube, "expireds": "0", "releases": "0"}
    return {"response": {"action": "set_parent", "job_id": job_id, "job": job}, "job": job}


def batch_reply(action: str, outcomes: Sequence[str | AllQError]) -> dict:
    """A batch put or delete: the ids in order (``null`` where a job failed),
    and per failed job its index, error text and code."""
    job_ids: list[str | None] = []
    errors: list[dict] = []
    for index, outcome in enumerate(outcomes):
        if isinstance(outcome, AllQError):
            job_ids.append(None)
            errors.append({"index": index, "error": outcome.message[:ERROR_LIMIT],
                           "code": outcome.code})
        else:
            job_ids.append(outcome)
    response: dict = {"action": action, "job_ids": job_ids}
    if errors:
        response["errors"] = errors
    duplicates = [i for i, outcome in enumerate(outcomes)
                  if isinstance(outcome, DuplicateJobId)]
    if duplicates:  # jobs a unique_key found live (their ids are those jobs')
        response["duplicates"] = duplicates
    return {"response": response}


def stats_reply(servers: Sequence[ServerStats]) -> dict:
    """Every reachable server's stats, keyed ``<server_id>,<host:port>``."""
    return {f"{server.server_id},{server.address}": _server_stats(server)
            for server in servers}


def _server_stats(server: ServerStats) -> dict:
    tubes: dict = {}
    for tube in server.tubes:
        entry = {
            "ready": str(tube.ready),
            "delayed": str(tube.delayed),
            "reserved": str(tube.reserved),
            "buried": str(tube.buried),
            "parents": str(tube.parents),
            "avg": str(round(tube.avg, 2)),
            "tps": str(round(tube.tps, 2)),
        }
        if tube.throttle_size is not None:
            size = float(tube.throttle_size)
            entry["throttle_size"] = str(int(size) if size.is_integer() else size)
        tubes[tube.tube] = entry
    totals = server.totals
    tubes["global"] = {name: str(int(totals.get(name, 0)))
                       for name in ("action_count", "job_get", "job_put")}
    return tubes


def ping_reply(server_ids: Sequence[str]) -> dict:
    return {server_id: "true" for server_id in server_ids}


def error_reply(error: AllQError, action: str | None, job_id: str | None = None) -> dict:
    """AllQueue's error shape (an ``error`` text in the response) with allq's code."""
    response: dict = {}
    if action is not None:
        response["action"] = action
    if job_id is not None:
        response["job_id"] = job_id
    response["error"] = error.message[:ERROR_LIMIT]
    response["code"] = error.code
    key = getattr(error, "idempotency_key", None)
    if key is not None:
        response["idempotency_key"] = key
    return {"response": response}
