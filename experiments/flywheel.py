"""`make flywheel`: the flywheel study (experiments/configs/flywheel.py) over several seeds, and its tables.

    python -m experiments.flywheel --seeds 0,1,2            # resumable: a seed with results.json is not rerun
    python -m experiments.flywheel --seeds 0 --smoke        # tiny nets and budgets (what the test runs)
    python -m experiments.flywheel --set agent.divl.tau_base_online=0.6 --root runs/flywheel_tau06 \
        --results results/flywheel/tau06                     # a variant: config overrides, its own dirs
    python -m experiments.flywheel --baseline HG-DAgger=runs/flywheel_hg ...   # + another root's online row

Per seed one `experiments.train` run (BC on the demos = SFT, critic warm-up + offline RL, the online stage
with the embedded fleet), all on one dataset loaded once. Every stage is evaluated on the same test scenes,
so the tables compare stages *pairwise*: per seed and pooled over seeds (episodes matched by seed, task and
scene), with McNemar's exact test and a paired-bootstrap interval of the success difference.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import shutil
import time
from typing import Any

import numpy as np

from experiments.configs.flywheel import get_config
from experiments.train import check_config, load_data, run
from lwd_jax.learner import eval_report
from lwd_jax.learner.eval_report import with_seed
from lwd_jax.learner.evaluation import load_episodes
from lwd_jax.sim.tasks import get_task

STAGES = ("pretrain", "offline", "online")
COMPARISONS = (("online", "offline"), ("online", "pretrain"), ("offline", "pretrain"))


def aggregate(root: str, seeds: list[int], tasks: list[str], baselines: dict[str, str] | None = None) -> dict[str, Any]:
    """Per-seed and pooled success and long-task step-wise score per stage, and the paired comparisons.

    `baselines` maps a row name to another study root run on the same seeds and test scenes (e.g. HG-DAgger:
    `--set online_learner=hg_dagger ... --root runs/flywheel_hg`); its online stage becomes a row, and LWD
    online is compared with it pairwise. A baseline whose scenes differ pairs nothing: that is an error."""
    baselines = baselines or {}
    eps = {s: {st: load_episodes(os.path.join(root, f"seed{s}"), st) for st in STAGES} for s in seeds}
    for name, spec in baselines.items():
        broot, stage = split_baseline(spec)
        for s in seeds:
            eps[s][name] = load_episodes(os.path.join(broot, f"seed{s}"), stage)
    long_tasks = {t for t in tasks if get_task(t).is_long}
    out: dict[str, Any] = {"seeds": seeds, "tasks": tasks, "per_seed": {}, "pooled": {}, "paired": {},
                           "baselines": dict(baselines)}
    present = [st for st in (*STAGES, *baselines) if all(eps[s][st] for s in seeds)]  # HG-DAgger has no "offline"
    out["stages"] = present
    for st in present:
        per_seed = [float(np.mean([e.success for e in eps[s][st]])) for s in seeds]
        pooled = [e for s in seeds for e in eps[s][st]]
        k = sum(e.success for e in pooled)
        lo, hi = eval_report.wilson_interval(k, len(pooled))
        long_score = [e.subgoal_frac for e in pooled if e.task in long_tasks]
        out["per_seed"][st] = per_seed
        out["pooled"][st] = {
            "success": k / len(pooled), "success_lo": lo, "success_hi": hi, "episodes": len(pooled),
            "seed_mean": float(np.mean(per_seed)), "seed_std": float(np.std(per_seed)),
            "long_score": float(np.mean(long_score)) if long_score else float("nan"),
            "per_task": {t: float(np.mean([e.success for e in pooled if e.task == t])) for t in tasks},
        }
    for a, b in (*COMPARISONS, *(("online", name) for name in baselines)):
        if a not in present or b not in present:
            continue
        pooled_pairs = eval_report.paired_success(
            [e for s in seeds for e in with_seed(eps[s][a], s)], [e for s in seeds for e in with_seed(eps[s][b], s)])
        if b in baselines and not pooled_pairs["n"]:
            raise ValueError(f"flywheel: baseline {b!r} ({baselines[b]}) shares no test scene with {root}; "
                             "run it with the same seeds and eval.seed")
        out["paired"][f"{a} vs {b} (pooled)"] = pooled_pairs
        long_a = [e for s in seeds for e in with_seed(eps[s][a], s) if e.task.split(":", 1)[1] in long_tasks]
        long_b = [e for s in seeds for e in with_seed(eps[s][b], s) if e.task.split(":", 1)[1] in long_tasks]
        out["paired"][f"{a} vs {b} (pooled, long tasks)"] = eval_report.paired_success(long_a, long_b)
        for s in seeds:
            out["paired"][f"{a} vs {b} (seed {s})"] = eval_report.paired_success(eps[s][a], eps[s][b])
    return out


def split_baseline(spec: str) -> tuple[str, str]:
    """"ROOT" or "ROOT:STAGE" -> (root, stage); the stage defaults to "online" (a baseline's fleet stage)."""
    root, sep, stage = spec.rpartition(":")
    return (root, stage) if sep and stage in STAGES else (spec, "online")


def apply_overrides(cfg: Any, overrides: list[str]) -> None:
    """`key.path=value` pairs onto a locked ConfigDict; values parse as Python literals (else strings). An
    unknown key is an error naming it (ConfigDict refuses new keys), so a typo never runs the base protocol."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set {item!r}: expected key.path=value")
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        *parents, leaf = key.split(".")
        node = cfg
        for p in parents:
            node = node[p]
        if leaf not in node:
            raise ValueError(f"--set {item!r}: config has no field {key!r}")
        node[leaf] = type(node[leaf])(value) if isinstance(node[leaf], float) and isinstance(value, int) else value


def markdown(agg: dict[str, Any]) -> str:
    """The study's tables: success per stage (pooled Wilson CI, seed mean ± std, per task) and the paired tests."""
    tasks = agg["tasks"]
    lines = [f"Seeds {agg['seeds']}; {agg['pooled']['pretrain']['episodes']} evaluation episodes per stage "
             "(pooled over seeds, the same test scenes for every stage).", "",
             "| stage | success [95% CI] | seed mean ± std | long-task step-wise score | "
             + " | ".join(tasks) + " |", "|---" * (4 + len(tasks)) + "|"]
    names = {"pretrain": "SFT (BC on demos)", "offline": "LWD offline", "online": "LWD online"}
    for st in agg["stages"]:
        p = agg["pooled"][st]
        lines.append(f"| {names.get(st, st)} | {p['success']:.3f} [{p['success_lo']:.3f}, {p['success_hi']:.3f}] | "
                     f"{p['seed_mean']:.3f} ± {p['seed_std']:.3f} | {p['long_score']:.3f} | "
                     + " | ".join(f"{p['per_task'][t]:.2f}" for t in tasks) + " |")
    return "\n".join(lines) + "\n\n" + eval_report.paired_markdown(agg["paired"]) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Runs the missing seeds, then writes flywheel.json / flywheel.md (and the curves) under --results."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--smoke", action="store_true", help="tiny nets and budgets (tests)")
    ap.add_argument("--root", default="runs/flywheel")
    ap.add_argument("--results", default="results/flywheel")
    ap.add_argument("--offline-dir", default=None, help="the offline RLDS dataset (default: the config's)")
    ap.add_argument("--tasks", default=None, help="comma-separated tasks (default: the config's four)")
    ap.add_argument("--set", dest="overrides", action="append", default=[],
                    help="a config override key.path=value (repeatable), e.g. agent.divl.tau_base_online=0.6")
    ap.add_argument("--baseline", action="append", default=[], metavar="NAME=ROOT[:STAGE]",
                    help="another study root on the same seeds and test scenes whose online (or STAGE) evaluation "
                         "is a row (e.g. HG-DAgger=runs/flywheel_hg); LWD online is compared with it pairwise")
    args = ap.parse_args(argv)
    baselines = {}
    for item in args.baseline:
        name, sep, broot = item.partition("=")
        if not sep or not name or not os.path.isdir(split_baseline(broot)[0]):
            ap.error(f"--baseline {item!r}: expected NAME=ROOT[:STAGE] with ROOT an existing study root")
        baselines[name] = broot
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    variant = "smoke" if args.smoke else ""
    base = get_config(variant)
    if args.offline_dir:
        base.data.offline_dir = args.offline_dir
    if args.tasks:
        base.tasks = args.tasks
    apply_overrides(base, args.overrides)
    tasks = check_config(base)
    data = load_data(base, tasks)
    for seed in seeds:
        cfg = get_config(variant)
        cfg.data.offline_dir, cfg.tasks = base.data.offline_dir, base.tasks
        apply_overrides(cfg, args.overrides)
        cfg.seed, cfg.workdir = seed, os.path.join(args.root, f"seed{seed}")
        if os.path.exists(os.path.join(cfg.workdir, "results.json")):
            continue
        t0 = time.time()
        print(f"\n=== flywheel: seed {seed} -> {cfg.workdir}", flush=True)
        run(cfg, data)
        with open(os.path.join(cfg.workdir, "timing.json"), "w") as f:
            json.dump({"seconds": time.time() - t0}, f)
    agg = aggregate(args.root, seeds, tasks, baselines)
    os.makedirs(args.results, exist_ok=True)
    with open(os.path.join(args.results, "flywheel.json"), "w") as f:
        json.dump(agg, f, indent=1)
    md = markdown(agg)
    with open(os.path.join(args.results, "flywheel.md"), "w") as f:
        f.write(md)
    for seed in seeds:  # the per-seed learning curves (fleet success vs fleet episodes, versions marked)
        src = os.path.join(args.root, f"seed{seed}", "success_vs_fleet_episodes.png")
        if os.path.exists(src):
            shutil.copy(src, os.path.join(args.results, f"success_vs_fleet_episodes_seed{seed}.png"))
    print(md, flush=True)
    return agg


if __name__ == "__main__":
    main()
