"""How the queue commands show things: tables, jobs, progress bars (with ``rich``).

``rich`` renders the tables, the in-place refresh of ``allq stats --watch`` and
the progress bars of bulk commands; it is one well-kept library for the three,
degrades to plain text when the output is not a terminal, and saves us terminal
escape handling. Nothing here calls the network.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from allq.worker import Job

#: The per-tube counts summed over servers, in column order.
TUBE_COUNTS = ("ready", "reserved", "delayed", "buried", "parents")


def console(out: TextIO) -> Console:
    """A console writing to ``out`` (no colours or width games when it is not a terminal)."""
    return Console(file=out, highlight=False, soft_wrap=True)


def print_json(out: TextIO, value: Any) -> None:
    out.write(json.dumps(value, ensure_ascii=False) + "\n")


def job_dict(job: Job) -> dict:
    """A job as ``--json`` prints it (the REST shape)."""
    reply = {"id": job.id, "tube": job.tube, "body": job.body, "ttl": job.ttl,
             "priority": job.priority, "expireds": job.expireds, "releases": job.releases}
    if job.error is not None:
        reply["error"] = job.error
    return reply


def job_text(job: Job) -> str:
    """A job for people: its id and counters, its last error, then its body."""
    lines = [f"{job.id}  tube={job.tube} priority={job.priority} ttl={job.ttl:g} "
             f"releases={job.releases} expireds={job.expireds}"
             if job.ttl is not None else f"{job.id}  tube={job.tube}"]
    if job.error is not None:
        lines.append("last error:")
        lines += ["  " + line for line in job.error.splitlines()]
    lines.append(job.body)
    return "\n".join(lines)


def tube_totals(servers: Sequence[dict]) -> dict[str, dict]:
    """Each tube's counts and rates summed over the servers, with its flags."""
    tubes: dict[str, dict] = {}
    for server in servers:
        for entry in server.get("stats", ()):
            total = tubes.setdefault(entry["tube"], {
                **dict.fromkeys(TUBE_COUNTS, 0), "tps": 0.0, "paused": False,
                "draining": False, "throttle": 0.0, "servers": 0})
            for name in TUBE_COUNTS:
                total[name] += int(entry.get(name, 0))
            total["tps"] += float(entry.get("tps", 0))
            total["paused"] |= bool(entry.get("paused"))
            total["draining"] |= bool(entry.get("draining"))
            total["throttle"] += float(entry.get("throttle_size") or 0)
            total["servers"] += 1
    return dict(sorted(tubes.items()))


def _flags(total: dict) -> str:
    flags = [name for name in ("paused", "draining") if total[name]]
    if total["throttle"]:
        flags.append(f"throttle {total['throttle']:g}/s")
    return ", ".join(flags)


def stats_table(servers: Sequence[dict]) -> Table:
    """The tubes' counts over the federation, then one line per server."""
    table = Table(title=f"allq: {len(servers)} server(s)", title_justify="left")
    table.add_column("tube")
    for name in TUBE_COUNTS:
        table.add_column(name, justify="right")
    table.add_column("done/s", justify="right")
    table.add_column("settings")
    for tube, total in tube_totals(servers).items():
        table.add_row(tube, *(f"{total[name]:,}" for name in TUBE_COUNTS),
                      f"{total['tps']:.1f}", _flags(total))
    if not servers:
        table.caption = "no server answered"
    else:
        table.caption = "  ".join(
            f"{server.get('server_name', '?')}: put {server.get('job_put', 0):,} "
            f"got {server.get('job_get', 0):,}"
            + (" DRAINING" if server.get("draining") else "")
            + (" DISK FULL" if server.get("disk_full") else "")
            + _replication(server)
            for server in servers)
    return table


def _replication(server: dict) -> str:
    """A server's replication in a few words (docs/replication.md): its stream to its
    backup, and the replicas it holds as a backup."""
    words = ""
    stream = server.get("replication")
    if isinstance(stream, dict):
        words += (f" replica {stream.get('peer', '?')} {str(stream.get('state', '?')).upper()}"
                  f" lag {stream.get('lag_records', 0):,}")
    for replica in server.get("replicas") or ():
        words += f" backup of {replica.get('primary', '?')} ({replica.get('state', '?')})"
    return words


def tubes_table(servers: Sequence[dict]) -> Table:
    table = Table(box=None, show_edge=False)
    table.add_column("tube")
    table.add_column("ready", justify="right")
    table.add_column("buried", justify="right")
    for tube, total in tube_totals(servers).items():
        table.add_row(tube, f"{total['ready']:,}", f"{total['buried']:,}")
    return table


def servers_table(health: dict) -> Table:
    table = Table(title=f"{health.get('up', 0)} of {health.get('total', 0)} server(s) up",
                  title_justify="left")
    for name in ("address", "server id", "state", "why"):
        table.add_column(name)
    for server in health.get("servers", ()):
        state = "up" if server.get("up") else "DOWN"
        if server.get("draining"):
            state += ", draining"
        if server.get("disk_full"):
            state += ", disk full"
        table.add_row(server.get("address", "?"), server.get("server_id") or "-", state,
                      server.get("reason") or "")
    # The servers failed over to their backups: their jobs, served there.
    for link in health.get("replica_links", ()):
        state = "up" if link.get("up") else "DOWN"
        table.add_row(link.get("address", "?"), link.get("server_id") or "-",
                      f"{state}, served by backup {link.get('served_by') or '?'}",
                      f"failed over (epoch {link.get('epoch', '?')})")
    return table


def interests_table(interests: Sequence[dict]) -> Table:
    """``allq interests``: each tube and what it listens to."""
    table = Table(box=None, show_edge=False)
    table.add_column("tube")
    table.add_column("interests")
    for entry in interests:
        patterns = entry.get("interests")
        shown = ("* (every event)" if patterns == "*" else
                 ", ".join(f"{field}: {pattern}" for field, pattern in patterns.items()))
        table.add_row(entry.get("tube", "?"), shown)
    return table


def schedules_table(schedules: Sequence[dict]) -> Table:
    """``allq schedules``: when each fires, where it puts, how it went."""
    table = Table(box=None, show_edge=False)
    for name in ("name", "tube", "when", "next run", "fired", "missed"):
        table.add_column(name, justify="right" if name in ("fired", "missed") else "left",
                         no_wrap=name != "when")
    for schedule in schedules:
        when = (f"every {schedule['every']:g}s" if schedule.get("every") is not None
                else f"{schedule.get('cron')} ({schedule.get('timezone')})")
        next_run = "paused" if schedule.get("paused") else _local_time(
            schedule.get("next_run_local"))
        table.add_row(schedule.get("name", "?"), schedule.get("tube", "?"), when, next_run,
                      f"{schedule.get('fired', 0):,}", f"{schedule.get('missed_total', 0):,}")
    return table


def _local_time(iso: str | None) -> str:
    """``2026-12-04T09:00:00+01:00`` as ``2026-12-04 09:00 +0100`` (fits a table)."""
    if not iso:
        return "-"
    try:
        return datetime.fromisoformat(iso).strftime("%Y-%m-%d %H:%M %z")
    except ValueError:
        return iso


def progress(out: TextIO, *, enabled: bool) -> Progress:
    """A progress bar on ``out`` (a no-op display when ``enabled`` is false)."""
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeRemainingColumn(), console=console(out), disable=not enabled,
                    transient=False)


def lines(values: Iterable[str], out: TextIO) -> None:
    for value in values:
        out.write(f"{value}\n")
