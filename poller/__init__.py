"""ontap-job-poller: NetApp ONTAP asynchronous jobs as CloudEvents on RabbitMQ."""

__version__ = "0.1.0"
