"""Fixtures for tests that need the local stack (one emulator process per test session).

``local_stack``: a :class:`tablesync_local.stack.LocalStack` on a free 127.0.0.1 port with
``.endpoint``, ``.port``, ``.client(service, region)``, ``.reset()``, ``.configure_faults()``,
``.stats()``, ``.ttl_expire()``, ``.flush()``. Started once (about 1 s), stopped at the end
of the session even when tests fail. Its log: ``<pytest tmp>/local-stack*/stack.log``.

``fresh_stack``: the same stack after a moto reset (every resource and destination gone).
Prefer unique resource names over resets: resets are global to the session's stack.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tablesync_local.stack import LocalStack, running_stack


@pytest.fixture(scope="session")
def local_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    log_path = tmp_path_factory.mktemp("local-stack") / "stack.log"
    with running_stack(log_path=log_path) as stack:
        yield stack


@pytest.fixture
def fresh_stack(local_stack: LocalStack) -> LocalStack:
    local_stack.reset()
    return local_stack
