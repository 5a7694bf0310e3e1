"""Fixtures of the gateway tests."""

import pytest

from tests.gateways.test_sandbox_client import DripGateway


@pytest.fixture
def drip():
    """Start DripGateway servers (a real socket that drips its answer); closed after the test."""
    made = []

    def start(*args, **kwargs):
        made.append(DripGateway(*args, **kwargs))
        return made[-1]
    yield start
    for server in made:
        server.close()
