"""A drop-in for the original sandbox's HTTP API, backed by `CodeExecution`s."""
