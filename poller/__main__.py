"""``python -m poller`` is the ``ontap-job-poller`` command."""

from poller.cli import main

raise SystemExit(main())
