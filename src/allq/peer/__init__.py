"""The client end of allq's encrypted protocol, shared by both daemons.

``allq-client`` speaks it to every server; an ``allq-server`` started with
``--replica`` speaks it to its backup (:mod:`allq.server.replication`).
"""
