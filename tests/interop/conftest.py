"""The shared-lab fixtures (a real etcd, a TLS controller replica, our exporters) for the fleet interop tests."""

from tests.jumpstarter_drivers.controller.conftest import bare_lab, etcd, lab, tls_pair  # noqa: F401 - fixtures
