# The cluster fixtures (cluster, namespace, kubectl) for every test suite of the repo.
pytest_plugins = ["e2e.fixtures"]
