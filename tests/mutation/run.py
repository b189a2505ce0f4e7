"""`make mutation`: mutation testing (mutmut) of the modules whose small semantic changes the suite must notice.

mutmut 3 finds code only at the top level, in `src/` or in `source/`, and derives module names from those paths; our
package lives in `operator/`. So the run happens in a scratch copy (`.mutation/`, git-ignored) laid out as
`src/bundleserve` + `tests` + `pyproject.toml`, whose `[tool.mutmut]` section (in our pyproject.toml) names the
modules to mutate and the unit tests that cover them. The score (killed / mutants that tests reach) is printed and
written to `.mutation/score.json`; docs/testing.md records the last one. Not part of `make test`: it takes minutes.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
WORK = REPO / ".mutation"
MUTMUT = Path(sys.executable).with_name("mutmut")
#: mutmut's result words for mutants the tests noticed, and for those they did not.
KILLED = {"killed", "timeout", "segfault"}
SURVIVED = {"survived", "suspicious"}


def lay_out() -> None:
    """A fresh scratch copy; mutmut keeps its own results in `.mutation/mutants`, rebuilt on every run."""
    if WORK.exists():
        shutil.rmtree(WORK)
    WORK.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(REPO / "operator" / "bundleserve", WORK / "src" / "bundleserve", ignore=ignore)
    shutil.copytree(REPO / "tests", WORK / "tests", ignore=ignore)
    for name in ("examples", "crds", "charts"):  # read by the selected tests
        shutil.copytree(REPO / name, WORK / name, ignore=ignore)
    shutil.copy2(REPO / "pyproject.toml", WORK / "pyproject.toml")


def results() -> dict[str, str]:
    """{mutant name: status} from `mutmut results --all true`."""
    output = subprocess.run(
        [str(MUTMUT), "results", "--all", "true"], cwd=WORK, capture_output=True, text=True, check=True
    ).stdout
    found: dict[str, str] = {}
    for line in output.splitlines():
        name, _, status = line.strip().rpartition(": ")
        if name:
            found[name] = status.strip()
    return found


def main() -> int:
    lay_out()
    run = subprocess.run([str(MUTMUT), "run"], cwd=WORK, check=False)
    if run.returncode != 0:
        print(f"mutmut run exited with {run.returncode}", file=sys.stderr)
        return run.returncode
    statuses = results()
    killed = sum(1 for status in statuses.values() if status in KILLED)
    survived = sorted(name for name, status in statuses.items() if status in SURVIVED)
    untested = sum(1 for status in statuses.values() if status == "no tests")
    reached = killed + len(survived)
    score = killed / reached if reached else 0.0
    by_module: dict[str, list[int]] = {}
    for name, status in statuses.items():
        module = name.split(".x", 1)[0]
        counts = by_module.setdefault(module, [0, 0])
        counts[0] += status in KILLED
        counts[1] += status in KILLED or status in SURVIVED
    summary = {
        "mutants": len(statuses),
        "killed": killed,
        "survived": len(survived),
        "no_tests": untested,
        "score": round(score, 4),
        "by_module": {module: {"killed": k, "reached": r} for module, (k, r) in sorted(by_module.items())},
        "survivors": survived,
    }
    (WORK / "score.json").write_text(json.dumps(summary, indent=2) + "\n")
    for module, (k, r) in sorted(by_module.items()):
        print(f"  {module}: {k}/{r} killed")
    print(f"mutation score: {killed}/{reached} = {score:.1%} ({len(survived)} survived, {untested} without tests)")
    print("survivors: `cd .mutation && mutmut show NAME`; all results in .mutation/score.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
