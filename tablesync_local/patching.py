"""Idempotent monkey-patching of the emulator's moto, shared by moto_fixes and moto_speed."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def patch(owner: Any, name: str, make: Callable[[Callable[..., Any]], Callable[..., Any]], mark: str) -> None:
    """Replace ``owner.name`` by ``make(original)`` unless a previous install (same ``mark``) did.

    The replacement keeps the original as ``__wrapped__``."""
    original = getattr(owner, name)
    if getattr(original, mark, False):
        return
    replacement = make(original)
    setattr(replacement, mark, True)
    replacement.__wrapped__ = original  # type: ignore[attr-defined]
    setattr(owner, name, replacement)
