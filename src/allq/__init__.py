"""allq: a federated, encrypted job queue built on Twisted.

Layers (arrows point downwards only): ``core`` (pure queue) <- ``wire`` (messages,
crypto, keys) <- ``server`` / ``client`` (Twisted adapters and services).
"""

__version__ = "0.1.0"
