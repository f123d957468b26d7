"""Shared by every test directory."""

from __future__ import annotations

import signal

# A shell that starts the suite in the background (`pytest &`, nohup, some CI runners) starts it
# with SIGINT ignored, and every command a test starts would inherit that: the tests that press
# Ctrl-C on `demo`, `events` or `run` would see it ignored. Exec resets a handled signal to its
# default, so handling it here gives each child Ctrl-C as a user at a terminal has it.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
