"""End-to-end tests and the pytest fixtures for the local Kubernetes cluster."""
