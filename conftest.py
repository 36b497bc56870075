"""Root conftest: the project's own test suite uses pytester for plugin self-tests."""

pytest_plugins = ["pytester"]
