"""The destination guard (url inputs and callbacks) in a network namespace where only loopback exists (issue 17,
finding 3). `unshare -n` gives the probe (tests/integration/guard_netns_probe.py) a namespace of its own with `lo` up
and nothing else: an address the guard fails to refuse cannot be reached, so a missed refusal fails this test (as a
connection error instead of the refusal text) without a packet leaving the machine."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

from tests.integration.guard_netns_probe import MUST_REFUSE
from tests.support.processes import REPO


def run_probe() -> dict[str, object]:
    unshare, ip = shutil.which("unshare"), shutil.which("ip")
    assert unshare and ip, "the test needs util-linux unshare and iproute2 ip"
    script = f"{ip} link set lo up && exec {sys.executable} -m tests.integration.guard_netns_probe"
    done = subprocess.run([unshare, "-n", "sh", "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    found: dict[str, object] = json.loads(done.stdout)
    return found


def test_the_guard_refuses_private_loopback_and_every_metadata_address_and_hides_open_from_closed() -> None:
    found = run_probe()
    fetch, callback = found["fetch"], found["callback"]
    assert isinstance(fetch, dict) and isinstance(callback, dict)
    for url in MUST_REFUSE:
        assert "destination refused:" in fetch[url], (url, fetch[url])
        assert "destination refused:" in callback[url], (url, callback[url])
    assert "private address" in fetch["http://10.0.0.1/"]
    for url in ("http://[fd00:ec2::254]/latest/meta-data/", "http://100.100.100.200/latest/meta-data/"):
        assert fetch[url] == "url destination refused: cloud-metadata address"
    # An open port that speaks no HTTP and a closed port read the same (no port scanning through url inputs).
    assert found["open"] == found["closed"] == "fetching url failed: no HTTP answer from the destination"
    assert found["callback_open"] == found["callback_closed"] == "no HTTP answer from the callback destination"
