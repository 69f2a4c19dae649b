"""Log observers for ``twistd --logger``: structured logs for log pipelines.

``twistd -n --logger allq.logs.json_observer allq-server ...`` writes one JSON
object per line on stdout, every event field included (``job_id`` on the job
events that ``--log-jobs`` turns on, so one job can be followed from the client
to the server that holds it). ``twist`` already logs JSON when stdout is not a
terminal.
"""

import sys

from twisted.logger import ILogObserver, jsonFileLogObserver


def json_observer() -> ILogObserver:
    """A JSON-lines observer on stdout (no record separator, one event a line)."""
    return jsonFileLogObserver(sys.stdout, recordSeparator="")
