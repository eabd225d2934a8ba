"""Corrections to moto 5.2.5 where its DynamoDB, Kinesis and IAM enforcement differ from AWS in ways
tablesync relies on: one module a service (`dynamodb`, `kinesis`, `iam`; `export` for DynamoDB's exports
and imports), one comment a fix saying what real AWS does.

:func:`install` patches moto's classes in the current process. It is idempotent and works alike for the
emulator server (moto's WSGI app) and for in-process ``moto.mock_aws``: both use the same backend classes.
"""

from __future__ import annotations

import threading

from tablesync_local import moto_speed
from tablesync_local.items import MAX_ITEM_BYTES, item_size, value_size
from tablesync_local.moto_fixes import dynamodb, export, iam, kinesis
from tablesync_local.moto_fixes.kinesis import select_shards

_INSTALL_LOCK = threading.Lock()
_installed = False


def install() -> None:
    """Patch moto in this process. Idempotent; safe to call from several threads."""
    global _installed
    with _INSTALL_LOCK:
        if _installed:
            return
        dynamodb.install()
        export.install()
        kinesis.install()
        iam.install()
        moto_speed.install()
        _installed = True


__all__ = ["MAX_ITEM_BYTES", "install", "item_size", "select_shards", "value_size"]
