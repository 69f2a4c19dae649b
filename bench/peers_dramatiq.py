"""The Dramatiq side of bench/peers.py: a Redis broker and one no-op actor, as a user
would write them. Worker processes load it with ``dramatiq peers_dramatiq``; the
bench process imports it to ``send()``. ``PEERS_REDIS_URL`` names the broker.
"""

import os

import dramatiq
from dramatiq.brokers.redis import RedisBroker

broker = RedisBroker(url=os.environ["PEERS_REDIS_URL"])
dramatiq.set_broker(broker)

#: The queue the actor's messages go to (Redis keys ``dramatiq:<QUEUE>``...).
QUEUE = "peers"


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def noop(n: int) -> None:
    """The job: nothing, so the figure is the queue's own cost."""
