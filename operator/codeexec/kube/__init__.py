"""Thin async access to the Kubernetes API: connection, REST verbs, watches, attach, events."""
