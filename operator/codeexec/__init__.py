"""codeexec: a Kubernetes operator that runs untrusted code in single-use warm sandbox pods."""

__version__ = "0.1.0"
