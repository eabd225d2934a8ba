"""The sub-commands of ``tablesync``: one module each, with ``add_parser`` and ``run``."""

from __future__ import annotations

import argparse
import re
from typing import Any

_USAGE_BLOCK = re.compile(r"\n\n    tablesync .*?(?=\n\n|\Z)", re.S)


def described(doc: str | None) -> dict[str, Any]:
    """``add_parser`` keywords that make a command's module docstring its ``--help`` text: the
    literal markup and the usage block (argparse prints its own) removed, line breaks kept."""
    text = _USAGE_BLOCK.sub("", doc or "").replace("``", "`")
    return {"description": text.strip(), "formatter_class": argparse.RawDescriptionHelpFormatter}
