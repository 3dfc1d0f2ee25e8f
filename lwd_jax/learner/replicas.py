"""Ingest replicas: N gRPC servicers over one shared fleet store, exactly once by episode id; learners tail it.

Why: one learner process answering every robot is one machine's network, cores and disk. A replica is the
same `FleetServicer` with a different `persist`: it needs nothing from the learner but a shared directory
(a filesystem every replica and learner host mounts), so replicas are added or killed without the learner
noticing, and robots reach any of them through one address list (gRPC round-robin, failing over).

Layout under the shared root:

    store.json               what an upload is checked against (tasks, step limits, embodiment, images),
                             written by the learner; every replica reads it at start
    replicas/<name>/         one RLDS dataset per replica: its own writer lock, manifest and shards, so
                             replicas never contend for a file and each append stays O(1) (rlds_writer)
    commits/<id[:2]>/<id>    an episode id's commit record {"replica", "shard", "digest"}, created once
    policies/                the learner's published blobs and CURRENT (every replica serves the newest)

The commit protocol (a replica, per upload): validate -> append the episode to its own dataset (durable)
-> hard-link a fully written record file to commits/.../<id> (link(2) is atomic and fails if the name
exists, on local filesystems and NFS alike) -> acknowledge. So:
  * the link won: the episode is stored once, at (replica, shard);
  * the link lost to a record with the same digest (a retry that reached two replicas, or one that raced
    a replica killed after its link but before its ack): the copy just appended is an orphan that readers
    skip, and the robot gets `duplicate`;
  * lost to another digest: ALREADY_EXISTS naming both, as for a single learner.
A replica killed between its append and its link leaves an orphan shard and no record; the robot had no ack,
so it resends (to any replica), and that one commits. The record, not the shard, is the truth.

Reading (`StoreTail`, on each learner host): per replica, the manifest's new lines from a byte offset; the
episode of each new shard is delivered iff the commit record names that (replica, shard). A shard whose id
has no record yet is pending (its replica may be between append and link) and is checked again at the next
poll; one whose record names another copy is skipped. Every learner host tails the same store, so each holds
every episode (a multi-host learner samples its own rows from them).

What this does not do (yet): a restarted learner re-reads every committed episode (the single learner's
log-indexed restart is per dataset); an object store needs a link-or-fail primitive (GCS/S3 conditional
writes) in place of link(2).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from fleet_api.embodiment import UR5E, Embodiment
from fleet_api.schema import Episode
from fleet_api.wire import PARAMS_FORMAT_MSGPACK, PolicyBlob, episode_digest
from lwd_jax.data.rlds_reader import RLDSReader
from lwd_jax.data.rlds_writer import MANIFEST_NAME, RLDSWriter, fsync_path
from lwd_jax.learner.acked import DEFAULT_WINDOW, AckedIndex
from lwd_jax.learner.auth import TokenAuth, load_token_hashes
from lwd_jax.learner.heap import configure_allocator
from lwd_jax.learner.service import FleetServicer, ServerTLS, StoredElsewhere, serve

log = logging.getLogger(__name__)

SPEC_NAME = "store.json"
REPLICAS_DIR, COMMITS_DIR, POLICIES_DIR = "replicas", "commits", "policies"
CURRENT_NAME = "CURRENT"
KEEP_POLICIES = 3  # published blobs kept on disk (a replica may still be streaming the one before the newest)
_ID_OK = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


@dataclasses.dataclass(frozen=True)
class Commit:
    """Where an episode id's one stored copy is."""

    replica: str
    shard: int
    digest: str


def check_name(name: str, what: str) -> str:
    """Replica names and episode ids become file names: letters, digits, '_' and '-' only."""
    if not name or len(name) > 128 or not set(name) <= _ID_OK:
        raise ValueError(f"{what}: expected 1-128 of [A-Za-z0-9_-], got {name!r}")
    return name


class SharedStore:
    """Paths and commit records of one shared fleet store (pure file operations; no TensorFlow)."""

    def __init__(self, root: str | os.PathLike, durable: bool = True):
        self.root = os.path.abspath(os.fspath(root))
        self.durable = durable

    def replica_dir(self, name: str) -> str:
        return os.path.join(self.root, REPLICAS_DIR, check_name(name, "replica name"))

    def replicas(self) -> list[str]:
        d = os.path.join(self.root, REPLICAS_DIR)
        return sorted(n for n in os.listdir(d) if os.path.isdir(os.path.join(d, n))) if os.path.isdir(d) else []

    def commit_path(self, episode_id: str) -> str:
        check_name(episode_id, "episode id")
        return os.path.join(self.root, COMMITS_DIR, episode_id[:2], episode_id)

    def read_commit(self, episode_id: str) -> Commit | None:
        try:
            with open(self.commit_path(episode_id)) as f:
                rec = json.load(f)
        except FileNotFoundError:
            return None
        return Commit(rec["replica"], int(rec["shard"]), rec["digest"])

    def commit(self, episode_id: str, commit: Commit) -> Commit:
        """Makes `commit` the record of `episode_id` unless one exists; returns the record that stands."""
        final = self.commit_path(episode_id)
        os.makedirs(os.path.dirname(final), exist_ok=True)
        tmp = f"{final}.tmp-{commit.replica}-{os.getpid()}-{threading.get_ident()}"
        with open(tmp, "w") as f:
            json.dump(dataclasses.asdict(commit), f)
            f.flush()
            if self.durable:
                os.fsync(f.fileno())
        try:
            os.link(tmp, final)  # the commit point: atomic, and refused when the name exists
            won = True
        except FileExistsError:
            won = False
        finally:
            os.unlink(tmp)
        if won:
            if self.durable:
                fsync_path(os.path.dirname(final), directory=True)
            return commit
        stood = self.read_commit(episode_id)
        if stood is None:  # (a record is never removed; a vanished one is a damaged store)
            raise RuntimeError(f"shared store {self.root}: commit record of {episode_id} exists and vanished")
        return stood

    # -- the store's upload rules, written by the learner and read by every replica

    def write_spec(self, spec: dict[str, Any]) -> None:
        os.makedirs(self.root, exist_ok=True)
        tmp = os.path.join(self.root, f".{SPEC_NAME}.tmp-{os.getpid()}")
        with open(tmp, "w") as f:
            json.dump(spec, f, indent=1)
        os.replace(tmp, os.path.join(self.root, SPEC_NAME))

    def read_spec(self) -> dict[str, Any]:
        path = os.path.join(self.root, SPEC_NAME)
        try:
            with open(path) as f:
                return json.load(f)
        except FileNotFoundError:
            raise FileNotFoundError(f"shared store {self.root}: no {SPEC_NAME} (the learner writes it when it "
                                    "starts with online.ingest_replicas > 0)") from None


class ReplicaStore:
    """A replica's `persist`: append to its own RLDS dataset, then commit the id (see the module docstring)."""

    def __init__(self, store: SharedStore, name: str, *, known_tasks: dict[str, int] | None = None,
                 with_image: bool = False, embodiment: Embodiment = UR5E):
        self.store, self.name = store, check_name(name, "replica name")
        self.writer = RLDSWriter(store.replica_dir(name), durable=store.durable, known_tasks=known_tasks,
                                 with_image=with_image, embodiment=embodiment)
        self.orphans = 0  # copies appended whose id another copy had committed first

    def persist(self, ep: Episode) -> None:
        """Durable and committed when it returns; raises StoredElsewhere when the id was committed before (by
        this or another replica). The servicer serialises persist calls, so the shard just appended is ours."""
        digest = episode_digest(ep)
        stood = self.store.read_commit(ep.episode_id)  # cheap check first: no orphan copy for a plain re-send
        if stood is None:
            self.writer.append(ep)
            mine = Commit(self.name, self.writer.num_shards - 1, digest)
            stood = self.store.commit(ep.episode_id, mine)
            if stood == mine:
                return
            self.orphans += 1
        raise StoredElsewhere(ep.episode_id, stood.digest, f"by replica {stood.replica!r} (shard {stood.shard})")

    def close(self) -> None:
        self.writer.close()


class DirectoryPolicies:
    """Policies published through the shared directory: the learner `publish`es, every replica serves the
    newest (`__call__` is a servicer's params_provider). Why files: replicas then need no connection to the
    learner, and a restarted replica serves the current policy at once."""

    def __init__(self, store: SharedStore, format: str = PARAMS_FORMAT_MSGPACK):
        self.dir = os.path.join(store.root, POLICIES_DIR)
        self.durable = store.durable
        self._format = format
        self._blob: PolicyBlob | None = None
        self._stamp: tuple[int, int] | None = None
        self._lock = threading.Lock()

    def publish(self, version: int, data: bytes) -> PolicyBlob:
        blob = PolicyBlob.create(version, data, self._format)
        os.makedirs(self.dir, exist_ok=True)
        name = f"v{version:012d}.blob"
        self._write(name, data)
        self._write(CURRENT_NAME, name.encode())  # the switch: a reader sees the old or the new name, whole
        for old in sorted(n for n in os.listdir(self.dir) if n.endswith(".blob"))[:-KEEP_POLICIES]:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self.dir, old))
        return blob

    def _write(self, name: str, data: bytes) -> None:
        tmp = os.path.join(self.dir, f".{name}.tmp-{os.getpid()}")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            if self.durable:
                os.fsync(f.fileno())
        os.replace(tmp, os.path.join(self.dir, name))
        if self.durable:
            fsync_path(self.dir, directory=True)

    def __call__(self) -> PolicyBlob | None:
        current = os.path.join(self.dir, CURRENT_NAME)
        try:
            st = os.stat(current)
        except FileNotFoundError:
            return None
        with self._lock:
            if self._stamp == (st.st_mtime_ns, st.st_ino):
                return self._blob
            try:
                with open(current) as f:
                    name = f.read().strip()
                with open(os.path.join(self.dir, name), "rb") as f:
                    data = f.read()
            except FileNotFoundError:  # replaced between the two reads: the next call reads the newer one
                return self._blob
            version = int(name[1:].split(".")[0])
            if self._blob is None or version > self._blob.version:
                self._blob = PolicyBlob.create(version, data, self._format)
            self._stamp = (st.st_mtime_ns, st.st_ino)
            return self._blob


class StoreTail:
    """Delivers every committed episode of the shared store once, in each replica's commit order (`poll`).

    State is in memory (a replica's manifest byte offset and next shard; pending shards): a restarted
    learner starts from the beginning, which re-reads every stored episode once.
    """

    def __init__(self, store: SharedStore, embodiment: Embodiment = UR5E):
        self.store, self.embodiment = store, embodiment
        self._offset: dict[str, int] = {}
        self._next: dict[str, int] = {}
        self._pending: dict[tuple[str, int], str | None] = {}  # (replica, shard) -> episode id (None: not read yet)
        self.delivered = 0
        self.orphans = 0

    def _new_shards(self, replica: str) -> list[int]:
        path = os.path.join(self.store.replica_dir(replica), MANIFEST_NAME)
        try:
            with open(path, "rb") as f:
                f.seek(self._offset.get(replica, 0))
                data = f.read()
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n") + 1  # a torn last line is read again, whole, next time
        out = []
        for line in data[:end].split(b"\n")[:-1]:
            index = int(line.split()[0])
            if index >= self._next.get(replica, 0):
                out.append(index)
                self._next[replica] = index + 1
        self._offset[replica] = self._offset.get(replica, 0) + end
        return out

    def poll(self, deliver: Callable[[Episode], None]) -> int:
        """Reads what was committed since the last poll and calls `deliver(episode)` for each; returns how many."""
        n = 0
        for replica in self.store.replicas():
            todo = [(replica, s) for s in self._new_shards(replica)]
            todo += [k for k in self._pending if k[0] == replica]
            if not todo:
                continue
            shards = sorted({s for _, s in todo})
            reader = RLDSReader(self.store.replica_dir(replica), embodiment=self.embodiment, shards=shards)
            for shard, ep in zip(shards, reader.episodes(), strict=True):
                stood = self.store.read_commit(ep.episode_id)
                if stood is None:  # appended, not (yet) committed: its replica may be between the two
                    self._pending[(replica, shard)] = ep.episode_id
                    continue
                self._pending.pop((replica, shard), None)
                if (stood.replica, stood.shard) != (replica, shard):
                    self.orphans += 1
                    continue
                deliver(ep)
                n += 1
        self.delivered += n
        return n

    @property
    def pending(self) -> int:
        return len(self._pending)

    def run(self, deliver: Callable[[Episode], None], stop: threading.Event, period_s: float = 0.2) -> None:
        """poll() every `period_s` until `stop` is set, then once more (what was committed before the stop)."""
        while not stop.wait(period_s):
            try:
                self.poll(deliver)
            except Exception:  # a transient read error: logged, retried at the next poll
                log.exception("store tail: poll failed; retrying")
        self.poll(deliver)


def iter_commits(store: SharedStore) -> Iterator[tuple[str, Commit]]:
    """Every (episode id, commit record) of the store (an audit: O(episodes))."""
    base = os.path.join(store.root, COMMITS_DIR)
    if not os.path.isdir(base):
        return
    for sub in sorted(os.listdir(base)):
        for name in sorted(os.listdir(os.path.join(base, sub))):
            if ".tmp-" not in name:
                c = store.read_commit(name)
                if c is not None:
                    yield name, c


class ReplicaSet:
    """N local replica processes (`python -m lwd_jax.learner.replicas`), as the learner starts them for an embedded
    or single-host fleet; on a cluster the operator runs the same command on each ingest host instead."""

    def __init__(self, store: SharedStore, n: int, *, host: str = "127.0.0.1", tokens_file: str = "",
                 extra_tokens_file: str = "", tls_args: list[str] | None = None, log_dir: str | None = None):
        self.store, self.names, self.host = store, [f"r{i}" for i in range(n)], host
        self._args = [*(["--tokens-file", tokens_file] if tokens_file else []),
                      *(["--extra-tokens-file", extra_tokens_file] if extra_tokens_file else []),
                      *(tls_args or []), *([] if store.durable else ["--no-fsync"])]
        self.log_dir = log_dir or store.root
        self.procs: dict[str, Any] = {}

    def start(self, timeout_s: float = 300.0) -> list[str]:
        """Starts every replica and returns their "host:port" addresses once all listen."""
        import subprocess
        import sys

        for name in self.names:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.store.replica_dir(name) + ".address.json")
            with open(os.path.join(self.log_dir, f"replica-{name}.log"), "ab") as logf:
                self.procs[name] = subprocess.Popen(
                    [sys.executable, "-m", "lwd_jax.learner.replicas", "--store", self.store.root, "--name", name,
                     "--host", self.host, *self._args], stdout=logf, stderr=subprocess.STDOUT)
        out, t0 = [], time.monotonic()
        for name in self.names:
            path = self.store.replica_dir(name) + ".address.json"
            while not os.path.exists(path):
                if self.procs[name].poll() is not None or time.monotonic() - t0 > timeout_s:
                    raise RuntimeError(f"ingest replica {name} did not start; see {self.log_dir}/replica-{name}.log")
                time.sleep(0.1)
            with open(path) as f:
                out.append(f"{'127.0.0.1' if self.host in ('0.0.0.0', '[::]', '::') else self.host}:{json.load(f)['port']}")
        return out

    def alive(self) -> int:
        return sum(p.poll() is None for p in self.procs.values())

    def stop(self, timeout_s: float = 60.0) -> dict[str, int | None]:
        """SIGTERM (each finishes the uploads it is storing), then SIGKILL after `timeout_s`; exit codes."""
        import subprocess

        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        codes = {}
        for name, p in self.procs.items():
            try:
                codes[name] = p.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                p.kill()
                codes[name] = p.wait()
        return codes


# ------------------------------------------------------------------------------------------- the replica process


def main(argv: list[str] | None = None) -> int:
    """python -m lwd_jax.learner.replicas --store DIR --name r0 [--host H --port P --tokens-file F --tls-cert ...]

    One ingest replica: serves lwd.fleet.v1 on host:port, stores into DIR/replicas/<name>, commits ids in DIR,
    serves the policy the learner last published in DIR. Writes DIR/replicas/<name>.address.json once
    listening. SIGTERM: refuses new uploads, finishes the ones being stored, exits 0.
    """
    p = argparse.ArgumentParser(description=main.__doc__.split("\n")[0])
    p.add_argument("--store", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--tokens-file", default="", help="the robots' hashed tokens (lwd_jax.learner.auth), re-read on change")
    p.add_argument("--extra-tokens-file", default="", help="more hashed tokens, read once (an embedded fleet's)")
    p.add_argument("--tls-cert", default="")
    p.add_argument("--tls-key", default="")
    p.add_argument("--tls-client-ca", default="")
    p.add_argument("--no-fsync", action="store_true", help="skip fsyncs (tests and benchmarks of scratch data)")
    args = p.parse_args(argv)
    configure_allocator()  # before the gRPC threads: upload buffers would fragment their arenas (learner/heap.py)
    if not (args.tokens_file or args.extra_tokens_file):
        p.error("--tokens-file or --extra-tokens-file: a replica never serves robots without tokens")
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s replica {args.name} %(levelname)s %(message)s")
    store = SharedStore(args.store, durable=not args.no_fsync)
    spec = store.read_spec()
    embodiment = Embodiment.from_dict(spec["embodiment"], where=f"{SPEC_NAME} embodiment") if spec.get("embodiment") else UR5E
    tasks = {t: int(i) for t, i in spec["tasks"].items()}
    replica = ReplicaStore(store, args.name, known_tasks=tasks, with_image=bool(spec.get("with_image")),
                           embodiment=embodiment)
    extra = load_token_hashes(args.extra_tokens_file) if args.extra_tokens_file else {}
    auth = (TokenAuth(load_token_hashes(args.tokens_file), path=args.tokens_file, extra=extra) if args.tokens_file
            else TokenAuth(extra))
    servicer = FleetServicer(
        persist=replica.persist, known_tasks=tasks, max_steps=int(spec["max_steps"]),
        params_provider=DirectoryPolicies(store), auth=auth, embodiment=embodiment,
        seen_episode_ids=AckedIndex(window=DEFAULT_WINDOW),  # bounded RAM: the commit records know every id
        **{k: spec[k] for k in ("max_inflight_bytes", "max_streams_per_robot", "max_abs_reward") if k in spec},
    )
    tls = ServerTLS.from_files(args.tls_cert, args.tls_key, args.tls_client_ca or None) if args.tls_cert else None
    server = serve(servicer, port=args.port, host=args.host, tls=tls)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    address = {"host": args.host, "port": server.port, "pid": os.getpid(), "tls": tls is not None}
    tmp = store.replica_dir(args.name) + f".address.json.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(address, f)
    os.replace(tmp, store.replica_dir(args.name) + ".address.json")
    log.info("serving on %s:%d, storing into %s", args.host, server.port, replica.writer.data_dir)
    stop.wait()
    server.stop()
    replica.close()
    log.info("stopped (%d orphan copies this run)", replica.orphans)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
