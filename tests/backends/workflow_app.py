"""The workflow host that ``test_workflow_target.py`` serves in a child process and kills:
the greeter workflow (it asks a question first) on Invocations, SQLite under the state
directory the test names in ``WORKFLOW_TEST_STATE_DIR``."""

from __future__ import annotations

import os

from agenthost import Host
from agenthost.channels.invocations import InvocationsChannel
from tests.backends.workflow_fixtures import greeter_factory


def build_host() -> Host:
    return Host(
        greeter_factory,
        channels=[InvocationsChannel()],
        state_dir=os.environ["WORKFLOW_TEST_STATE_DIR"],
    )
