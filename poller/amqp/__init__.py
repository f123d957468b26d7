"""Everything that speaks AMQP (aio-pika); no other part of the package imports it.

- ``connection``: connecting, and aio-pika's failures mapped onto ``BrokerError`` in one place;
- ``broker``: the worker's side (topology, watch requests in, events, checkpoints);
- ``subscriber``: the client side (publish a watch request, receive events).
"""

from poller.amqp.connection import connect, delete_queues, queue_exists

__all__ = ["connect", "delete_queues", "queue_exists"]
