"""compose.yaml run for real: podman, images built from Debian packages, and the host put back after."""
