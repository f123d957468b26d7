"""The benchmark of ontap-job-poller against per-job polling (see bench/README.md)."""
