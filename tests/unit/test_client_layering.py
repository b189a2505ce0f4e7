"""The SDK is a thin client: of the package it imports only `bundleserve.api`, and none of the server stacks."""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = """
import json, sys
import bundleserve.client, bundleserve.client.cli
print(json.dumps(sorted(sys.modules)))
"""


def test_the_client_imports_only_the_api_of_the_package() -> None:
    loaded = json.loads(
        subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True).stdout
    )
    ours = {m for m in loaded if m.startswith("bundleserve.")}
    assert ours and all(m.startswith(("bundleserve.api", "bundleserve.client")) for m in ours), ours
    assert not {"aiohttp", "redis", "kopf", "cloudpickle", "prometheus_client"} & set(loaded)
