"""twistd plugin: ``twistd allq-client`` (the logic lives in :mod:`allq.client.tap`)."""

from twisted.application.service import ServiceMaker

allq_client = ServiceMaker(
    "allq client", "allq.client.tap",
    "The allq client: a local REST API federating over allq servers", "allq-client",
)
