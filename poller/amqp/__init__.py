"""Everything that speaks AMQP (aio-pika); no other part of the package imports it.

- ``connection``: connecting (``connect``), and aio-pika's failures mapped onto ``BrokerError`` in
  one place;
- ``nodes``: the nodes of a cluster, TLS and the password file, and the connection that fails over;
- ``broker``: the worker's side (topology, watch requests in, events, checkpoints);
- ``subscriber``: the client side (publish a watch request, receive events).
"""

from poller.amqp.connection import connect, delete_queues, queue_exists
from poller.amqp.nodes import BrokerTarget

__all__ = ["BrokerTarget", "connect", "delete_queues", "queue_exists"]
