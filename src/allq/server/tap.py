"""``twistd allq-server``: options and service assembly. Wiring only.

:func:`makeService` builds the queue core, the deadline timer and the listening
endpoint under one :class:`MultiService`; with ``--data-dir`` it first reads the
directory back into the core (:mod:`allq.server.recovery`) and adds the journal
(:mod:`allq.server.journal`) as the first service, so it stops last. Keys are
loaded here, at start-up; without any, the server refuses to start and prints a
freshly generated set and how to use it (AllQueue's ``CONFIG_ONLY=true`` prints
it and exits 0).

The wiring builds small holders first (:class:`ServerIdentity`,
:class:`DiskFullSwitch`, :class:`FatalStop`), then the objects that use them,
then connects them, as the magic-wormhole mailbox ``server_tap.py`` does: no
one-element lists, no forward lambdas.
"""

import atexit
import base64
import hashlib
import os
import re
import socket
import sys

import attrs
from nacl.public import PublicKey

from twisted.application.service import MultiService
from twisted.logger import Logger
from twisted.python import usage

from allq import __version__
from allq.config import positive_float, positive_int, resolve
from allq.core.idempotency import IdempotencyKeys
from allq.core.schedules import Schedules
from allq.core.interests import InterestTable
from allq.core.queue import (
    DEFAULT_EXPIRED_LIMIT,
    DEFAULT_FAIR_PREFIX,
    DEFAULT_MAX_JOB_SIZE,
    DEFAULT_TTL,
    Queue,
    QueueConfig,
)
from allq.listening import PortSetting, listening_service
from allq.keyfiles import (
    ANY_CLIENT_SWITCH,
    AUTHORIZED_KEYS_FILE,
    CLIENT_PUBLIC_FILE,
    ENV_AUTHORIZED,
    KeyConfigError,
    MissingKeys,
)
from allq.server import allqueue_import
from allq.server.dispatch import Dispatcher
from allq.server.keys import load_server_keys
from allq.server.journal import DEFAULT_FSYNC, FsyncPolicy, Journal
from allq.server.metrics import ServerMetrics, metrics_site
from allq.server.keyreload import AuthorizedKeysWatcher
from allq.server.protocol import DEFAULT_IDLE_TIMEOUT, ServerFactory
from allq.server.readonly import (
    STARTING_ACTIONS,
    STRICT_ACTIONS,
    ReadOnlyDispatcher,
    replica_unavailable_error,
    starting_error,
)
from allq.server.held_replies import HeldRepliesProtocol
from allq.server.replication import (
    DEFAULT_MAX_LAG,
    DEFAULT_MODE,
    MODES,
    DEFAULT_TIMEOUT as DEFAULT_REPLICA_TIMEOUT,
    Replicator,
)
from allq.server.replica_link import HoldUntilConfirmed, backup_connector, parse_peer
from allq.server.replication_files import (
    ReplicationFileError,
    fenced_id,
    read_epoch,
    read_server_id,
    set_aside,
    write_epoch,
)
from allq.server.replica_host import ReplicaHost
from allq.server.recovery import (
    DataDirError,
    recover,
    restore_interests,
    restore_keys,
    restore_queue,
    restore_schedules,
)
from allq.server.schedules import ScheduleService
from allq.server.timer import DeadlineTimer
from allq.vocabulary import SERVER_ID
from allq.wire.crypto import Authenticator
from allq.wire.keys import ClientKeys, decode_key, suggested_setup_text
from allq.wire.messages import max_line_length

_log = Logger()
#: Pending connections the kernel queues for us (Twisted's default, 50, makes a
#: burst of 2,000 connects take seconds: SYNs are dropped and retried).
DEFAULT_BACKLOG = 1024
#: Endpoint types whose description takes a ``backlog`` argument.
_BACKLOG_ENDPOINTS = ("tcp:", "tcp6:", "unix:")


class Options(usage.Options):
    """Options of ``twistd allq-server``; each also has an environment variable."""

    environ = os.environ  # tests replace this

    optFlags = [
        ["log-jobs", None, "log one event per job operation, with its job_id "
                           "[env ALLQ_LOG_JOBS=true]"],
        ["allow-any-client", None, "accept any client key that completes the handshake, "
                                   "as AllQueue did: anyone holding the server's public key "
                                   "may use this server [env ALLQ_AUTHORIZED_KEYS=*]"],
        ["import-allqueue", None, "import the jobs AllQueue left in the data directory "
                                  "(its ready/, delayed/, ... files) into the journal at "
                                  "start, as `allq import DIR` does; without it the server "
                                  "refuses to start on them [env ALLQ_IMPORT_ALLQUEUE=true]"],
    ]

    optParameters = [
        ["listen", None, None,
         "Twisted endpoint to listen on [default: tcp:5555; env SERVER_PORT sets the port, "
         "ALLQ_LISTEN the endpoint]"],
        ["keys", None, None,
         "directory holding server.key and authorized_keys (made by `allq keys generate`) "
         "[env ALLQ_KEYS_DIR]"],
        ["authorized-keys", None, None,
         "file of client public keys to accept, one per line [env ALLQ_AUTHORIZED_KEYS_FILE]"],
        ["expiry-limit", None, None,
         f"ttl expiries after which a job is buried [default: {DEFAULT_EXPIRED_LIMIT}; "
         "env ALLQ_EXPIRY_LIMIT]"],
        ["max-job-size", None, None,
         f"largest job body in bytes [default: {DEFAULT_MAX_JOB_SIZE}; env ALLQ_MAX_JOB_SIZE]"],
        ["max-line-length", None, None,
         "longest encrypted line accepted [default: enough for --max-job-size; "
         "env ALLQ_MAX_LINE_LENGTH]"],
        ["default-ttl", None, None,
         f"ttl in seconds of jobs put without one [default: {DEFAULT_TTL:.0f}; env DEFAULT_TTL]"],
        ["server-id", None, None,
         "this server's id, the prefix of its job ids [default: derived from host name and "
         "port; env ALLQ_SERVER_ID]"],
        ["data-dir", None, None,
         "keep jobs in a journal in this directory so they survive restarts [default: "
         "memory only; env ALLQ_DATA_DIR, or SERIALIZER_DIR (default /tmp/allq) when "
         "SERIALIZE=true]"],
        ["fsync", None, None,
         f"with --data-dir: always (before each reply), interval:MS (at most every MS ms) "
         f"or never [default: {DEFAULT_FSYNC}; env ALLQ_FSYNC]"],
        ["max-jobs", None, None,
         "the most jobs this server holds; puts beyond are refused with 'full' "
         "[default: no limit; env ALLQ_MAX_JOBS]"],
        ["fair-prefix", None, None,
         f"tubes named with this prefix are fair queues [default: {DEFAULT_FAIR_PREFIX}; "
         "env FQ_PREFIX]"],
        ["fair-suffix", None, None,
         "if set, tubes named with this suffix are fair queues instead of the prefix rule "
         "[env FQ_SUFFIX]"],
        ["backlog", None, None,
         f"listen backlog: connections the kernel queues before we accept them, unless "
         f"--listen names one [default: {DEFAULT_BACKLOG}; env ALLQ_BACKLOG]"],
        ["idle-timeout", None, None,
         f"seconds an authenticated connection may send nothing before it is closed; 0: "
         f"never [default: {DEFAULT_IDLE_TIMEOUT:.0f}; env ALLQ_IDLE_TIMEOUT]"],
        ["metrics", None, None,
         "Twisted endpoint serving Prometheus metrics over plain HTTP, e.g. "
         "tcp:9555:interface=127.0.0.1 [default: off; env ALLQ_METRICS]"],
        ["replica", None, None,
         "HOST:PORT of the allq-server that keeps a live copy of this server's jobs "
         "(its backup; needs --data-dir) [default: none; env ALLQ_REPLICA]"],
        ["replica-server-key", None, None,
         "the backup's public server key (base64) or a file holding it [default: this "
         "server's own public key, as for servers of one key directory; "
         "env ALLQ_REPLICA_SERVER_KEY]"],
        ["replication", None, None,
         "strict (refuse changes while the backup is unreachable) or available (carry "
         "on alone, re-sync it later) [default: available; env ALLQ_REPLICATION]"],
        ["replica-timeout", None, None,
         "seconds the backup may take to acknowledge before it is dropped and re-synced; "
         "also how long start-up waits for it in available mode [default: 2; "
         "env ALLQ_REPLICA_TIMEOUT]"],
        ["replica-max-lag", None, None,
         "bytes the backup may leave unacknowledged before it is dropped and re-synced "
         "[default: 67108864 (64 MiB); env ALLQ_REPLICA_MAX_LAG]"],
    ]

    def postOptions(self) -> None:
        env = self.environ
        listen = resolve(self, "listen", env, "ALLQ_LISTEN")
        if listen is None:
            port = env.get("SERVER_PORT") or "5555"
            if not (re.fullmatch(r"[0-9]{1,5}", port) and 0 < int(port) < 65536):
                # Name the variable: --listen takes an endpoint, not a port number.
                raise usage.UsageError(
                    f"SERVER_PORT must be a port number (1-65535), got {port[:40]!r}")
            listen = f"tcp:{int(port)}"
        self["listen"] = listen
        self["keys"] = resolve(self, "keys", env, "ALLQ_KEYS_DIR")
        self["authorized-keys"] = resolve(self, "authorized-keys", env, "ALLQ_AUTHORIZED_KEYS_FILE")
        self["expiry-limit"] = positive_int(
            "expiry-limit", resolve(self, "expiry-limit", env, "ALLQ_EXPIRY_LIMIT") or DEFAULT_EXPIRED_LIMIT)
        self["max-job-size"] = positive_int(
            "max-job-size", resolve(self, "max-job-size", env, "ALLQ_MAX_JOB_SIZE") or DEFAULT_MAX_JOB_SIZE)
        line = resolve(self, "max-line-length", env, "ALLQ_MAX_LINE_LENGTH")
        self["max-line-length"] = (
            max_line_length(self["max-job-size"]) if line is None
            else positive_int("max-line-length", line, minimum=1024)
        )
        self["default-ttl"] = positive_float(
            "default-ttl", resolve(self, "default-ttl", env, "DEFAULT_TTL") or DEFAULT_TTL)
        server_id = resolve(self, "server-id", env, "ALLQ_SERVER_ID")
        if server_id is not None and not SERVER_ID.fullmatch(server_id):
            raise usage.UsageError(
                "--server-id must be 1-64 characters of letters, digits, '_' and '-'")
        self["server-id"] = server_id
        data_dir = resolve(self, "data-dir", env, "ALLQ_DATA_DIR")
        if data_dir is None and env.get("SERIALIZE") == "true":  # exactly "true", as AllQueue
            data_dir = env.get("SERIALIZER_DIR") or "/tmp/allq"
        if data_dir is not None and os.path.exists(data_dir) and not os.path.isdir(data_dir):
            raise usage.UsageError(f"--data-dir {data_dir[:80]!r} is not a directory")
        self["data-dir"] = data_dir
        self["metrics"] = resolve(self, "metrics", env, "ALLQ_METRICS")
        self["backlog"] = positive_int(
            "backlog", resolve(self, "backlog", env, "ALLQ_BACKLOG") or DEFAULT_BACKLOG)
        idle = resolve(self, "idle-timeout", env, "ALLQ_IDLE_TIMEOUT")
        self["idle-timeout"] = (
            DEFAULT_IDLE_TIMEOUT if idle is None
            else 0.0 if _is_zero(idle) else positive_float("idle-timeout", idle))
        self["log-jobs"] = bool(self["log-jobs"]) or env.get("ALLQ_LOG_JOBS", "") == "true"
        self["allow-any-client"] = bool(self["allow-any-client"])
        self["import-allqueue"] = (bool(self["import-allqueue"])
                                   or env.get("ALLQ_IMPORT_ALLQUEUE", "") == "true")
        max_jobs = resolve(self, "max-jobs", env, "ALLQ_MAX_JOBS")
        self["max-jobs"] = None if max_jobs is None else positive_int("max-jobs", max_jobs)
        self["fair-prefix"] = resolve(self, "fair-prefix", env, "FQ_PREFIX") or DEFAULT_FAIR_PREFIX
        self["fair-suffix"] = resolve(self, "fair-suffix", env, "FQ_SUFFIX")
        self._replication_options(env)
        fsync = resolve(self, "fsync", env, "ALLQ_FSYNC") or DEFAULT_FSYNC
        try:
            self["fsync"] = str(FsyncPolicy.parse(fsync))  # normalized: "interval:50"
        except ValueError as e:
            raise usage.UsageError(f"--fsync {e}") from None


    def _replication_options(self, env) -> None:
        replica = resolve(self, "replica", env, "ALLQ_REPLICA")
        if replica is not None:
            try:
                parse_peer(replica)
            except ValueError as e:
                raise usage.UsageError(f"--replica {e}") from None
            if self["data-dir"] is None:
                raise usage.UsageError(
                    "--replica needs --data-dir: the journal is what streams to the backup")
        self["replica"] = replica
        self["replica-server-key"] = resolve(self, "replica-server-key", env,
                                             "ALLQ_REPLICA_SERVER_KEY")
        mode = resolve(self, "replication", env, "ALLQ_REPLICATION") or DEFAULT_MODE
        if mode not in MODES:
            raise usage.UsageError(
                f"--replication must be strict or available, got {mode[:40]!r}")
        self["replication"] = mode
        timeout = resolve(self, "replica-timeout", env, "ALLQ_REPLICA_TIMEOUT")
        self["replica-timeout"] = (DEFAULT_REPLICA_TIMEOUT if timeout is None
                                   else positive_float("replica-timeout", timeout))
        lag = resolve(self, "replica-max-lag", env, "ALLQ_REPLICA_MAX_LAG")
        self["replica-max-lag"] = (DEFAULT_MAX_LAG if lag is None
                                   else positive_int("replica-max-lag", lag, minimum=1024))


def _is_zero(text: str) -> bool:
    try:
        return float(text) == 0
    except ValueError:
        return False


def derived_server_id(host_name: str, port: int) -> str:
    """A stable id for a server: the same host name and port give the same id,
    two servers on one host differ by port. URL-safe, 10 characters."""
    digest = hashlib.sha256(f"{host_name}:{port}".encode()).digest()
    return base64.urlsafe_b64encode(digest)[:10].decode("ascii")


@attrs.define
class ServerIdentity:
    """This server's id: configured, or derived from the bound port once it listens."""

    value: str | None

    def get(self) -> str | None:
        return self.value

    def listening(self, port) -> None:
        if self.value is None:
            self.value = derived_server_id(socket.gethostname(), port.getHost().port)


class DiskFullSwitch:
    """Between the journal (and the replicator) and the server factory: while the
    data directory is full, the factory dispatches through a
    :class:`ReadOnlyDispatcher`; while a strict primary's backup is unreachable,
    through one refusing changes with ``replica_unavailable``; while a primary
    starts, through one refusing all but stats and its backup role."""

    def __init__(self) -> None:
        self.full = False
        self.replica_down = False
        self.starting = False
        self._factory: ServerFactory | None = None
        self._dispatcher = None

    def connect(self, factory: ServerFactory) -> None:
        self._factory = factory
        self._dispatcher = factory.dispatcher
        self.set(self.full)

    def is_full(self) -> bool:
        return self.full

    def set(self, full: bool) -> None:
        """The journal's ``on_disk_full`` hook."""
        self.full = full
        self._apply()

    def set_replica_down(self, down: bool) -> None:
        """The replicator's ``on_refusing`` hook."""
        self.replica_down = down
        self._apply()

    def set_starting(self, starting: bool) -> None:
        """A primary's start-up hold (:class:`HoldUntilConfirmed`)."""
        self.starting = starting
        self._apply()

    def _apply(self) -> None:
        if self._factory is None:
            return
        dispatcher = self._dispatcher
        if self.starting:
            dispatcher = ReadOnlyDispatcher(dispatcher, starting_error, STARTING_ACTIONS)
        elif self.replica_down:
            dispatcher = ReadOnlyDispatcher(dispatcher, replica_unavailable_error,
                                            STRICT_ACTIONS)
        if self.full:
            dispatcher = ReadOnlyDispatcher(dispatcher)
        self._factory.dispatcher = dispatcher


def _exit_nonzero() -> None:  # pragma: no cover - ends the process
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)


#: The exit status of a primary its backup fenced (docs/replication.md).
EXIT_FENCED = 3


def _exit_fenced() -> None:  # pragma: no cover - ends the process
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(EXIT_FENCED)


@attrs.define
class FatalStop:
    """Stops the server after a failure it cannot go on from, and makes the process
    exit with status 1 once twistd has shut down (twistd itself would exit 0)."""

    reactor: object
    at_exit: object = _exit_nonzero
    failed: bool = False

    def __call__(self) -> None:
        if not self.failed:
            self.failed = True
            atexit.register(self.at_exit)
        if self.reactor.running:
            self.reactor.stop()


def _nothing() -> None:
    pass


def with_backlog(description: str, backlog: int) -> str:
    """``description`` with ``:backlog=N`` added for TCP and UNIX endpoints that
    do not set one."""
    if description.startswith(_BACKLOG_ENDPOINTS) and "backlog=" not in description:
        return f"{description}:backlog={backlog}"
    return description


def makeService(config: Options, reactor=None) -> MultiService:
    """Assemble the server: queue core, deadline timer, encrypted listener."""
    if reactor is None:
        from twisted.internet import reactor
    environ = config.environ
    if environ.get("CONFIG_ONLY", "").lower() == "true":
        print(suggested_setup_text())
        raise SystemExit(0)

    def load_keys():
        return load_server_keys(config["keys"], config["authorized-keys"], environ,
                                allow_any_client=config["allow-any-client"])

    try:
        keys = load_keys()
    except MissingKeys as e:
        raise SystemExit(
            f"allq-server: refusing to start without keys ({e}).\n\n{suggested_setup_text()}")
    except KeyConfigError as e:
        raise SystemExit(f"allq-server: {e}")
    if keys.any_client:
        _log.warn(
            "accepting ANY client key ({switch}), as AllQueue did: anyone who knows this "
            "server's public key can use it. List the client keys instead "
            "(--authorized-keys FILE or {env}) to accept only those",
            switch=ANY_CLIENT_SWITCH, env=ENV_AUTHORIZED)

    # The holders first; the objects that use them next; then connect them.
    identity = ServerIdentity(_server_id(config))
    disk = DiskFullSwitch()
    fatal = FatalStop(reactor)

    now = reactor.seconds()
    # Ids grow from the start time in microseconds, so a restarted server
    # never reuses an id a client may still hold (nor one in its journal).
    first_id = int(now * 1_000_000)
    journal = recovered = None
    if config["data-dir"] is not None:
        _allqueue_files(config, now)
        journal, recovered = _open_data_dir(config, reactor, now, fatal, disk.set)
        first_id = max(first_id, recovered.max_id + 1)
    queue = Queue(
        QueueConfig(
            default_ttl=config["default-ttl"],
            expired_limit=config["expiry-limit"],
            max_job_size=config["max-job-size"],
            fair_prefix=config["fair-prefix"],
            fair_suffix=config["fair-suffix"],
            max_jobs=config["max-jobs"],
        ),
        first_id=first_id,
        started=now,
        on_change=None if journal is None else journal.on_change,
    )
    idempotency = IdempotencyKeys()
    schedules = Schedules()
    interests = InterestTable()
    if journal is not None:
        _restore(queue, idempotency, journal, recovered, config["data-dir"], now, reactor,
                 interests=interests)
        _restore_schedules(schedules, journal, recovered, now)
    timer = DeadlineTimer(queue, reactor)
    scheduler = ScheduleService(
        schedules, queue, reactor, idempotency,
        after_fire=_after_firing(timer, journal))
    dispatcher = Dispatcher(queue, reactor, identity.get, idempotency,
                            log_jobs=config["log-jobs"], disk_full=disk.is_full,
                            schedules=scheduler, interests=interests)
    factory = ServerFactory(
        authenticator=Authenticator(keys),
        dispatcher=dispatcher,
        clock=reactor,
        server_id=identity.get,
        max_job_size=config["max-job-size"],
        max_line_length=config["max-line-length"],
        after_frame=timer.poke,
        after_data=_nothing if journal is None else journal.commit,
        idle_timeout=config["idle-timeout"] or None,
    )
    disk.connect(factory)
    replicator = None
    if config["replica"] is not None:
        replicator = _replicator(config, keys, reactor, identity, queue, journal,
                                 idempotency, schedules, interests, disk)
        factory.protocol = HeldRepliesProtocol
        factory.replicator = replicator
        factory.welcome_extra = replicator.welcome
        dispatcher.stats_sections["replication"] = replicator.stats
    replica_host = _replica_host(config, reactor, identity, queue.config, factory, fatal, now)
    watcher = AuthorizedKeysWatcher(
        keys, load_keys, factory.set_authenticator,
        _authorized_keys_path(config), reactor, reactor=reactor)

    def listening(port) -> None:
        identity.listening(port)
        address = port.getHost()
        _log.info(
            "allq-server {version} id {server_id} listening on {host}:{port} "
            "({clients})",
            version=__version__, server_id=identity.value, host=address.host,
            port=address.port,
            clients="any client key" if keys.any_client
            else f"{len(keys.authorized)} authorized client keys",
        )

    service = MultiService()
    if journal is not None:
        # First in, last out: the journal starts before anything can change the
        # queue and is stopped (flushed, fsynced) after the listener.
        journal.setServiceParent(service)
        reactor.addSystemEventTrigger("after", "shutdown", journal.close)
    if replicator is not None:
        replicator.setServiceParent(service)
    timer.setServiceParent(service)
    scheduler.setServiceParent(service)
    replica_host.setServiceParent(service)
    watcher.setServiceParent(service)
    if replicator is not None:
        # No job served before the backup answered: a primary it replaced must not.
        HoldUntilConfirmed(replicator.ready_to_serve, disk.set_starting
                           ).setServiceParent(service)
    listening_service(reactor, with_backlog(config["listen"], config["backlog"]), factory,
                      listening,
                      setting=PortSetting("allq-server", "--listen", "SERVER_PORT")
                      ).setServiceParent(service)
    if config["metrics"] is not None:
        def metrics_listening(port) -> None:
            address = port.getHost()
            _log.info("allq-server metrics at http://{host}:{port}/metrics",
                      host=address.host, port=address.port)

        metrics = ServerMetrics(queue, reactor, identity.get, disk_full=disk.is_full,
                                replication=None if replicator is None else replicator.stats)
        listening_service(reactor, config["metrics"], metrics_site(metrics),
                          metrics_listening,
                          setting=PortSetting("allq-server", "--metrics", "ALLQ_METRICS")
                          ).setServiceParent(service)
    return service


def _server_id(config: Options) -> str | None:
    """The configured id; a fenced primary's own (its data directory's ``server-id``)
    wins. A primary must know its id before it listens (it names it to its backup):
    without --server-id it is derived from --listen's port."""
    server_id = config["server-id"]
    if config["data-dir"] is not None:
        try:
            kept = read_server_id(config["data-dir"])
        except ReplicationFileError as e:
            raise SystemExit(f"allq-server: {e}")
        if kept is not None:
            _log.info("using server id {server_id} from {directory} (this server was "
                      "fenced by its backup earlier)", server_id=kept,
                      directory=config["data-dir"])
            return kept
    if server_id is None and config["replica"] is not None:
        port = _fixed_port(config["listen"])
        if port is None:
            raise SystemExit("allq-server: --replica needs --server-id when --listen does "
                             "not name a fixed TCP port (the backup knows this server by it)")
        server_id = derived_server_id(socket.gethostname(), port)
    return server_id


def _fixed_port(listen: str) -> int | None:
    """The TCP port ``--listen`` names (``None``: another endpoint, or port 0)."""
    found = re.match(r"tcp6?:(?:port=)?([0-9]{1,5})(?::|$)", listen)
    return int(found.group(1)) or None if found else None


def _replica_key(config: Options, keys):
    """The backup's public key: --replica-server-key (base64 or a file), else ours."""
    text = config["replica-server-key"]
    if text is None:
        return keys.public
    source = "--replica-server-key"
    if os.path.isfile(text):
        try:
            with open(text, encoding="utf-8") as f:
                text, source = f.read().strip(), text
        except OSError as e:
            raise SystemExit(f"allq-server: --replica-server-key: cannot read {text}: {e}")
    try:
        return PublicKey(decode_key(text, source))
    except KeyConfigError as e:
        raise SystemExit(f"allq-server: --replica-server-key: {e}")


def _replicator(config: Options, keys, reactor, identity: ServerIdentity, queue, journal,
                idempotency, schedules, interests, disk: DiskFullSwitch) -> Replicator:
    """The stream to the backup (docs/replication.md), hooked to the journal."""
    directory = config["data-dir"]
    host, port = parse_peer(config["replica"])
    timeout = config["replica-timeout"]
    try:
        epoch = read_epoch(directory)
    except ReplicationFileError as e:
        raise SystemExit(f"allq-server: {e}")
    stop = FatalStop(reactor, at_exit=_exit_fenced)

    def fenced(epoch: int) -> None:
        new_id = fenced_id(identity.get() or "allq", epoch)
        try:
            folder = set_aside(directory, epoch, reactor.seconds(), new_id)
        except OSError as e:
            _log.critical("could not set the fenced data aside: {error}", error=e)
        else:
            _log.critical("set this server's fenced jobs aside in {folder}; it starts "
                          "again as a fresh server with id {server_id} (exit status 3)",
                          folder=folder, server_id=new_id)
        stop()

    listen_port = _fixed_port(config["listen"])
    replicator = Replicator(
        connect=backup_connector(reactor, host, port,
                                 ClientKeys(keys.secret, _replica_key(config, keys)),
                                 timeout),
        peer=config["replica"], server_id=identity.get, queue=queue, clock=reactor,
        mode=config["replication"], timeout=timeout, max_lag=config["replica-max-lag"],
        epoch=epoch,
        keep_epoch=lambda epoch, backup: write_epoch(directory, epoch, backup),
        on_refusing=disk.set_replica_down, on_fenced=fenced,
        address=None if listen_port is None else f"{socket.gethostname()}:{listen_port}",
        keys=idempotency, schedules=schedules, interests=interests)
    journal.stream_to(replicator.stream)
    _log.info("replicating to backup {peer} ({mode}, epoch {epoch})",
              peer=config["replica"], mode=config["replication"], epoch=epoch)
    return replicator


def _replica_host(config: Options, reactor, identity: ServerIdentity,
                  queue_config: QueueConfig, factory: ServerFactory, fatal: FatalStop,
                  now: float) -> ReplicaHost:
    """Make this server a backup for any primary that streams to it
    (docs/replication.md): its promoted replicas live under ``--data-dir``."""
    host = ReplicaHost(reactor, identity.get, queue_config, data_dir=config["data-dir"],
                       fsync=FsyncPolicy.parse(config["fsync"]), on_failure=fatal,
                       run_blocking=_thread_runner(reactor))
    try:
        host.load(now)
    except (DataDirError, OSError) as e:
        raise SystemExit(f"allq-server: cannot read the replicas in {config['data-dir']}: {e}")
    # Before the journal starts, the factory's dispatcher is the real one (the
    # disk-full switch wraps it later, and reaches these actions through it).
    host.install(factory.dispatcher)
    factory.choose_mode = host.choose_mode
    reactor.addSystemEventTrigger("after", "shutdown", host.close)
    return host


def _thread_runner(reactor):
    """Runs a blocking callable in the reactor's thread pool (journals' fsyncs)."""
    def run_blocking(f):
        from twisted.internet.threads import deferToThreadPool

        return deferToThreadPool(reactor, reactor.getThreadPool(), f)
    return run_blocking


def _restore_schedules(schedules: Schedules, journal: Journal, recovered, now: float) -> None:
    invalid = restore_schedules(schedules, recovered, now)
    journal.attach_schedules(schedules)
    if invalid:
        _log.warn("{count} stored schedules could not be restored (invalid records)",
                  count=invalid)
    if len(schedules):
        _log.info("restored {count} schedules", count=len(schedules))


def _after_firing(timer: DeadlineTimer, journal: Journal | None):
    """What follows a round of schedule firings: their jobs' deadlines armed, and
    their records written now (they come outside any request frame)."""
    def after() -> None:
        timer.poke()
        if journal is not None and not journal.disk_full:
            journal.commit()
    return after


def _authorized_keys_path(config: Options) -> str | None:
    """The file the authorized keys come from (``None``: the environment)."""
    if config["authorized-keys"] is not None:
        return config["authorized-keys"]
    if config["keys"] is None:
        return None
    path = os.path.join(config["keys"], AUTHORIZED_KEYS_FILE)
    return path if os.path.exists(path) else os.path.join(config["keys"], CLIENT_PUBLIC_FILE)


def _allqueue_files(config: Options, now: float) -> None:
    """Never start silently empty beside the jobs AllQueue left in the data directory:
    import them (``--import-allqueue``) or refuse, saying how."""
    directory = config["data-dir"]
    try:
        found = allqueue_import.find_allqueue_files(directory)
    except OSError as e:
        raise SystemExit(f"allq-server: cannot read data directory {directory}: {e}")
    if found is None:
        return
    if not config["import-allqueue"]:
        raise SystemExit(allqueue_import.refusal(found, directory))
    try:
        report = allqueue_import.import_allqueue(directory, now)
    except (allqueue_import.AllQueueImportError, DataDirError) as e:
        raise SystemExit(f"allq-server: {e}")
    except OSError as e:
        raise SystemExit(f"allq-server: importing AllQueue's files failed: {e}")
    _log.info("{report}", report=report.describe())


def _open_data_dir(config: Options, reactor, now: float, on_failure, on_disk_full):
    """Lock and read back the data directory; the journal that goes on from it."""
    directory = config["data-dir"]
    try:
        recovered = recover(directory, now)
    except DataDirError as e:
        raise SystemExit(f"allq-server: {e}")
    except OSError as e:
        raise SystemExit(f"allq-server: cannot read data directory {directory}: {e}")

    def run_blocking(f):
        from twisted.internet.threads import deferToThreadPool

        return deferToThreadPool(reactor, reactor.getThreadPool(), f)

    journal = Journal(
        directory, FsyncPolicy.parse(config["fsync"]), reactor,
        generation=recovered.generation, snapshot_bytes=recovered.snapshot_bytes,
        max_id=recovered.max_id, lock_fd=recovered.lock_fd,
        run_blocking=run_blocking, on_failure=on_failure, on_disk_full=on_disk_full,
    )
    return journal, recovered


def _restore(queue: Queue, idempotency: IdempotencyKeys, journal: Journal, recovered,
             directory: str, now: float, reactor, interests: InterestTable | None = None) -> None:
    restored = restore_queue(queue, recovered, now)
    restore_keys(idempotency, recovered, now)
    if interests is not None:
        restore_interests(interests, recovered)
    journal.attach(queue, idempotency, interests)
    for note in recovered.damaged:
        _log.warn("data directory damaged: {note}", note=note)
    if restored.invalid:
        _log.warn("{count} stored jobs could not be restored (invalid records)",
                  count=restored.invalid)
    _log.info(
        "restored {total} jobs ({ready} ready, {delayed} delayed, {buried} buried, "
        "{waiting} waiting) from {directory} in {took:.3f} s; skipped {skipped} corrupt "
        "records; fsync {fsync}",
        total=restored.total, ready=restored.ready, delayed=restored.delayed,
        buried=restored.buried, waiting=restored.waiting, directory=directory,
        took=reactor.seconds() - now, skipped=recovered.skipped, fsync=journal.policy,
    )
