"""What a lab's conftest.py may add: here, switch the board off after any failing test.

The fixtures (``client``, ``session``, ``flasher``) come from the jumpstarter plugin, loaded
automatically once the toolkit is installed.
"""

import logging

logger = logging.getLogger(__name__)


def pytest_jumpstarter_test_finished(item, client, failed, reports):
    """Leave no failed board powered: the next test starts from a known state."""
    if failed and "power" in client.children:
        logger.info("%s failed: powering the board off", item.nodeid)
        client.power.off()
