"""Every example bundle, started from its own manifest through the real bundle runtime and called over HTTP."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from bundleserve.api.endpoint import Endpoint, Mode
from bundleserve.api.manifest import load_endpoints
from bundleserve.api.runtime import bundle_runtime_args
from bundleserve.edge.sse import EventParser
from tests.support.processes import REPO, Server, bundleserve, free_port

EXAMPLES = REPO / "examples"
NAMES = ["echo", "iris", "slow-job", "token-streamer", "batch-scorer", "tiny-chat", "slow-load"]


def manifest(name: str) -> Endpoint:
    [(_, endpoint)] = load_endpoints([EXAMPLES / name / "endpoint.yaml"])
    return endpoint


def serve_argv(endpoint: Endpoint, manifest_dir: Path, port: int) -> list[str]:
    """What local mode runs for a Python bundle: the runtime's arguments from the spec, and `python.path` relative to
    the manifest."""
    python = endpoint.spec.bundle.python
    assert python is not None
    argv = [*bundle_runtime_args(endpoint.spec), "--port", str(port)]
    if python.path:
        argv += ["--path", str(manifest_dir / python.path)]
    return bundleserve("bundle", "serve", *argv)


class Example:
    def __init__(self, name: str, log_dir: Path) -> None:
        self.endpoint = manifest(name)
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        env = {var.name: var.value for var in self.endpoint.spec.bundle.env if var.value is not None}
        argv = serve_argv(self.endpoint, EXAMPLES / name, port)
        self.server = Server(argv, log_path=log_dir / f"{name}.log", env=env)
        self.server.wait_http(f"{self.url}/readyz", timeout=60)

    def predict(self, args: dict[str, Any]) -> httpx.Response:
        return httpx.post(f"{self.url}/predict", json=args, timeout=60)

    def stream_timed(self, args: dict[str, Any]) -> list[tuple[float, Any]]:
        """(arrival time, chunk) for every event of a stream."""
        parser = EventParser()
        received = []
        with httpx.stream("POST", f"{self.url}/stream", json=args, timeout=60) as response:
            assert response.status_code == 200, response.read()
            for raw in response.iter_bytes():
                now = time.monotonic()
                for event in parser.feed(raw):
                    assert event.event == "message", event.data
                    received.append((now, json.loads(event.data)))
        return received


@pytest.fixture(scope="module")
def example(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Example]:
    running = Example(request.param, tmp_path_factory.mktemp("example"))
    yield running
    assert running.server.stop() == 0, running.server.log()


def with_example(name: str) -> pytest.MarkDecorator:
    return pytest.mark.parametrize("example", [name], indirect=True)


@pytest.mark.parametrize("name", NAMES)
def test_manifests_are_valid_python_bundles_with_an_image_and_a_readme_section(name: str) -> None:
    endpoint = manifest(name)
    assert endpoint.name == name
    assert endpoint.spec.bundle.image and endpoint.spec.bundle.python and endpoint.spec.bundle.python.path == "."
    module = endpoint.spec.bundle.python.entrypoint.split(":")[0]
    assert (EXAMPLES / name / f"{module}.py").is_file()
    assert f"## {name}" in (EXAMPLES / "README.md").read_text()


def test_example_modes() -> None:
    modes = {name: set(manifest(name).spec.modes) for name in NAMES}
    assert modes == {
        "echo": {Mode.SYNC, Mode.STREAMING, Mode.ASYNC},
        "iris": {Mode.SYNC, Mode.ASYNC},
        "slow-job": {Mode.ASYNC},
        "token-streamer": {Mode.SYNC, Mode.STREAMING},
        "batch-scorer": {Mode.SYNC, Mode.ASYNC},
        "tiny-chat": {Mode.STREAMING},
        "slow-load": {Mode.SYNC},
    }
    assert [name for name in NAMES if manifest(name).spec.openai is not None] == ["tiny-chat"]


# --- echo -----------------------------------------------------------------------------------------------------------


@with_example("echo")
def test_echo_returns_its_arguments(example: Example) -> None:
    args = {"text": "hello bundles", "n": [1, 2.5, None], "nested": {"ok": True}}
    assert example.predict(args).json() == args


@with_example("echo")
def test_echo_describes_a_raw_body(example: Example) -> None:
    body = b"\x00\x01 raw bytes from a url input"
    response = httpx.post(f"{example.url}/predict", content=body, headers={"X-Bundleserve-Input": "raw"}, timeout=30)
    assert response.json() == {"size": len(body), "sha256": hashlib.sha256(body).hexdigest()}


@with_example("echo")
def test_echo_streams_words(example: Example) -> None:
    assert [chunk for _, chunk in example.stream_timed({"text": "one two  three"})] == ["one", "two", "three"]


# --- iris -----------------------------------------------------------------------------------------------------------

SETOSA = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
VIRGINICA = {"sepal_length": 6.7, "sepal_width": 3.0, "petal_length": 5.2, "petal_width": 2.3}
VERSICOLOR = {"sepal_length": 5.9, "sepal_width": 2.8, "petal_length": 4.3, "petal_width": 1.3}


@with_example("iris")
@pytest.mark.parametrize(
    ("flower", "expected"), [(SETOSA, "setosa"), (VERSICOLOR, "versicolor"), (VIRGINICA, "virginica")]
)
def test_iris_answers_the_class_and_its_probabilities(
    example: Example, flower: dict[str, float], expected: str
) -> None:
    answer = example.predict(flower).json()
    probabilities = answer["probabilities"]
    assert answer["class"] == expected
    assert set(probabilities) == {"setosa", "versicolor", "virginica"}
    assert abs(sum(probabilities.values()) - 1) < 1e-4
    assert max(probabilities, key=probabilities.__getitem__) == expected and probabilities[expected] > 0.5


@with_example("iris")
def test_iris_names_a_missing_measurement_and_rejects_nonsense(example: Example) -> None:
    missing = example.predict({k: v for k, v in SETOSA.items() if k != "petal_width"})
    assert missing.status_code == 400 and "'petal_width'" in missing.json()["error"]["message"]
    negative = example.predict({**SETOSA, "petal_length": -1})
    assert negative.status_code == 500
    assert negative.json()["error"]["type"] == "ValueError" and "positive" in negative.json()["error"]["message"]


@with_example("iris")
def test_iris_declares_no_stream(example: Example) -> None:
    response = httpx.post(f"{example.url}/stream", json=SETOSA, timeout=30)
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"


# --- slow-job -------------------------------------------------------------------------------------------------------


@with_example("slow-job")
def test_slow_job_reports_progress_and_timings(example: Example) -> None:
    result = example.predict({"seconds": 0.3, "steps": 3, "label": "nightly"}).json()
    assert result["label"] == "nightly" and result["requested_seconds"] == 0.3
    assert [step["step"] for step in result["progress"]] == [1, 2, 3]
    assert [step["percent"] for step in result["progress"]] == [33.3, 66.7, 100.0]
    elapsed = [step["elapsed_seconds"] for step in result["progress"]]
    assert elapsed == sorted(elapsed) and result["elapsed_seconds"] >= 0.3
    assert result["started_at"] < result["finished_at"]


@with_example("slow-job")
def test_slow_jobs_wait_concurrently_on_the_event_loop(example: Example) -> None:
    start = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda n: example.predict({"seconds": 1.0, "steps": 2, "label": f"job-{n}"}), range(4)))
    wall = time.monotonic() - start
    assert [r.json()["label"] for r in results] == [f"job-{n}" for n in range(4)]
    assert wall < 3.0, f"4 one-second jobs took {wall:.2f}s: they ran one after another"


@with_example("slow-job")
def test_slow_job_uses_its_configured_duration_and_rejects_bad_ones(example: Example) -> None:
    assert example.endpoint.spec.bundle.env[0].name == "SLOW_JOB_SECONDS"
    bad = example.predict({"seconds": -1})
    assert bad.status_code == 500 and "seconds must be between" in bad.json()["error"]["message"]


# --- token-streamer -------------------------------------------------------------------------------------------------


@with_example("token-streamer")
def test_tokens_stream_incrementally_and_match_the_whole_answer(example: Example) -> None:
    args = {"prompt": "Tell me about bundles", "max_tokens": 8, "delay_seconds": 0.1}
    timed = example.stream_timed(args)
    tokens = [token for _, token in timed]
    assert len(tokens) == 8 and all(isinstance(token, str) for token in tokens)
    spread = timed[-1][0] - timed[0][0]
    assert spread >= 0.5, f"all tokens arrived within {spread:.3f}s: they were buffered, not streamed"
    whole = example.predict({**args, "delay_seconds": 0}).json()
    assert whole == {"text": "".join(tokens), "tokens": 8}
    other = example.predict({"prompt": "Something else", "max_tokens": 8, "delay_seconds": 0}).json()
    assert other["text"] != whole["text"]


@with_example("token-streamer")
def test_token_streamer_rejects_bad_arguments_before_the_first_token(example: Example) -> None:
    response = httpx.post(f"{example.url}/stream", json={"max_tokens": 0}, timeout=30)
    assert response.status_code == 500 and "max_tokens" in response.json()["error"]["message"]
    unknown = httpx.post(f"{example.url}/stream", json={"temperature": 0.7}, timeout=30)
    assert unknown.status_code == 400 and "'temperature'" in unknown.json()["error"]["message"]


# --- tiny-chat ------------------------------------------------------------------------------------------------------


@with_example("tiny-chat")
def test_tiny_chat_keeps_the_openai_bundle_contract(example: Example) -> None:
    """Pieces with text, the last one with finish_reason and usage (docs/bundles.md, "OpenAI-compatible models")."""
    messages = [{"role": "system", "content": "be kind"}, {"role": "user", "content": "hi there"}]
    pieces = [chunk for _, chunk in example.stream_timed({"messages": messages, "max_tokens": 16})]
    assert "".join(piece["text"] for piece in pieces) == "You said: hi there"
    assert [set(piece) for piece in pieces[:-1]] == [{"text"}] * 3
    assert pieces[-1]["finish_reason"] == "stop"
    assert pieces[-1]["usage"] == {"prompt_tokens": 4, "completion_tokens": 4}
    cut = [chunk for _, chunk in example.stream_timed({"prompt": "one two three", "max_tokens": 2})]
    assert "".join(piece["text"] for piece in cut) == "three two"
    assert cut[-1]["finish_reason"] == "length"
    neither = httpx.post(f"{example.url}/stream", json={"max_tokens": 2}, timeout=30)
    assert neither.status_code == 500 and "messages" in neither.json()["error"]["message"]


# --- batch-scorer ---------------------------------------------------------------------------------------------------


@with_example("batch-scorer")
def test_concurrent_calls_share_model_calls_and_a_bad_text_fails_alone(example: Example) -> None:
    texts: list[Any] = [f"review {n}" for n in range(15)] + [42]
    with ThreadPoolExecutor(len(texts)) as pool:
        responses = list(pool.map(lambda text: example.predict({"text": text}), texts))
    *good, bad = responses
    assert [r.status_code for r in good] == [200] * 15, [r.text for r in good]
    results = [r.json() for r in good]
    assert max(result["batch_size"] for result in results) > 1, results  # some calls shared one model call
    assert all(1 <= result["batch_size"] <= 16 for result in results)
    assert bad.status_code == 500
    assert bad.json()["error"] | {"traceback": None} == {
        "code": "model_error",
        "message": "text must be a string, not int",
        "type": "TypeError",
        "traceback": None,
    }
    # a batch of one scores like the per-call entrypoint would: the score depends on the text only
    again = example.predict({"text": "review 3"}).json()
    assert again["score"] == results[3]["score"]


@with_example("batch-scorer")
def test_batch_scorer_checks_each_call_against_the_entrypoint_signature(example: Example) -> None:
    response = example.predict({"txt": "typo"})
    assert response.status_code == 400
    assert response.json()["error"]["message"] == (
        "batch_scorer:predict: missing required argument 'text'; unexpected argument 'txt'"
    )


# --- slow-load ------------------------------------------------------------------------------------------------------


def test_slow_load_reports_when_it_loaded_and_when_its_first_call_came(monkeypatch: pytest.MonkeyPatch) -> None:
    """The module's contract, with a zero load time (the 20 s load runs on the real node: test_node_scenarios.py)."""
    monkeypatch.setenv("LOAD_SECONDS", "0")
    monkeypatch.syspath_prepend(str(EXAMPLES / "slow-load"))
    import slow_load  # type: ignore[import-not-found]

    model = slow_load.load()
    first, second = slow_load.predict(model, n=1), slow_load.predict(model, n=2)
    assert model["load_started_at"] <= first["loaded_at"] <= first["first_call_at"] == second["first_call_at"]
    assert (first["args"], second["args"]) == ({"n": 1}, {"n": 2})
