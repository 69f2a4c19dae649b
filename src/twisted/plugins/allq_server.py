"""twistd plugin: ``twistd allq-server`` (the logic lives in :mod:`allq.server.tap`)."""

from twisted.application.service import ServiceMaker

allq_server = ServiceMaker(
    "allq server", "allq.server.tap", "An allq job queue server (encrypted line protocol)",
    "allq-server",
)
