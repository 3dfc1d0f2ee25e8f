"""Memory-bomb benchmark (issue 16, failure 3): what an authenticated attacker can make the learner hold.

Why: before the schema-derived bounds, one upload stream whose header declared a huge episode made the learner
buffer ~600 MB (RSS 844 -> 1432 MB) and 4 concurrent streams took it 918 -> 2922 MB. This mounts the same
attacks and a few neighbours against a real learner ingest path (FleetServicer + durable FleetStore over gRPC on
loopback, the serve config's limits) from a separate attacker process speaking raw protobuf, and records the
learner's RSS (sampled every 10 ms) before, at its peak during, and after each attack, with the status code
every stream got. Then one good episode must still land.

    python -m experiments.memory_bomb                 # -> results/memory_bomb.{json,md}

Attacks (each with 1 stream and with 4 concurrent streams, one robot per stream unless said):
- declared_huge: a header whose num_steps and field lengths declare ~600 MB.
- undeclared_image: a header adding camera frames (64x64x3 uint8 per step) to a store made without them.
- chunk_flood: a valid header, then 40 chunks of 15 MB that do not match it (600 MB offered per stream).
- oversize_message: a valid header, then one 64 MB chunk (beyond the server's message cap).
- held_open: one robot opens 8 uploads with valid headers and sends nothing more for 3 s (the stream limit).
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing as mp
import os
import tempfile
import threading
import time
import uuid
from typing import Any

import grpc
import numpy as np

from experiments.bench_ingest import BENCH_TASK, synthetic_episode
from experiments.soak import rss_mb, write_results
from fleet_api.protos import fleet_pb2, fleet_pb2_grpc
from fleet_api.wire import client_metadata, episode_to_messages
from lwd_jax.data.batching import InstructionTable
from lwd_jax.learner.auth import TokenAuth
from lwd_jax.learner.fleet_store import FleetStore
from lwd_jax.learner.service import (
    DEFAULT_MAX_INFLIGHT_BYTES,
    DEFAULT_MAX_STREAMS_PER_ROBOT,
    FleetServicer,
    serve,
)
from robot_bridge.client import LearnerClient

MAX_STEPS = 400  # the learner's step budget (the largest task budget of the bundled tasks is of this order)
ATTACK_BYTES = 600 << 20  # what each stream tries to make the learner hold (the measurement)
FLOOD_CHUNK = 15 << 20  # under the 16 MiB message cap
HOLD_S = 3.0
ATTACKS = ("declared_huge", "undeclared_image", "chunk_flood", "oversize_message", "held_open")
TOKEN = "bomb"
SAMPLE_S = 0.01
BEFORE = {"one stream": "844 -> 1432 MB (+588)", "four streams": "918 -> 2922 MB (+2004)"}  # the figures


def _valid_header(robot_id: str, steps: int) -> fleet_pb2.EpisodeHeader:
    ep = synthetic_episode(steps, np.random.default_rng(0), robot_id)
    first = next(iter(episode_to_messages(ep)))
    return first.header


def attack_messages(attack: str, robot_id: str, episode_id: str, release: threading.Event,
                    attack_bytes: int = ATTACK_BYTES, hold_s: float = HOLD_S):
    """The message stream of one attacking upload (lazy: the flood stops as soon as the learner aborts)."""
    header = _valid_header(robot_id, MAX_STEPS)
    header.episode_id = episode_id
    header.content_sha256 = ""
    if attack == "declared_huge":
        per_step = sum(int(np.prod(f.row_shape or [1])) * np.dtype(f.dtype).itemsize for f in header.fields)
        t = attack_bytes // per_step
        header.num_steps = t
        for f in header.fields:
            f.length = t if f.name in ("action", "reward", "intervention") else t + 1
        yield fleet_pb2.UploadEpisodeRequest(header=header)
        return
    if attack == "undeclared_image":
        header.fields.append(fleet_pb2.FieldSpec(name="observation/image", dtype="|u1", row_shape=[64, 64, 3],
                                                 length=MAX_STEPS + 1))
        yield fleet_pb2.UploadEpisodeRequest(header=header)
        return
    yield fleet_pb2.UploadEpisodeRequest(header=header)
    if attack == "chunk_flood":
        blob = os.urandom(FLOOD_CHUNK)
        for seq in range(max(1, attack_bytes // FLOOD_CHUNK)):
            yield fleet_pb2.UploadEpisodeRequest(chunk=fleet_pb2.StepChunk(
                seq=seq, start_step=0, num_steps=1,
                tensors=[fleet_pb2.Tensor(name="action", dtype="<f4", shape=[len(blob) // 4], data=blob)]))
    elif attack == "oversize_message":
        blob = os.urandom(64 << 20)
        yield fleet_pb2.UploadEpisodeRequest(chunk=fleet_pb2.StepChunk(
            seq=0, start_step=0, num_steps=1,
            tensors=[fleet_pb2.Tensor(name="action", dtype="<f4", shape=[len(blob) // 4], data=blob)]))
    elif attack == "held_open":
        release.wait(hold_s)


def _attacker(target: str, attack: str, streams: int, out: Any, attack_bytes: int, hold_s: float) -> None:
    """One process: `streams` concurrent attacking uploads; puts the status code names it got on `out`."""
    release = threading.Event()
    codes: list[str] = []
    lock = threading.Lock()
    opts = [("grpc.max_send_message_length", 128 << 20), ("grpc.max_receive_message_length", 16 << 20)]

    def one(i: int) -> None:
        robot = "bomber-0" if attack == "held_open" else f"bomber-{i}"
        with grpc.insecure_channel(target, options=opts) as ch:
            stub = fleet_pb2_grpc.FleetStub(ch)
            try:
                stub.UploadEpisode(attack_messages(attack, robot, uuid.uuid4().hex, release, attack_bytes, hold_s),
                                   metadata=client_metadata(robot, TOKEN), timeout=60.0)
                code = "OK"
            except grpc.RpcError as e:
                code = e.code().name
        with lock:
            codes.append(code)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.put(sorted(codes))


def _sample_peak(stop: threading.Event, peak: list[float]) -> None:
    """peak[0] = the largest RSS seen every SAMPLE_S until `stop` (a thread beside the attack)."""
    while not stop.wait(SAMPLE_S):
        peak[0] = max(peak[0], rss_mb(os.getpid()))


def offered_mb(attack: str, attack_bytes: int) -> float:
    """What one stream of `attack` declares or sends, MB (the learner must hold none of it)."""
    if attack == "undeclared_image":
        return (MAX_STEPS + 1) * 64 * 64 * 3 / 2**20  # declared: the frames it announces
    if attack == "oversize_message":
        return 64.0
    if attack == "held_open":
        return 0.0
    if attack == "chunk_flood":
        return max(1, attack_bytes // FLOOD_CHUNK) * FLOOD_CHUNK / 2**20
    return attack_bytes / 2**20


def run(root: str | None = None, attacks: tuple[str, ...] = ATTACKS, attack_bytes: int = ATTACK_BYTES,
        hold_s: float = HOLD_S) -> dict[str, Any]:
    """Every attack with 1 and 4 streams against one learner; returns the figures."""
    root = root or tempfile.mkdtemp(prefix="lwd-bomb-")
    table = InstructionTable(lambda texts: np.zeros((len(texts), 4), np.float32), 4)
    store = FleetStore(os.path.join(root, "rlds"), chunk_len=5, n_chunks=1, gamma=0.99, task_ids={BENCH_TASK: 0},
                       table=table, capacity=100_000, durable=True)
    seen = store.rebuild()
    robots = {f"bomber-{i}": TOKEN for i in range(8)}
    servicer = FleetServicer(persist=store.persist, on_accept=store.on_accept, known_tasks={BENCH_TASK: 0},
                             max_steps=MAX_STEPS, auth=TokenAuth.from_plain_tokens(robots), seen_episode_ids=seen)
    server = serve(servicer, host="127.0.0.1")
    target = f"127.0.0.1:{server.port}"
    ctx = mp.get_context("spawn")  # never fork a process that holds gRPC threads
    rows = []
    try:
        for attack in attacks:
            for streams in ((8,) if attack == "held_open" else (1, 4)):
                gc.collect()
                base = rss_mb(os.getpid())
                peak = [base]
                stop = threading.Event()

                sampler = threading.Thread(target=_sample_peak, args=(stop, peak), daemon=True)
                sampler.start()
                out = ctx.Queue()
                t0 = time.perf_counter()
                proc = ctx.Process(target=_attacker, args=(target, attack, streams, out, attack_bytes, hold_s))
                proc.start()
                codes = out.get(timeout=300)
                proc.join(60)
                seconds = time.perf_counter() - t0
                stop.set()
                sampler.join()
                gc.collect()
                rows.append({"attack": attack, "streams": streams, "codes": codes, "rss_before_mb": base,
                             "rss_peak_mb": peak[0], "rss_after_mb": rss_mb(os.getpid()), "seconds": seconds,
                             "offered_mb": offered_mb(attack, attack_bytes) * streams})
                print(json.dumps(rows[-1]), flush=True)
        # the learner still serves: one good episode lands
        good = synthetic_episode(50, np.random.default_rng(1), "bomber-7")
        with LearnerClient(target, "bomber-7", TOKEN) as client:
            ack = client.upload_episode(good)
        stored = store.writer.num_episodes
    finally:
        server.stop(0)
    return {"max_steps": MAX_STEPS, "max_inflight_bytes": DEFAULT_MAX_INFLIGHT_BYTES,
            "max_streams_per_robot": DEFAULT_MAX_STREAMS_PER_ROBOT, "attacks": rows, "before": BEFORE,
            "good_episode_after": {"acked": bool(ack.episode_id == good.episode_id and not ack.duplicate),
                                   "episodes_stored": stored}}


def markdown(res: dict[str, Any]) -> str:
    lines = ["| attack | streams | offered (MB) | status codes | learner RSS before / peak / after (MB) | growth at peak (MB) |",
             "|---|---|---|---|---|---|"]
    for r in res["attacks"]:
        codes = ", ".join(f"{c} ×{r['codes'].count(c)}" for c in sorted(set(r["codes"])))
        lines.append(f"| {r['attack']} | {r['streams']} | {r['offered_mb']:.0f} | {codes} | {r['rss_before_mb']:.0f} / "
                     f"{r['rss_peak_mb']:.0f} / {r['rss_after_mb']:.0f} | {r['rss_peak_mb'] - r['rss_before_mb']:+.0f} |")
    g = res["good_episode_after"]
    lines += ["", f"Before the bounds (issue 16): one stream {res['before']['one stream']}, four streams "
              f"{res['before']['four streams']}. After every attack a good episode was acked: {g['acked']} "
              f"(episodes stored: {g['episodes_stored']})."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="results/memory_bomb.json")
    args = p.parse_args(argv)
    res = run()
    write_results(res, args.out, markdown)
    return res


if __name__ == "__main__":
    main()
