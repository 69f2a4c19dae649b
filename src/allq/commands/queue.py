"""``allq put|get|done|peek|kick|bury|release|touch|stats|tubes|throttle|pause|unpause|
drain|undrain|servers|dump|concurrency|event|interests|schedules``: the queue from the
command line.

Each command makes one or a few calls through the synchronous
:class:`allq.worker.Client` (``--url``, else ``$ALLQ_URL``, else
``http://127.0.0.1:8090``; several comma-separated URLs fail over), prints the
result for people (``--json``: one JSON value for scripts) and returns the exit
status. Errors (no allq-client reachable, a 4xx answer) are one line on stderr,
``allq: error: <code>: <detail>``, and exit status 1; bad arguments exit 2.

What it must not do: any queue rule of its own; talk to anything but the
allq-client's REST API.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, TextIO

from rich.live import Live

from allq.errors import AllQError
from allq.worker import BatchError, Client
from allq.worker.api import ENV_URL
from allq.commands import render

EXIT_OK = 0
#: A call failed: unreachable allq-client, an error answer, a file not readable.
EXIT_FAILED = 1
EXIT_USAGE = 2
#: Jobs per batch of the bulk commands.
BULK_BATCH = 1000


class _Usage(Exception):
    """Arguments argparse could not check (exit status 2)."""


def _command(run: Callable[[argparse.Namespace, Client, TextIO], int]):
    """A command's ``run(args, out)``: makes the client, turns errors into one line."""

    @functools.wraps(run)
    def wrapper(args: argparse.Namespace, out: TextIO) -> int:
        try:
            client = Client(args.url, timeout=args.timeout)
        except ValueError as e:
            return _fail(str(e), EXIT_USAGE)
        try:
            return run(args, client, out)
        except BatchError as e:
            return _fail(f"{e.code}: {e.message}")
        except AllQError as e:
            return _fail(f"{e.code}: {e.message}")
        except _Usage as e:
            return _fail(str(e), EXIT_USAGE)
        except OSError as e:
            return _fail(f"{e.filename or ''}: {e.strerror or e}".lstrip(": "))
        except KeyboardInterrupt:
            sys.stderr.write("allq: interrupted\n")
            return 130
        finally:
            client.close()

    return wrapper


def _fail(message: str, status: int = EXIT_FAILED) -> int:
    sys.stderr.write("allq: error: " + " ".join(message.split()) + "\n")
    return status


def _json(args: argparse.Namespace) -> bool:
    return args.json


def _progress_wanted(args: argparse.Namespace) -> bool:
    return args.progress if args.progress is not None else sys.stderr.isatty()


# -- jobs ------------------------------------------------------------------------------------


PUT_FIELDS = ("ttl", "delay", "priority", "expired_limit", "shard_key", "parent_id",
              "idempotency_key", "unique_key", "concurrency_key")


def _put_options(args: argparse.Namespace) -> dict:
    return {name: getattr(args, name) for name in PUT_FIELDS if getattr(args, name) is not None}


@_command
def _put(args, client: Client, out: TextIO) -> int:
    options = _put_options(args)
    if args.from_file is not None:
        if args.body is not None:
            raise _Usage("give a BODY or --from-file, not both")
        return _put_file(args, client, out, options)
    if args.tube is None or args.body is None:
        raise _Usage("put needs a TUBE and a BODY (- reads it from stdin), or --from-file")
    body = sys.stdin.read() if args.body == "-" else args.body
    job_id = client.put(args.tube, body, **options)
    if _json(args):
        render.print_json(out, {"job_id": job_id, **({"duplicate": True}
                                                      if job_id.duplicate else {})})
    else:
        out.write(job_id + "\n")
        if job_id.duplicate:  # stdout stays the id alone, for $(allq put ...)
            sys.stderr.write(f"allq: unique key {args.unique_key!r} is held by live job "
                             f"{job_id}: nothing stored\n")
    return EXIT_OK


def _file_jobs(path: str) -> Iterator[dict]:
    """The jobs of a JSON lines file: each line a ``NewJob`` object or a JSON string
    (a body); blank lines are skipped."""
    stream = sys.stdin if path == "-" else open(path, encoding="utf-8")
    try:
        for number, line in enumerate(stream, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except ValueError as e:
                raise _Usage(f"{path} line {number}: not JSON ({e.msg})") from None
            if isinstance(item, str):
                item = {"body": item}
            if not isinstance(item, dict):
                raise _Usage(f"{path} line {number}: a job must be a JSON object or string")
            yield item
    finally:
        if stream is not sys.stdin:
            stream.close()


def _count_lines(path: str) -> int | None:
    if path == "-":
        return None
    with open(path, "rb") as f:
        return sum(1 for line in f if line.strip())


def _put_file(args, client: Client, out: TextIO, options: dict) -> int:
    total = _count_lines(args.from_file)
    ids: list = []
    failures = 0
    batch: list[dict] = []
    with render.progress(sys.stderr, enabled=_progress_wanted(args)) as bar:
        task = bar.add_task("put", total=total)

        def send() -> None:
            nonlocal failures
            try:
                ids.extend(client.put_many(batch, tube=args.tube, **options))
            except BatchError as e:
                failures += sum(isinstance(r, AllQError) for r in e.results)
                ids.extend(e.results)
            bar.advance(task, len(batch))
            batch.clear()

        for job in _file_jobs(args.from_file):
            batch.append(job)
            if len(batch) == BULK_BATCH:
                send()
        if batch:
            send()
    stored = [job_id for job_id in ids if isinstance(job_id, str)]
    duplicates = [index for index, job_id in enumerate(ids)
                  if isinstance(job_id, str) and job_id.duplicate]
    if _json(args):
        render.print_json(out, {"put": len(stored) - len(duplicates), "failed": failures,
                                "job_ids": [job_id if isinstance(job_id, str) else None
                                            for job_id in ids],
                                **({"duplicates": duplicates} if duplicates else {})})
    else:
        out.write(f"put {len(stored) - len(duplicates)} jobs from {args.from_file}"
                  + (f" ({len(duplicates)} duplicates of live unique keys)"
                     if duplicates else "") + "\n")
    if failures:
        first = next(r for r in ids if isinstance(r, AllQError))
        return _fail(f"{failures} of {len(ids)} jobs failed (first: {first.code}: "
                     f"{first.message})")
    return EXIT_OK


@_command
def _get(args, client: Client, out: TextIO) -> int:
    jobs = client.get_many(args.tube, args.count, wait=args.wait, delete=args.delete)
    if _json(args):
        render.print_json(out, [render.job_dict(job) for job in jobs])
    elif not jobs:
        sys.stderr.write(f"no job ready in {args.tube}\n")
    else:
        out.write("\n".join(render.job_text(job) for job in jobs) + "\n")
    return EXIT_OK


@_command
def _done(args, client: Client, out: TextIO) -> int:
    if len(args.job_ids) == 1:
        client.done(args.job_ids[0])
        ids = list(args.job_ids)
    else:
        ids = client.done_many(args.job_ids)
    _said(args, out, "done", ids)
    return EXIT_OK


def _said(args, out: TextIO, action: str, ids: list[str], **extra: Any) -> None:
    if _json(args):
        render.print_json(out, {"action": action, "job_ids": ids, **extra})
    else:
        for job_id in ids:
            out.write(f"{action} {job_id}\n")


@_command
def _peek(args, client: Client, out: TextIO) -> int:
    job = client.peek(args.tube, buried=args.buried, offset=args.offset)
    if _json(args):
        render.print_json(out, None if job is None else render.job_dict(job))
    elif job is None:
        sys.stderr.write(f"no {'buried' if args.buried else 'ready'} job in {args.tube}\n")
    else:
        out.write(render.job_text(job) + "\n")
    return EXIT_OK


@_command
def _kick(args, client: Client, out: TextIO) -> int:
    if (args.job_id is None) == (args.tube is None):
        raise _Usage("kick needs a JOB_ID or --tube TUBE")
    if args.job_id is not None:
        client.kick(args.job_id)
        ids = [args.job_id]
    else:
        ids = client.kick_tube(args.tube, args.count)
    _said(args, out, "kick", ids)
    return EXIT_OK


@_command
def _bury(args, client: Client, out: TextIO) -> int:
    client.bury(args.job_id, error=args.error)
    _said(args, out, "bury", [args.job_id])
    return EXIT_OK


@_command
def _release(args, client: Client, out: TextIO) -> int:
    client.release(args.job_id, delay=args.delay)
    _said(args, out, "release", [args.job_id])
    return EXIT_OK


@_command
def _touch(args, client: Client, out: TextIO) -> int:
    client.touch(args.job_id)
    _said(args, out, "touch", [args.job_id])
    return EXIT_OK


@_command
def _dump(args, client: Client, out: TextIO) -> int:
    """Take a tube's ready jobs out into JSON lines that ``allq put --from-file``
    reads back. Each batch is written and flushed before it is deleted (or, with
    ``--keep``, released), so a failure loses nothing: at worst a job is both in
    the file and still queued."""
    target = out if args.output in (None, "-") else open(args.output, "a", encoding="utf-8")
    totals = render.tube_totals(client.stats()).get(args.tube)
    total = None if totals is None else totals["ready"]
    if args.limit is not None:
        total = args.limit if total is None else min(total, args.limit)
    dumped = 0
    try:
        with render.progress(sys.stderr, enabled=_progress_wanted(args)) as bar:
            task = bar.add_task(f"dump {args.tube}", total=total)
            while args.limit is None or dumped < args.limit:
                count = BULK_BATCH if args.limit is None else min(BULK_BATCH,
                                                                  args.limit - dumped)
                jobs = client.get_many(args.tube, count)
                if not jobs:
                    break
                for job in jobs:
                    line = {"tube": job.tube, "body": job.body}
                    if job.ttl is not None:
                        line["ttl"] = job.ttl
                    if job.priority is not None:
                        line["priority"] = job.priority
                    target.write(json.dumps(line, ensure_ascii=False) + "\n")
                target.flush()
                if target is not out:
                    os.fsync(target.fileno())
                ids = [job.id for job in jobs]
                if args.keep:
                    for job_id in ids:
                        client.release(job_id)
                else:
                    client.done_many(ids)
                dumped += len(jobs)
                bar.advance(task, len(jobs))
    finally:
        if target is not out:
            target.close()
    verb = "copied" if args.keep else "took"
    where = "" if target is out else f" to {args.output}"
    sys.stderr.write(f"{verb} {dumped} jobs of {args.tube}{where}\n")
    return EXIT_OK


# -- tubes and servers ------------------------------------------------------------------


@_command
def _stats(args, client: Client, out: TextIO) -> int:
    if _json(args):
        render.print_json(out, client.stats())
        return EXIT_OK
    console = render.console(out)
    if not args.watch:
        console.print(render.stats_table(client.stats()))
        return EXIT_OK
    refreshes = 0
    with Live(render.stats_table(client.stats()), console=console,
              auto_refresh=False) as live:
        try:
            while args.count is None or refreshes < args.count:
                time.sleep(args.watch)
                live.update(render.stats_table(client.stats()), refresh=True)
                refreshes += 1
        except KeyboardInterrupt:
            pass
    return EXIT_OK


@_command
def _tubes(args, client: Client, out: TextIO) -> int:
    totals = render.tube_totals(client.stats())
    if _json(args):
        render.print_json(out, totals)
    else:
        render.console(out).print(render.tubes_table(client.stats()) if totals else
                                  "no tubes")
    return EXIT_OK


@_command
def _servers(args, client: Client, out: TextIO) -> int:
    health = client.health()
    if _json(args):
        render.print_json(out, health)
    else:
        render.console(out).print(render.servers_table(health))
    return EXIT_OK if health.get("up") else EXIT_FAILED


@_command
def _throttle(args, client: Client, out: TextIO) -> int:
    tps = None if args.tps.lower() in ("off", "none", "0") else _number(args.tps)
    reply = client.throttle(args.tube, tps)
    _setting(args, out, reply, f"throttle {args.tube}: "
             + ("off" if tps is None else f"{tps:g} jobs/s"))
    return EXIT_OK


@_command
def _concurrency(args, client: Client, out: TextIO) -> int:
    reply = client.concurrency(args.tube, args.limit)
    _setting(args, out, reply, f"concurrency {args.tube}: at most {args.limit} job(s) "
             f"per concurrency key reserved at once")
    return EXIT_OK


EVENT_FIELDS = ("priority", "ttl", "delay", "expired_limit", "shard_key", "idempotency_key",
                "scope", "unmatched")


@_command
def _event(args, client: Client, out: TextIO) -> int:
    text = sys.stdin.read() if args.data == "-" else args.data
    try:
        data = json.loads(text)
    except ValueError as e:
        raise _Usage(f"DATA is not JSON ({e.msg})") from None
    if not isinstance(data, dict):
        raise _Usage("DATA must be a JSON object")
    options = {name: getattr(args, name) for name in EVENT_FIELDS
               if getattr(args, name) is not None}
    reply = client.event(data, **options)
    if _json(args):
        render.print_json(out, reply)
    else:
        out.write(f"matched {reply['matched']} tube(s)\n")
        for copy in reply["copies"]:
            out.write(f"{copy['job_id']}  {copy['tube']}\n")
    return EXIT_OK


@_command
def _interests(args, client: Client, out: TextIO) -> int:
    interests = client.interests()
    if _json(args):
        render.print_json(out, interests)
    elif not interests:
        out.write("no interests\n")
    else:
        render.console(out).print(render.interests_table(interests))
    return EXIT_OK


@_command
def _schedules(args, client: Client, out: TextIO) -> int:
    schedules = client.schedules()
    if _json(args):
        render.print_json(out, schedules)
    elif not schedules:
        out.write("no schedules\n")
    else:
        render.console(out).print(render.schedules_table(schedules))
    return EXIT_OK


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise _Usage(f"TPS must be a number or off, not {text!r}") from None


def _setting(args, out: TextIO, reply: dict, text: str) -> None:
    if _json(args):
        render.print_json(out, reply)
    else:
        servers = reply.get("servers")
        out.write(text + ("" if servers is None else f" (on {servers} server(s))") + "\n")


def _tube_switch(action: str, method: str, flag: bool):
    @_command
    def run(args, client: Client, out: TextIO) -> int:
        if action in ("drain", "undrain") and args.server is not None:
            if args.tube is not None:
                raise _Usage(f"{action} takes a TUBE or --server, not both")
            reply = client.drain_server(args.server, flag)
            _setting(args, out, reply, f"{action} server {args.server}")
            return EXIT_OK
        if args.tube is None:
            raise _Usage(f"{action} needs a TUBE")
        reply = getattr(client, method)(args.tube, flag)
        _setting(args, out, reply, f"{action} {args.tube}")
        return EXIT_OK

    return run


# -- the parser ---------------------------------------------------------------------------


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=None, metavar="URL",
                        help=f"the allq-client (several: comma-separated, for failover); "
                             f"default ${ENV_URL} or http://127.0.0.1:8090")
    common.add_argument("--json", action="store_true", help="print JSON, for scripts")
    common.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS",
                        help="how long one call may take (default 30)")
    return common


def _bulk(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--progress", dest="progress", action="store_true", default=None,
                       help="show a progress bar (default: when stderr is a terminal)")
    group.add_argument("--no-progress", dest="progress", action="store_false")


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add the queue commands to the ``allq`` parser's subcommands."""
    common = _common()

    def command(name: str, help_text: str, run) -> argparse.ArgumentParser:
        parser = commands.add_parser(name, help=help_text, parents=[common],
                                     description=help_text)
        parser.set_defaults(run=run)
        return parser

    put = command("put", "put a job (BODY, - for stdin) or every job of a JSON lines file",
                  _put)
    put.add_argument("tube", nargs="?", metavar="TUBE",
                     help="the tube (with --from-file: of lines that name none)")
    put.add_argument("body", nargs="?", metavar="BODY")
    put.add_argument("--from-file", metavar="FILE",
                     help="JSON lines: each a NewJob object or a string body (- for stdin)")
    put.add_argument("--ttl", type=float)
    put.add_argument("--delay", type=float)
    put.add_argument("--priority", type=int)
    put.add_argument("--expired-limit", dest="expired_limit", type=int)
    put.add_argument("--shard-key", dest="shard_key")
    put.add_argument("--parent-id", dest="parent_id")
    put.add_argument("--idempotency-key", dest="idempotency_key")
    put.add_argument("--unique-key", dest="unique_key",
                     help="store nothing while a job of the tube with this key is live")
    put.add_argument("--concurrency-key", dest="concurrency_key",
                     help="jobs sharing it are reserved at most the tube's limit at once")
    _bulk(put)

    get = command("get", "reserve the next job(s) of a tube", _get)
    get.add_argument("tube", metavar="TUBE")
    get.add_argument("--count", type=int, default=1)
    get.add_argument("--wait", type=float, default=0, metavar="SECONDS",
                     help="wait up to this long for a job (long poll)")
    get.add_argument("--delete", action="store_true", help="take it: delete it at once")

    done = command("done", "finish reserved jobs (or delete jobs in any state)", _done)
    done.add_argument("job_ids", nargs="+", metavar="JOB_ID")

    peek = command("peek", "show the next ready (or buried) job without reserving it",
                   _peek)
    peek.add_argument("tube", metavar="TUBE")
    peek.add_argument("--buried", action="store_true")
    peek.add_argument("--offset", type=int, default=0)

    kick = command("kick", "make a buried job ready again, or up to COUNT of a tube's", _kick)
    kick.add_argument("job_id", nargs="?", metavar="JOB_ID")
    kick.add_argument("--tube")
    kick.add_argument("--count", type=int, default=1)

    bury = command("bury", "bury a reserved job", _bury)
    bury.add_argument("job_id", metavar="JOB_ID")
    bury.add_argument("--error", help="why: kept as the job's last error")

    release = command("release", "give a reserved job back", _release)
    release.add_argument("job_id", metavar="JOB_ID")
    release.add_argument("--delay", type=float, default=0, metavar="SECONDS")

    touch = command("touch", "restart a reserved job's ttl", _touch)
    touch.add_argument("job_id", metavar="JOB_ID")

    stats = command("stats", "per-tube counts over every server", _stats)
    stats.add_argument("--watch", nargs="?", type=float, const=2.0, default=None,
                       metavar="SECONDS", help="refresh in place every SECONDS (2)")
    stats.add_argument("--count", type=int, default=None, help=argparse.SUPPRESS)

    command("tubes", "the tubes and their ready and buried jobs", _tubes)
    command("servers", "each server's health, as the allq-client sees it "
            "(exit 1 when none is up)", _servers)

    throttle = command("throttle", "at most TPS jobs per second from a tube (off: none)",
                       _throttle)
    throttle.add_argument("tube", metavar="TUBE")
    throttle.add_argument("tps", metavar="TPS")

    concurrency = command("concurrency", "at most LIMIT jobs of one concurrency key of a "
                          "tube reserved at once (default 1)", _concurrency)
    concurrency.add_argument("tube", metavar="TUBE")
    concurrency.add_argument("limit", metavar="LIMIT", type=int)

    event = command("event", "publish an event: a copy into every tube whose interests "
                    "match DATA (a JSON object, - for stdin)", _event)
    event.add_argument("data", metavar="DATA")
    event.add_argument("--priority", type=int)
    event.add_argument("--ttl", type=float)
    event.add_argument("--delay", type=float)
    event.add_argument("--expired-limit", dest="expired_limit", type=int)
    event.add_argument("--shard-key", dest="shard_key")
    event.add_argument("--idempotency-key", dest="idempotency_key")
    event.add_argument("--scope", choices=("any", "all"))
    event.add_argument("--unmatched", choices=("drop", "error"),
                       help="error: fail (exit 1) when no tube is interested")

    command("interests", "every tube's interests (interest routing)", _interests)
    command("schedules", "the recurring schedules, with their next firing", _schedules)

    for action, method, flag, text in (
            ("pause", "pause", True, "stop handing out a tube's jobs"),
            ("unpause", "pause", False, "hand out a paused tube's jobs again"),
            ("drain", "drain", True, "make a tube (or --server) refuse new jobs"),
            ("undrain", "drain", False, "let a tube (or --server) take new jobs again")):
        parser = command(action, text, _tube_switch(action, method, flag))
        parser.add_argument("tube", nargs="?" if "drain" in action else None, metavar="TUBE")
        if "drain" in action:
            parser.add_argument("--server", metavar="SERVER",
                                help="a server id or host:port instead of a tube")

    dump = command("dump", "take a tube's ready jobs out as JSON lines "
                   "(allq put --from-file reads them back)", _dump)
    dump.add_argument("tube", metavar="TUBE")
    dump.add_argument("-o", "--output", metavar="FILE", help="append to FILE (default stdout)")
    dump.add_argument("--keep", action="store_true",
                      help="release the jobs instead of deleting them (a copy)")
    dump.add_argument("--limit", type=int, default=None, help="at most this many jobs")
    _bulk(dump)
