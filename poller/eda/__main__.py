"""``python -m poller.eda``: print the directory to give ansible-rulebook with ``-S``."""

from poller.eda import SOURCE_DIR

print(SOURCE_DIR)
