"""The layers of docs/architecture.md hold: every import in src/allq points down.

Read from the source with ``ast`` (imports inside functions included), so a
lazy import cannot slip past. A failure names the module, the line and the
rule it breaks.
"""

import ast
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"
PACKAGE = SRC / "allq"

#: What each layer may import of allq (its own layer always), and which
#: third-party packages it may use.
LAYERS = {
    # twisted: what both daemons share (config, listening, logs); nacl: speedups only.
    "ground": ({"ground"}, {"attrs", "twisted", "zope", "prometheus_client", "nacl"}),
    # croniter: pure date arithmetic for recurring schedules (allq.core.schedules);
    # re2: linear-time matching for interest routing (allq.core.interests).
    "core": ({"ground"}, {"attrs", "croniter", "re2"}),
    "wire": ({"ground"}, {"attrs", "nacl"}),
    # allq.peer: the client end of the encrypted protocol (both daemons speak it).
    "peer": ({"ground", "wire"}, {"attrs", "twisted", "zope", "nacl"}),
    "server": ({"ground", "core", "wire", "peer"},
               {"attrs", "twisted", "zope", "prometheus_client", "nacl"}),
    "client": ({"ground", "wire", "peer"},
               {"attrs", "twisted", "zope", "prometheus_client", "klein", "werkzeug", "treq",
                "nacl", "httptools"}),
    # allq.worker: the library for producers and workers; it speaks REST to an
    # allq-client, so it knows the ground floor's words and nothing of the daemons.
    "worker": ({"ground"}, {"attrs", "twisted", "zope", "treq"}),
    # The `allq` command line (allq.cli and its allq.commands): an entry point, like
    # the twistd plugins; its queue commands go through allq.worker's client, and
    # `allq import` assembles the server's importer (it writes the server's journal).
    "entry": ({"ground", "wire", "worker", "server"}, {"attrs", "nacl", "rich"}),
}
#: Pure layers: no reactor, no sockets, no clock of their own.
NO_TWISTED = {"core", "wire"}


def layer_of(module: str) -> str:
    parts = module.split(".")
    if module == "allq.cli" or parts[:2] == ["allq", "commands"]:
        return "entry"
    if parts[:2] == ["allq", "worker"]:  # the package's __init__ re-exports its modules
        return "worker"
    if len(parts) > 2 and parts[1] in ("core", "wire", "peer", "server", "client", "worker"):
        return parts[1]
    return "ground"


def modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(SRC).with_suffix("")
        name = ".".join(relative.parts)
        yield name.removesuffix(".__init__"), path


def imports(path: Path):
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module


def target_layer(name: str) -> str:
    """The layer an imported ``allq`` name belongs to (a package counts as its layer)."""
    parts = name.split(".")
    if len(parts) == 2 and parts[1] in ("core", "wire", "peer", "server", "client", "worker"):
        return parts[1]
    return layer_of(name)


def violations(module: str, path: Path) -> list[str]:
    """The imports of ``path`` (the source of ``module``) that break its layer's rules."""
    layer = layer_of(module)
    allowed_layers, allowed_packages = LAYERS[layer]
    found = []
    for line, name in imports(path):
        top = name.split(".")[0]
        where = f"{module} line {line} imports {name}"
        if top == "allq":
            target = target_layer(name)
            if target != layer and target not in allowed_layers:
                found.append(f"{where}: the {layer} layer may not import the {target} layer")
        elif top in sys.stdlib_module_names or top == "__future__":
            continue
        elif top not in allowed_packages:
            found.append(f"{where}: the {layer} layer may not use {top}")
        elif layer in NO_TWISTED and top == "twisted":
            found.append(f"{where}: the {layer} layer must stay reactor-free")
    return found


@pytest.mark.parametrize("module, path", list(modules()), ids=lambda v: str(v))
def test_imports_point_down(module, path):
    assert violations(module, path) == []


@pytest.mark.parametrize("module, source", [
    ("allq.client.x", "from allq.core.queue import Queue\n"),
    ("allq.client.x", "import allq.core\n"),
    ("allq.client.x", "def f():\n    from allq.server import dispatch\n"),
    ("allq.wire.x", "from allq.server.dispatch import Dispatcher\n"),
    ("allq.wire.x", "from twisted.internet import reactor\n"),
    ("allq.core.x", "import allq.client.rest\n"),
    ("allq.core.x", "import nacl\n"),
    ("allq.vocabulary", "from allq.wire.keys import ClientKeys\n"),
    ("allq.worker.x", "from allq.client.federation import Federation\n"),
    ("allq.worker.x", "from allq.core.queue import Queue\n"),
    ("allq.client.x", "from allq.worker import Client\n"),
])
def test_the_check_catches_an_upward_import(tmp_path, module, source):
    probe = tmp_path / "probe.py"
    probe.write_text(source)
    assert violations(module, probe)


def test_the_check_lets_a_downward_import_pass(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("from allq.core import queue\nfrom allq.vocabulary import JobRef\n")
    assert violations("allq.server.x", probe) == []
