"""Local mode forwards its children's log lines with one timestamp each: the child's own (bundleserve.logs).

A real child process logs through `bundleserve.logs.configure()`, as the router and the bundle runtime do; the real
supervisor forwards its output; the runner's formatter renders the forwarded record. Before the fix every forwarded
line began with the runner's timestamp and level, then the child's.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import re
import sys

from bundleserve import logs
from bundleserve.local.plan import ProcessSpec
from bundleserve.local.supervisor import Child

TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}")
CHILD = "import logging; from bundleserve import logs; logs.configure(); logging.getLogger('bundleserve.router').info('ready on 8080')"


async def test_a_forwarded_child_line_has_the_childs_timestamp_only() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.LineFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    level = root.level
    root.setLevel(logging.INFO)
    try:
        spec = ProcessSpec(name="echo/router", argv=[sys.executable, "-c", CHILD], port=0, ready_path="/")
        child = Child(spec, dict(os.environ))
        await child.start()
        assert child.process is not None
        await asyncio.wait_for(child.process.wait(), 60)  # the child logs its line and exits by itself
        await child.stop(grace=10)  # drains the forwarded output
        logging.getLogger("bundleserve.local").info("stopping")
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    forwarded, own = stream.getvalue().splitlines()
    assert forwarded.startswith("[echo/router] ")
    assert len(TIMESTAMP.findall(forwarded)) == 1, forwarded
    assert forwarded.endswith(" INFO bundleserve.router: ready on 8080")
    assert len(TIMESTAMP.findall(own)) == 1 and own.endswith(" INFO bundleserve.local: stopping"), own
