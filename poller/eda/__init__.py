"""Event-Driven Ansible: an ansible-rulebook event source for the poller's events.

ansible-rulebook loads event source plugins from a directory given with ``-S``; this package's
directory is one, holding ``ontap_job_events.py``. ``python -m poller.eda`` prints it::

    ansible-rulebook -r rulebook.yml -i inventory.yml -S "$(python -m poller.eda)"

Nothing here imports Ansible: the plugin needs only what the poller itself needs (aio-pika and
the cloudevents SDK), so ``import poller.eda`` works with or without the ``[eda]`` extra.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

#: The directory to give ansible-rulebook with ``-S``.
SOURCE_DIR: Final = Path(__file__).resolve().parent

__all__ = ["SOURCE_DIR"]
