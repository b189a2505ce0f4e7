"""The image cache key covers what the builds read, so a change that alters an image rebuilds it (images.py)."""

from __future__ import annotations

import re
from pathlib import Path

from bundleserve.controller.config import DEFAULT_IMAGE
from tests.support import images
from tests.support.processes import REPO


def _copy_sources(dockerfile: Path) -> list[Path]:
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    found = []
    for line in text.splitlines():
        words = line.split()
        if words and words[0] == "COPY" and not words[1].startswith("--from"):
            found += [REPO / source for source in words[1:-1]]
    return found


def test_every_file_a_dockerfile_copies_is_in_the_key() -> None:
    keyed = set(images.context_files())
    copied: set[Path] = set()
    for dockerfile in (images.DOCKERFILE, images.EXAMPLES_DOCKERFILE):
        assert dockerfile in keyed
        for source in _copy_sources(dockerfile):
            assert source.exists(), f"{dockerfile.name} copies {source}, which does not exist"
            copied |= {p for p in source.rglob("*") if p.is_file()} if source.is_dir() else {source}
    copied = {p for p in copied if "__pycache__" not in p.parts and ".egg-info" not in str(p)}
    assert copied, "no COPY found"
    assert not copied - keyed, f"not in the cache key: {sorted(copied - keyed)}"


def test_the_key_follows_the_base_and_is_stable_otherwise() -> None:
    assert images.images_key("a") == images.images_key("a")
    assert images.images_key("a") != images.images_key("b")


def test_the_base_is_the_debian_release_the_dockerfile_names() -> None:
    default = next(line for line in images.DOCKERFILE.read_text().splitlines() if line.startswith("ARG PYTHON_IMAGE="))
    assert default.endswith(f"-slim-{images.base_suite()}")


def test_the_image_names_are_those_the_operator_and_the_examples_use() -> None:
    assert images.BUNDLESERVE_IMAGE == DEFAULT_IMAGE
    for manifest in REPO.glob("examples/*/endpoint.yaml"):
        assert f"image: {images.EXAMPLES_IMAGE}" in manifest.read_text(), manifest


def test_pruning_keeps_the_named_images_and_what_the_build_made_or_reused() -> None:
    # buildah pads the columns of `images --format`: the base image, named but not in the build's output, was once
    # removed because its padded name did not compare equal (and mmdebstrap had to make it again).
    base, made, reused, old = "a" * 64, "b" * 64, "c" * 64, "d" * 64
    listing = (
        f"sha256:{base}   localhost/bundleserve-base:0123\n"
        f"sha256:{made}   <none>:<none>\n"
        f"sha256:{reused}   <none>:<none>\n"
        f"sha256:{old}   <none>:<none>\n"
    )
    output = f"STEP 1/2: FROM x\n--> Using cache {reused}\n--> {reused[:11]}\nSTEP 2/2: RUN y\n--> {made[:11]}\n"
    keep = {"localhost/bundleserve-base:0123"}
    assert images.stale_images(output, listing, keep) == [old]
