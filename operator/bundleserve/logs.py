"""One log format for every bundleserve process, installed once by each command's entry point.

Why one place: the operator, the router, the gateway, the bundle runtime and local mode all print the same
`time level logger: message` lines, so a reader (or a log pipeline) parses one shape.

Local mode's children (model runtimes, routers) are bundleserve processes too: their lines already carry a timestamp
and a level. The runner forwards each line through the `FORWARDED` logger with the child's name in `extra={"child":
...}`; this formatter prints such a record as `[child] <the child's own line>`, so every line has one timestamp, the
child's, instead of the runner's in front of the child's.
"""

from __future__ import annotations

import logging
import sys

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: The logger local mode forwards its children's output through (see the module docstring).
FORWARDED = "bundleserve.local.child"


class LineFormatter(logging.Formatter):
    """`FORMAT` for our own records; a forwarded child line as it came, behind the child's name."""

    def __init__(self) -> None:
        super().__init__(FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        if record.name == FORWARDED:
            return f"[{getattr(record, 'child', '?')}] {record.getMessage()}"
        return super().format(record)


def configure(level: str | int = logging.INFO) -> None:
    """Log to stderr in the one format; a no-op when the process already has handlers (tests, embedding)."""
    root = logging.getLogger()
    if root.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LineFormatter())
    root.addHandler(handler)
    root.setLevel(level)
