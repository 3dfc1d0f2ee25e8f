"""Builds the Python gRPC stubs from the .proto files in this folder (never hand-written, never committed).

Why at import time: a fresh clone (or an edited .proto) must just work without a separate codegen step,
and stale stubs are a classic source of "field not found" bugs. The stubs go to `_generated/` beside
this file together with a stamp holding a content hash of the .proto sources and the tool versions;
they are rebuilt when the stamp does not match. The rebuild happens under a file lock into a temporary
folder that is renamed into place, so concurrent importers (multiprocessing uploaders, pytest workers)
never see a half-written package.

The protos are staged under `fleet_api/protos/_generated/` inside a scratch include root before
running protoc, so the generated `*_pb2_grpc.py` imports its messages as
`fleet_api.protos._generated.<name>_pb2` (no sys.path tricks).

Run `python -m fleet_api.protos [--force]` to (re)build explicitly, e.g. in a packaging step when
the installed package folder is read-only at run time.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.metadata
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent
GENERATED_NAME = "_generated"
GENERATED_DIR = PROTO_DIR / GENERATED_NAME
LOCK_PATH = PROTO_DIR / f"{GENERATED_NAME}.lock"
STAMP_NAME = "SOURCE_HASH"
# The package path protoc should see, so generated imports are fully qualified.
PACKAGE_PARTS = ("fleet_api", "protos", GENERATED_NAME)
PROTO_FILES = ("lwd_fleet.proto",)
# Generated code depends on these tool versions too, so they are part of the stamp.
VERSIONED_DISTS = ("grpcio-tools", "grpcio", "protobuf")


def source_hash() -> str:
    """sha256 over the .proto contents and the codegen/runtime versions."""
    h = hashlib.sha256()
    for name in PROTO_FILES:
        h.update(name.encode())
        h.update(b"\0")
        h.update((PROTO_DIR / name).read_bytes())
        h.update(b"\0")
    for dist in VERSIONED_DISTS:
        try:
            h.update(f"{dist}={importlib.metadata.version(dist)}".encode())
        except importlib.metadata.PackageNotFoundError:
            h.update(f"{dist}=?".encode())
    return h.hexdigest()


def is_fresh(digest: str | None = None) -> bool:
    """True when `_generated/` exists and was built from the current sources."""
    stamp = GENERATED_DIR / STAMP_NAME
    try:
        return stamp.read_text().strip() == (digest or source_hash())
    except OSError:
        return False


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    with open(LOCK_PATH, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _run_protoc(stage_root: Path, out_root: Path) -> None:
    from grpc_tools import protoc  # imported here: only needed when (re)building

    proto_include = Path(protoc.__file__).resolve().parent / "_proto"
    staged = stage_root.joinpath(*PACKAGE_PARTS)
    staged.mkdir(parents=True)
    for name in PROTO_FILES:
        shutil.copyfile(PROTO_DIR / name, staged / name)
    rel = [str(Path(*PACKAGE_PARTS) / name) for name in PROTO_FILES]
    args = [
        "grpc_tools.protoc",
        f"-I{stage_root}",
        f"-I{proto_include}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        *rel,
    ]
    # A child process, never protoc.main() in this one: grpc_tools bundles its own C++ protobuf, and in a
    # process that already loaded TensorFlow's the two clash and segfault (seen: the learner's first import
    # of these stubs, after the RLDS reader had loaded TensorFlow). cwd: protoc resolves names against it.
    proc = subprocess.run([sys.executable, "-m", *args], cwd=stage_root, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"protoc failed with exit code {proc.returncode} on {rel}: {proc.stderr.strip()}")


def build(force: bool = False) -> Path:
    """Ensures fresh stubs in `_generated/`; returns that folder. Safe to call from many processes."""
    digest = source_hash()
    if not force and is_fresh(digest):
        return GENERATED_DIR
    if not os.access(PROTO_DIR, os.W_OK):
        raise RuntimeError(
            f"gRPC stubs in {GENERATED_DIR} are missing or stale and {PROTO_DIR} is not writable; "
            "run `python -m fleet_api.protos` where the package is writable"
        )
    with _locked():
        if not force and is_fresh(digest):  # another process built them while we waited
            return GENERATED_DIR
        with tempfile.TemporaryDirectory(dir=PROTO_DIR, prefix=f".{GENERATED_NAME}-build-") as tmp:
            stage_root, out_root = Path(tmp) / "stage", Path(tmp) / "out"
            out_root.mkdir()
            _run_protoc(stage_root, out_root)
            built = out_root.joinpath(*PACKAGE_PARTS)
            (built / "__init__.py").write_text('"""Generated by fleet_api/protos/build_stubs.py; do not edit."""\n')
            (built / STAMP_NAME).write_text(digest + "\n")
            old = Path(tmp) / "old"
            if GENERATED_DIR.exists():
                GENERATED_DIR.rename(old)
            built.rename(GENERATED_DIR)
    return GENERATED_DIR
