"""The real etcd + kube-apiserver of the integration tests, shared with the Helm e2e tests."""

from tests.integration.conftest import Cluster, cluster, control_plane, core, no_duplicates  # noqa: F401
