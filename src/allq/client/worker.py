"""A worker process of ``twistd allq-client --workers N``: ``python -m allq.client.worker``.

The primary (the twistd process) starts these with its own settings plus
``--worker-index``; see :mod:`allq.client.workers` for what they share. Log
lines go to stderr, where the primary picks them up; stdin and stdout are the
control channel, so nothing else may write to stdout.
"""

import sys

from twisted.logger import formatEvent, globalLogBeginner
from twisted.python import usage

from allq.client.tap import Options, make_worker_service


class WorkerOptions(Options):
    optParameters = [
        ["worker-index", None, None, "this worker's number (1 to N-1), given by the primary"],
    ]


def _stderr_observer(event: dict) -> None:
    """One event a line (the primary adds time and source); failures with their
    traceback."""
    text = formatEvent(event)
    failure = event.get("log_failure")
    if failure is not None:
        text += "\n" + failure.getTraceback()
    sys.stderr.write(text.rstrip("\n") + "\n")
    sys.stderr.flush()


def main(argv: list[str] | None = None) -> None:
    from twisted.internet import reactor

    config = WorkerOptions()
    try:
        config.parseOptions(sys.argv[1:] if argv is None else argv)
        index = int(config["worker-index"] or 0)
    except (usage.UsageError, ValueError) as e:
        raise SystemExit(f"allq-client worker: {e}")
    globalLogBeginner.beginLoggingTo([_stderr_observer], redirectStandardIO=False)
    service = make_worker_service(config, index, reactor)
    reactor.callWhenRunning(service.startService)
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.run()


if __name__ == "__main__":
    main()
