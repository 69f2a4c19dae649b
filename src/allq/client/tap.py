"""``twistd allq-client``: options and service assembly. Wiring only.

:func:`makeService` builds the :class:`Federation` (one link per server) and the
REST facade behind an HTTP endpoint (with the dashboard at ``/`` and Prometheus
metrics at ``/metrics`` beside it), and AllQueue's JSON-lines API on TCP and a
UNIX socket (:mod:`allq.client.jsonl`), under one :class:`MultiService`. It starts
serving even when no server is reachable yet (the API answers 503 until one is).
"""

import os

from twisted.application.service import MultiService
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python import usage
from twisted.web.server import Site

from allq import __version__
from allq.client.beanstalk import DEFAULT_MAX_JOB_SIZE as DEFAULT_BEANSTALK_JOB_SIZE
from allq.client.beanstalk import BeanstalkConnections, BeanstalkFactory
from allq.client.dashboard import Dashboard
from allq.client.discovery import (
    DEFAULT_DNS_INTERVAL,
    DnsDiscovery,
    dns_server_lookup,
    is_dns_entry,
    parse_dns_entry,
    parse_dns_server,
    system_lookup,
)
from allq.client.fast_http import PARSERS, http_factory
from allq.client.failover import DEFAULT_FAILOVER_AFTER, connector, parse_failover_after
from allq.client.federation import Federation
from allq.client.fencing import Fences
from allq.client.graceful import GracefulClient, InFlight
from allq.client.admin_token import check_admin_token, needs_token
from allq.client.http_guard import HostGuard, parse_allowed_hosts
from allq.client.jsonl import (
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_PORT as JSONL_PORT,
    DEFAULT_UNIX_PATH,
    JsonLinesApi,
    JsonLinesFactory,
)
from allq.client.keys import load_client_keys
from allq.client.link import ServerLink, parse_address
from allq.client.local_socket import UnixSocketEndpoint
from allq.client.metrics import ClientMetrics, JobCounter, StatsRefresher
from allq.client.observers import JobLog
from allq.client.rest import DEFAULT_MAX_BODY, RestApi
from allq.client.retry import DEFAULT_RETRY_BUDGET
from allq.client.site import build_site
from allq.client.workers import (
    AdminRelay,
    ReusePortEndpoint,
    WorkerMetrics,
    WorkerPool,
    parse_tcp,
    worker_command,
    worker_control,
)
from allq.listening import PortSetting, endpoint_service, listening_service
from allq.config import positive_float, positive_int, resolve
from allq.errors import BadRequest
from allq.vocabulary import SERVER_REQUEST_TIMEOUT
from allq.keyfiles import KeyConfigError, MissingKeys

_log = Logger()
DEFAULT_SERVERS = "127.0.0.1:5555"
#: Named when the REST port cannot be bound.
HTTP_PORT = PortSetting("allq-client", "--http", "HTTP_SERVER_PORT")
#: Named when the beanstalkd port cannot be bound.
BEANSTALK_PORT = PortSetting("allq-client", "--beanstalk", "ALLQ_BEANSTALK")
#: Named when the JSON-lines port or socket cannot be bound.
JSONL_PORT_SETTING = PortSetting("allq-client", "--jsonl", "CL_PORT")
UNIX_SOCKET_SETTING = PortSetting("allq-client", "--unix", "ALLQ_UNIX_SOCKET")


class Options(usage.Options):
    """Options of ``twistd allq-client``; each also has an environment variable."""

    environ = os.environ  # tests replace this

    optFlags = [
        ["access-log", None, "log one line per HTTP request [env ALLQ_ACCESS_LOG=true]"],
        ["log-jobs", None, "log one event per job operation, with its job_id "
                           "[env ALLQ_LOG_JOBS=true]"],
    ]

    optParameters = [
        ["http", None, None,
         "Twisted endpoint for the REST API [default: tcp:8090:interface=127.0.0.1:backlog=1024; "
         "env HTTP_SERVER_PORT sets the port and ALLQ_HTTP_INTERFACE the interface, "
         "ALLQ_HTTP the whole endpoint]"],
        ["servers", None, None,
         f"comma-separated host:port of the servers, or dns:NAME:PORT for every address "
         f"behind a DNS name, looked up again every --dns-interval [default: "
         f"{DEFAULT_SERVERS}; env SERVER_STRING]"],
        ["dns-interval", None, None,
         f"seconds between lookups of the dns: names of --servers [default: "
         f"{DEFAULT_DNS_INTERVAL:g}; env ALLQ_DNS_INTERVAL]"],
        ["dns-server", None, None,
         "HOST:PORT of the DNS server to ask for the dns: names [default: the system's "
         "resolver (getaddrinfo); env ALLQ_DNS_SERVER]"],
        ["keys", None, None,
         "directory holding client.key and server.pub (made by `allq keys generate`) "
         "[env ALLQ_KEYS_DIR]"],
        ["request-timeout", None, None,
         f"seconds a server may take to answer one request [default: "
         f"{SERVER_REQUEST_TIMEOUT:g}; env ALLQ_REQUEST_TIMEOUT]"],
        ["retry-budget", None, None,
         f"seconds a put or get may spend retrying on other servers [default: "
         f"{DEFAULT_RETRY_BUDGET:g}; env ALLQ_RETRY_BUDGET]"],
        ["max-body", None, None,
         f"largest HTTP request body, and longest JSON-lines request line, in bytes "
         f"[default: {DEFAULT_MAX_BODY}; env SIZE_LIMIT]"],
        ["allowed-hosts", None, None,
         "host names or addresses (comma-separated, no ports) the REST API answers to "
         "besides the loopback ones and the interface it listens on: how containers or "
         "other hosts reach it; any other Host header gets 421 [env ALLQ_ALLOWED_HOSTS]"],
        ["admin-token", None, None,
         "a token every HTTP request (REST API and dashboard) must carry as "
         "`Authorization: Bearer TOKEN`; required when --http listens beyond loopback "
         "[env ALLQ_ADMIN_TOKEN]"],
        ["http-parser", None, None,
         "how HTTP requests are read: httptools (a C parser serving the job routes, "
         "everything else through twisted.web) or twisted (twisted.web alone, for "
         "diagnosis) [default: httptools; env ALLQ_HTTP_PARSER]"],
        ["workers", None, None,
         "client processes serving the HTTP port together (SO_REUSEPORT; needs a tcp: "
         "--http endpoint) [default: 1; env ALLQ_WORKERS]"],
        ["beanstalk", None, None,
         "Twisted endpoint for the beanstalkd protocol, e.g. tcp:11300:interface=127.0.0.1 "
         "or unix:/run/allq/beanstalk.sock [default: off; env ALLQ_BEANSTALK]"],
        ["beanstalk-max-job-size", None, None,
         "largest job body a beanstalkd client may put, in bytes (beanstalkd's -z) "
         "[default: 65535; env ALLQ_BEANSTALK_MAX_JOB_SIZE]"],
        ["jsonl", None, None,
         f"Twisted endpoint for AllQueue's JSON-lines API, or none [default: "
         f"tcp:{JSONL_PORT}:interface=127.0.0.1; env CL_PORT or TCP_CLIENT_PORT set the "
         "port and CL_LISTEN the interface, ALLQ_JSONL the whole endpoint]"],
        ["unix", None, None,
         f"UNIX socket path for the JSON-lines API (mode 0600), or none [default: "
         f"{DEFAULT_UNIX_PATH}; env ALLQ_UNIX_SOCKET]"],
        ["failover-after", None, None,
         f"seconds a server must be unreachable before its backup (docs/replication.md) "
         f"is promoted to serve its jobs, or off [default: {DEFAULT_FAILOVER_AFTER:g}; "
         f"env ALLQ_FAILOVER_AFTER]"],
        ["jsonl-idle-timeout", None, None,
         f"seconds a JSON-lines connection with nothing pending may stay silent before "
         f"it is closed [default: {DEFAULT_IDLE_TIMEOUT:g}; env ALLQ_JSONL_IDLE_TIMEOUT]"],
    ]

    def postOptions(self) -> None:
        env = self.environ
        http = resolve(self, "http", env, "ALLQ_HTTP")
        if http is None:
            port = positive_int("http", env.get("HTTP_SERVER_PORT") or 8090)
            # A deep accept backlog: a thousand workers may connect at once.
            interface = env.get("ALLQ_HTTP_INTERFACE") or "127.0.0.1"
            http = f"tcp:{port}:interface={interface}:backlog=1024"
        self["http"] = http
        self["access-log"] = bool(self["access-log"]) or env.get("ALLQ_ACCESS_LOG", "") == "true"
        self["log-jobs"] = bool(self["log-jobs"]) or env.get("ALLQ_LOG_JOBS", "") == "true"
        servers = resolve(self, "servers", env, "SERVER_STRING") or DEFAULT_SERVERS
        entries = [s.strip() for s in servers.split(",") if s.strip()]
        if not entries:
            raise usage.UsageError("--servers must list at least one host:port")
        addresses = [entry for entry in entries if not is_dns_entry(entry)]
        for address in addresses:
            try:
                parse_address(address)
            except BadRequest as e:
                raise usage.UsageError(f"--servers: {e.message}") from None
        self["servers"] = addresses
        self.update(_dns_options(self, env, [e for e in entries if is_dns_entry(e)]))
        self["keys"] = resolve(self, "keys", env, "ALLQ_KEYS_DIR")
        self["request-timeout"] = positive_float(
            "request-timeout",
            resolve(self, "request-timeout", env, "ALLQ_REQUEST_TIMEOUT") or SERVER_REQUEST_TIMEOUT)
        self["retry-budget"] = positive_float(
            "retry-budget",
            resolve(self, "retry-budget", env, "ALLQ_RETRY_BUDGET") or DEFAULT_RETRY_BUDGET)
        self["max-body"] = positive_int(
            "max-body", resolve(self, "max-body", env, "SIZE_LIMIT") or DEFAULT_MAX_BODY,
            minimum=1024)
        try:
            allowed = parse_allowed_hosts(resolve(self, "allowed-hosts", env,
                                                  "ALLQ_ALLOWED_HOSTS") or "")
        except ValueError as e:
            raise usage.UsageError(f"--allowed-hosts: {e}") from None
        self["allowed-hosts"] = allowed | _listening_host(http)
        self["admin-token"] = _admin_token(self, env, http)
        self["http-parser"] = (resolve(self, "http-parser", env, "ALLQ_HTTP_PARSER")
                               or PARSERS[0])
        if self["http-parser"] not in PARSERS:
            raise usage.UsageError(
                f"--http-parser must be one of {', '.join(PARSERS)}, "
                f"not {self['http-parser'][:40]!r}")
        try:
            self["failover-after"] = parse_failover_after(
                resolve(self, "failover-after", env, "ALLQ_FAILOVER_AFTER")
                or str(DEFAULT_FAILOVER_AFTER))
        except ValueError as e:
            raise usage.UsageError(str(e)) from None
        self["workers"] = positive_int("workers", resolve(self, "workers", env, "ALLQ_WORKERS") or 1)
        _beanstalk_options(self, env)
        self._local_api_options(env)
        if self["workers"] > 1:
            try:
                parse_tcp(self["http"])
            except ValueError as e:
                raise usage.UsageError(
                    f"--workers {self['workers']} needs a tcp:PORT --http endpoint: {e}") from None

    def _local_api_options(self, env) -> None:
        """``--jsonl``, ``--unix`` and ``--jsonl-idle-timeout`` (``none`` turns a
        listener off)."""
        jsonl = resolve(self, "jsonl", env, "ALLQ_JSONL")
        if jsonl is None:
            port = positive_int("jsonl", env.get("CL_PORT") or env.get("TCP_CLIENT_PORT")
                                or JSONL_PORT)
            jsonl = f"tcp:{port}:interface={env.get('CL_LISTEN') or '127.0.0.1'}"
        self["jsonl"] = None if jsonl.strip().lower() == "none" else jsonl
        unix = resolve(self, "unix", env, "ALLQ_UNIX_SOCKET") or DEFAULT_UNIX_PATH
        self["unix"] = None if unix.strip().lower() == "none" else unix
        self["jsonl-idle-timeout"] = positive_float(
            "jsonl-idle-timeout",
            resolve(self, "jsonl-idle-timeout", env, "ALLQ_JSONL_IDLE_TIMEOUT")
            or DEFAULT_IDLE_TIMEOUT)


def _dns_options(options: Options, env, entries: list[str]) -> dict:
    """``dns-names``, ``dns-interval`` and ``dns-server`` (:mod:`allq.client.discovery`)."""
    try:
        names = [parse_dns_entry(entry) for entry in entries]
    except ValueError as e:
        raise usage.UsageError(f"--servers: {e}") from None
    server = resolve(options, "dns-server", env, "ALLQ_DNS_SERVER")
    if server is not None:
        try:
            server = parse_dns_server(server)
        except ValueError as e:
            raise usage.UsageError(f"--dns-server: {e}") from None
    interval = positive_float("dns-interval", resolve(options, "dns-interval", env,
                                                      "ALLQ_DNS_INTERVAL") or DEFAULT_DNS_INTERVAL)
    return {"dns-names": names, "dns-interval": interval, "dns-server": server}


def _discovery(config: Options, federation: Federation, reactor) -> DnsDiscovery | None:
    """The service following the ``dns:`` names of ``--servers`` (``None``: there are none)."""
    if not config["dns-names"]:
        return None
    if config["dns-server"] is None:
        lookup = system_lookup(reactor)
    else:
        from twisted.names.client import Resolver

        lookup = dns_server_lookup(Resolver(servers=[config["dns-server"]], reactor=reactor))
    return DnsDiscovery(federation, config["dns-names"], lookup, reactor,
                        config["dns-interval"], static=config["servers"])


def makeService(config: Options, reactor=None) -> MultiService:
    """Assemble the client: federation over the servers, REST facade over HTTP,
    and with ``--workers N`` the N-1 worker processes (:mod:`allq.client.workers`)."""
    if reactor is None:
        from twisted.internet import reactor
    federation = _federation(config, _client_keys(config), reactor)
    # Metrics count what the federation does, time the REST requests, and read
    # server stats from a snapshot refreshed in the background.
    metrics = ClientMetrics(reactor, health=federation.health)
    federation.observe(JobCounter(metrics))
    service, site = _client(config, federation, metrics, reactor)
    StatsRefresher(federation, metrics, reactor).setServiceParent(service)
    discovery = _discovery(config, federation, reactor)
    if discovery is not None:
        # The primary alone looks names up; --workers processes follow its changes
        # through the admin relay, like a REST update_servers.
        discovery.setServiceParent(service)
    _local_api(config, federation, service, reactor)
    pool = None
    if config["workers"] > 1:
        interface, _, backlog = parse_tcp(config["http"])
        pool = WorkerPool(
            reactor, config["workers"] - 1,
            lambda index, port: worker_command(index, _worker_options(
                config, federation, interface, port, backlog)),
            metrics, replay=lambda: _drains(federation))
        pool.admin = AdminRelay(federation, pool.relay)
        metrics.workers = pool.status
        pool.setServiceParent(service)
        service.set_workers(pool)

    def listening(port) -> None:
        address = port.getHost()
        _log.info(
            "allq-client {version} serving REST on {host}:{port} for servers {servers}",
            version=__version__, host=address.host, port=address.port,
            servers=",".join(config["servers"] + [str(n) for n in config["dns-names"]]),
        )
        if pool is not None:
            pool.listening(address.port)

    if pool is None:
        http = listening_service(reactor, config["http"], site, listening, setting=HTTP_PORT)
    else:
        http = _reuse_port_service(reactor, config["http"], site, listening)
    http.setServiceParent(service)
    service.set_http(http)
    if config["beanstalk"] is not None:
        _beanstalk_service(config, federation, reactor).setServiceParent(service)
    return service


def _beanstalk_options(options: Options, env) -> None:
    """``--beanstalk`` and its job size (the listener lives in the primary process)."""
    options["beanstalk"] = resolve(options, "beanstalk", env, "ALLQ_BEANSTALK") or None
    options["beanstalk-max-job-size"] = positive_int(
        "beanstalk-max-job-size",
        resolve(options, "beanstalk-max-job-size", env, "ALLQ_BEANSTALK_MAX_JOB_SIZE")
        or DEFAULT_BEANSTALK_JOB_SIZE)


def _beanstalk_service(config: Options, federation: Federation, reactor) -> MultiService:
    """The beanstalkd protocol listener and what closes its connections on stop."""
    factory = BeanstalkFactory(federation, reactor, config["beanstalk-max-job-size"])
    service = MultiService()
    BeanstalkConnections(factory).setServiceParent(service)

    def listening(port) -> None:
        _log.info("allq-client serving the beanstalkd protocol on {address}",
                  address=port.getHost())

    listening_service(reactor, config["beanstalk"], factory, listening,
                      setting=BEANSTALK_PORT).setServiceParent(service)
    return service


def make_worker_service(config: Options, index: int, reactor) -> MultiService:
    """One worker process of ``--workers N`` (run by ``python -m allq.client.worker``):
    a whole client on the shared port, reporting to the primary over stdin/stdout."""
    federation = _federation(config, _client_keys(config), reactor)
    channel = worker_control(reactor)
    metrics = WorkerMetrics(channel.send, reactor)
    federation.observe(JobCounter(metrics))
    channel.handle("admin", AdminRelay(federation, channel.send).apply)
    channel.handle("metrics", metrics.answered)
    service, site = _client(config, federation, metrics, reactor)
    metrics.setServiceParent(service)

    def listening(port) -> None:
        _log.info("worker {index} (pid {pid}) serving REST on port {port}",
                  index=index, pid=os.getpid(), port=port.getHost().port)

    http = _reuse_port_service(reactor, config["http"], site, listening)
    http.setServiceParent(service)
    service.set_http(http)
    return service


def _local_api(config: Options, federation: Federation, service: GracefulClient,
               reactor) -> None:
    """AllQueue's JSON-lines API on TCP and on a UNIX socket, each unless ``none``.

    Only the primary process serves them (with ``--workers N`` they are not on a
    shared port): admin actions made here (``add_server``, ``update_servers``,
    ``drain``) reach the workers as the REST ones do, through the
    :class:`AdminRelay` observing this federation.
    """
    api = JsonLinesApi(federation, reactor)
    factory = JsonLinesFactory(api, reactor, max_line=config["max-body"],
                               idle_timeout=config["jsonl-idle-timeout"],
                               in_flight=service.in_flight)
    if config["jsonl"] is not None:
        def tcp_listening(port) -> None:
            address = port.getHost()
            _log.info("allq-client serving JSON lines on {host}:{port}",
                      host=address.host, port=address.port)

        listening_service(reactor, config["jsonl"], factory, tcp_listening,
                          setting=JSONL_PORT_SETTING).setServiceParent(service)
    if config["unix"] is not None:
        def unix_listening(port) -> None:
            _log.info("allq-client serving JSON lines on UNIX socket {path}",
                      path=config["unix"])

        endpoint_service(UnixSocketEndpoint(reactor, config["unix"]), factory, unix_listening,
                         setting=UNIX_SOCKET_SETTING).setServiceParent(service)


def _admin_token(options: Options, env, http: str) -> str | None:
    """``--admin-token`` (checked), required when ``http`` listens beyond loopback."""
    token = resolve(options, "admin-token", env, "ALLQ_ADMIN_TOKEN")
    if token is None:
        if needs_token(http):
            raise usage.UsageError(
                f"--http {http[:120]} listens beyond loopback: give --admin-token TOKEN "
                "(env ALLQ_ADMIN_TOKEN), which every HTTP request must then carry as "
                "`Authorization: Bearer TOKEN`, or listen on 127.0.0.1")
        return None
    try:
        return check_admin_token(token)
    except ValueError as e:
        raise usage.UsageError(f"--admin-token: {e}") from None


def _listening_host(http: str) -> frozenset[str]:
    """The address a ``tcp:`` endpoint listens on, when it is one host's (not every
    interface's): the client is reached by it, so it answers to it."""
    try:
        interface = parse_tcp(http)[0]
    except ValueError:
        return frozenset()
    return frozenset() if interface in ("0.0.0.0", "::") else frozenset({interface.lower()})


def _client_keys(config: Options):
    try:
        return load_client_keys(config["keys"], config.environ)
    except MissingKeys as e:
        raise SystemExit(
            f"allq-client: refusing to start without keys ({e}).\n"
            "Make a key set with `allq keys generate ./keys`, then start the server with "
            "`twistd -n --pidfile= allq-server --keys ./keys` and this client with "
            "`twistd -n --pidfile= allq-client --keys ./keys`.")
    except KeyConfigError as e:
        raise SystemExit(f"allq-client: {e}")


def _federation(config: Options, keys, reactor) -> Federation:
    timeout = config["request-timeout"]
    fences = Fences()
    federation = Federation(
        config["servers"],
        lambda address: ServerLink(address, keys, reactor, timeout, fences=fences),
        reactor,
        retry_budget=config["retry-budget"],
    )
    if config["failover-after"] is not None:
        federation.fail_over(
            config["failover-after"], fences,
            lambda address, server_id: ServerLink(address, keys, reactor, timeout,
                                                  fences=fences, serve_as=server_id),
            connector(reactor, keys, timeout))
    if config["log-jobs"]:
        federation.observe(JobLog())
    return federation


def _client(config: Options, federation: Federation, metrics,
            reactor) -> tuple[GracefulClient, Factory]:
    """The service tree and the HTTP factory (the site, behind ``--http-parser``'s
    protocol) every client process has."""
    api = RestApi(federation, reactor, max_body=config["max-body"])
    in_flight = InFlight()
    service = GracefulClient(None, in_flight, federation.end_long_polls, reactor)
    federation.setServiceParent(service)
    site = build_site(api.resource(), metrics, Dashboard(),
                      guard=HostGuard(config["allowed-hosts"]),
                      admin_token=config["admin-token"],
                      site_class=Site if config["access-log"] else QuietSite)
    site.requestFactory = in_flight.request_factory(config["max-body"])
    return service, http_factory(site, api.fast_routes(), config["http-parser"])


def _reuse_port_service(reactor, description: str, site: Factory, on_listening):
    interface, port, backlog = parse_tcp(description)
    return endpoint_service(ReusePortEndpoint(reactor, interface, port, backlog), site,
                            on_listening, setting=HTTP_PORT)


def _worker_options(config: Options, federation: Federation, interface: str, port: int,
                    backlog: int) -> list[str]:
    """A worker's command-line options: this client's, on the port bound, with the
    servers as they are now (a restarted worker starts from the current set)."""
    escaped = interface.replace(":", "\\:")  # endpoint syntax: an IPv6 address's colons
    options = [
        "--http", f"tcp:{port}:interface={escaped}:backlog={backlog}",
        # Before the first DNS answer there may be no server yet: the names then
        # (a worker looks nothing up itself; the primary relays what it finds).
        "--servers", ",".join(link.address for link in federation.links())
        or ",".join(str(name) for name in config["dns-names"]),
        "--request-timeout", repr(config["request-timeout"]),
        "--retry-budget", repr(config["retry-budget"]),
        "--max-body", str(config["max-body"]),
        "--http-parser", config["http-parser"],
        "--failover-after", ("off" if config["failover-after"] is None
                             else repr(config["failover-after"])),
    ]
    if config["keys"] is not None:
        options += ["--keys", config["keys"]]
    if config["allowed-hosts"]:
        options += ["--allowed-hosts", ",".join(sorted(config["allowed-hosts"]))]
    if config["access-log"]:
        options.append("--access-log")
    if config["log-jobs"]:
        options.append("--log-jobs")
    return options


def _drains(federation: Federation) -> list[dict]:
    """The admin changes a newly started worker needs: this client's server drains."""
    return [{"op": "admin", "call": "drain_server", "args": [link.address, True]}
            for link in federation.links() if link.draining]


class QuietSite(Site):
    """A Site that writes no access log line per request (the default: at
    thousands of requests a second the log would cost more than the work)."""

    def log(self, request) -> None:
        pass
