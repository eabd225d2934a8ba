"""The one patch helper of the moto fixes: marks what it replaced, so that installing twice is harmless."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tablesync_local.patching import patch

MARK = "_tablesync_fix"


def fix(owner: Any, name: str, make: Callable[[Callable[..., Any]], Callable[..., Any]]) -> None:
    patch(owner, name, make, MARK)
