"""The method comparison: SFT, HG-DAgger, RECAP, HIL-SERL/RLPD, LWD offline/online (best-of-16 under DIVL, the
main job), LWD-QAM (the paper's extraction) and LWD's ablations, over several seeds, on one shared SFT
checkpoint per seed, on the flywheel protocol; tables in the shape of the LWD paper's Table I.

    make benchmark                                                   # CPU: experiments/configs/benchmark.py
    python -m experiments.benchmark --config=experiments/configs/benchmark.py --config.methods=LWD,RECAP

Reads top to bottom: for each seed, BC pretraining on the demonstrations (the SFT row; its checkpoint is
every method's start), then each method as a run of experiments/train.py with the method's overrides; then
`aggregate` pools the per-run evaluations (JSON on disk, so a rerun skips what is done) into
results/benchmark/{benchmark.json, benchmark.md, <method>.png}.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from experiments.cli import ConfigError, config_main
from experiments.configs import benchmark as bench_cfg
from experiments.configs.multitask import get_config
from experiments.train import check_config, data_settings, load_data, run
from lwd_jax.learner.eval_report import EpisodeResult, paired_markdown, paired_success, wilson_interval, with_seed
from lwd_jax.learner.evaluation import load_episodes
from lwd_jax.learner.local_fleet import plan_fleet
from lwd_jax.learner.online import fleet_log_path
from lwd_jax.learner.plots import trailing_mean
from lwd_jax.sim.tasks import get_task

SFT = "SFT"
# Table I rows: (row name, method run, which evaluation of that run)
TABLE_ROWS = (
    (SFT, SFT, "pretrain"),
    ("HG-DAgger", "HG-DAgger", "online"),
    ("RECAP", "RECAP", "online"),
    ("HIL-SERL/RLPD", "HIL-SERL/RLPD", "online"),
    ("LWD offline", "LWD", "offline"),
    ("LWD online", "LWD", "online"),
    ("LWD-QAM offline", "LWD-QAM", "offline"),
    ("LWD-QAM online", "LWD-QAM", "online"),
)
# Paired comparisons (same test scenes, pooled over seeds) the note and the table report: (row a, row b).
PAIRED = (("LWD online", "LWD offline"), ("LWD online", SFT), ("LWD offline", SFT), ("LWD online", "HG-DAgger"),
          ("LWD online", "RECAP"), ("LWD online", "HIL-SERL/RLPD"), ("LWD online", "LWD-QAM online"),
          ("LWD-QAM online", SFT), ("LWD-QAM offline", SFT))


def is_bc_reference(method: str) -> bool:
    """A method whose run stops after BC pretraining (no offline RL): its row is its own "pretrain" evaluation (the BC flow)."""
    spec = bench_cfg.METHODS.get(method, {})
    return spec.get("stage") == "offline" and spec.get("offline_steps") == 0


# Ablation rows, each against LWD's own row of the stage it changes: (row, method run, evaluation, reference row)
ABLATION_ROWS = tuple(
    (m, m, "pretrain" if is_bc_reference(m) else spec["stage"].replace("all", "online"),
     "LWD offline" if spec["stage"] == "offline" else "LWD online")
    for m, spec in bench_cfg.ABLATIONS.items()
)
ONLINE_METHODS = tuple(m for m, spec in bench_cfg.METHODS.items() if spec.get("stage") == "all")


def slug(name: str) -> str:
    """A directory-safe name for a method ("HIL-SERL/RLPD" -> "hil-serl_rlpd")."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name.lower()).replace("__", "_").strip("_")


def parse_extra(extra: str) -> dict[str, Any]:
    """"a.b=3;c=x,y" -> {"a.b": 3, "c": "x,y"} (values parsed as JSON when they are JSON, else kept as text)."""
    out: dict[str, Any] = {}
    for item in filter(None, (x.strip() for x in extra.split(";"))):
        if "=" not in item:
            raise ValueError(f"config.extra: expected key=value items, got {item!r}")
        k, v = item.split("=", 1)
        try:
            out[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            out[k.strip()] = v
    return out


def run_config(bcfg: ml_collections.ConfigDict, seed: int, method: str) -> ml_collections.ConfigDict:
    """The experiments/configs/multitask.py config of one (seed, method) run."""

    cfg = get_config("")  # every method on the main job (the flywheel protocol), then BASE and the method overrides
    flat = dict(bench_cfg.overrides(bcfg.variant))
    if method != SFT:
        flat.update(bench_cfg.METHODS[method])
        flat.setdefault("init_from", workdir(bcfg, seed, SFT))  # "" in a method: it trains its own BC flow
    flat.update(parse_extra(bcfg.extra))
    if method == SFT:  # BC pretraining only, whatever `extra` says of the later stages
        flat.update({"stage": "offline", "critic_warmup_steps": 0, "offline_steps": 0, "online_steps": 0})
    flat.update({"seed": int(seed), "workdir": workdir(bcfg, seed, method), "data.offline_dir": bcfg.offline_dir})
    for key, value in flat.items():
        parent = cfg
        *path, leaf = key.split(".")
        for p in path:
            parent = parent[p]
        if leaf not in parent:
            raise ValueError(f"benchmark override {key!r}: no such field in experiments/configs/multitask.py")
        parent[leaf] = tuple(value) if isinstance(value, list) else value
    return cfg


def workdir(bcfg: ml_collections.ConfigDict, seed: int, method: str) -> str:
    return os.path.join(bcfg.root, f"seed{seed}", slug(method))


def run_benchmark(bcfg: ml_collections.ConfigDict) -> dict[str, Any]:
    """Every (seed, method) run that has no results yet, then the aggregate tables and plots."""

    methods = list(bench_cfg.METHODS) if bcfg.methods == "all" else [m.strip() for m in bcfg.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in bench_cfg.METHODS]
    if unknown:
        raise ConfigError(f"config.methods: unknown {unknown}; known: {list(bench_cfg.METHODS)} or 'all'")
    t_start = time.time()
    loaded: dict[tuple, Any] = {}  # the offline data of the last setting, read once for every run that shares it
    for seed in bcfg.seeds:
        for method in [SFT, *methods]:
            cfg = run_config(bcfg, seed, method)
            done = os.path.join(cfg.workdir, "results.json")
            if os.path.exists(done):
                continue
            if cfg.init_from:  # the shared SFT evaluation: every run would otherwise repeat it
                os.makedirs(os.path.join(cfg.workdir, "evals"), exist_ok=True)
                src = os.path.join(workdir(bcfg, seed, SFT), "evals", "pretrain.json")
                shutil.copy(src, os.path.join(cfg.workdir, "evals", "pretrain.json"))
            print(f"\n=== benchmark: seed {seed}, {method} -> {cfg.workdir}", flush=True)
            t0 = time.time()
            key = data_settings(cfg)
            if key not in loaded:
                loaded.clear()  # keep at most one dataset in memory
                loaded[key] = load_data(cfg, check_config(cfg))
            run(cfg, loaded[key])
            with open(os.path.join(cfg.workdir, "timing.json"), "w") as f:
                json.dump({"seconds": time.time() - t0}, f)
    print(f"benchmark: runs took {(time.time() - t_start) / 60:.1f} min", flush=True)
    return aggregate(bcfg, methods)


# ================================================================================================ aggregation
def _load(bcfg, seed: int, method: str) -> dict[str, Any] | None:
    path = os.path.join(workdir(bcfg, seed, method), "results.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def pool(per_seed: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Per-task summaries of several seeds -> one per task: success pooled over every episode (Wilson
    interval on the pooled count), step-wise score and cycle time averaged over seeds' episodes."""
    out = {}
    for task in per_seed[0]:
        ss = [s[task] for s in per_seed if task in s]
        n = sum(int(s["episodes"]) for s in ss)
        wins = sum(round(s["success_rate"] * s["episodes"]) for s in ss)
        lo, hi = wilson_interval(wins, n)
        ct = [(s["cycle_time_success"], round(s["success_rate"] * s["episodes"])) for s in ss if s["success_rate"] > 0]
        out[task] = {
            "episodes": n,
            "success_rate": wins / n,
            "success_lo": lo,
            "success_hi": hi,
            "stepwise_score": float(np.average([s["stepwise_score"] for s in ss], weights=[s["episodes"] for s in ss])),
            "cycle_time_success": float(sum(c * w for c, w in ct) / sum(w for _, w in ct)) if ct else float("nan"),
            "cycle_time_all": float(np.average([s["cycle_time_all"] for s in ss], weights=[s["episodes"] for s in ss])),
        }
    return out


def group_means(per_seed: list[dict[str, dict[str, float]]], tasks: list[str]) -> dict[str, float]:
    """Mean over `tasks` of success / score / cycle time, per seed, then mean and std over seeds."""
    out = {}
    for key in ("success_rate", "stepwise_score", "cycle_time_all"):
        if not tasks:  # e.g. a task list without long tasks
            out[key], out[key + "_seed_std"] = float("nan"), float("nan")
            continue
        vals = [float(np.mean([s[t][key] for t in tasks])) for s in per_seed]
        out[key] = float(np.mean(vals))
        out[key + "_seed_std"] = float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0
    return out


def aggregate(bcfg: ml_collections.ConfigDict, methods: list[str]) -> dict[str, Any]:
    """Reads every finished run and writes benchmark.json, benchmark.md and one PNG per method."""

    tasks = [t for t in bench_cfg.overrides(bcfg.variant)["tasks"].split(",")]
    extra_tasks = parse_extra(bcfg.extra).get("tasks")
    if extra_tasks:
        tasks = extra_tasks.split(",")
    long_tasks = [t for t in tasks if get_task(t).is_long]
    short_tasks = [t for t in tasks if t not in long_tasks]
    rows: dict[str, Any] = {}
    for row, method, evaluation, *_ in TABLE_ROWS + ABLATION_ROWS:
        if row in rows or (method != SFT and method not in methods):
            continue
        per_seed, seeds = [], []
        for seed in bcfg.seeds:
            res = _load(bcfg, seed, method)
            if res and res.get(evaluation):
                per_seed.append(res[evaluation])
                seeds.append(int(seed))
        if not per_seed:
            continue
        rows[row] = {
            "method": method, "evaluation": evaluation, "seeds": seeds, "per_task": pool(per_seed),
            "average": group_means(per_seed, tasks), "average_short": group_means(per_seed, short_tasks),
            "average_long": group_means(per_seed, long_tasks), "per_seed": per_seed,
        }
    seconds = {}
    for method in [SFT, *methods]:
        ts = []
        for seed in bcfg.seeds:
            path = os.path.join(workdir(bcfg, seed, method), "timing.json")
            if os.path.exists(path):
                with open(path) as f:
                    ts.append(json.load(f)["seconds"])
        if ts:
            seconds[method] = {"runs": len(ts), "mean_s": float(np.mean(ts)), "total_s": float(np.sum(ts))}
    paired = {}
    for a, b in PAIRED + tuple((n, ref) for n, _, _, ref in ABLATION_ROWS):
        if a in rows and b in rows:
            ea, eb = row_episodes(bcfg, rows[a]), row_episodes(bcfg, rows[b])
            paired[f"{a} vs {b}"] = paired_success(ea, eb)
            paired[f"{a} vs {b} (long tasks)"] = paired_success(*(
                [e for e in eps if e.task.split(":", 1)[1] in long_tasks] for eps in (ea, eb)))
    out = {"tasks": tasks, "long_tasks": long_tasks, "seeds": list(bcfg.seeds), "rows": rows, "seconds": seconds,
           "paired": paired,
           "critic_probe": critic_probes(bcfg, methods),
           "overrides": {**bench_cfg.overrides(bcfg.variant), **parse_extra(bcfg.extra)},
           "methods": {m: bench_cfg.METHODS[m] for m in methods}}
    os.makedirs(bcfg.results_dir, exist_ok=True)
    with open(os.path.join(bcfg.results_dir, "benchmark.json"), "w") as f:
        json.dump(out, f, indent=1)
    md = markdown(out)
    with open(os.path.join(bcfg.results_dir, "benchmark.md"), "w") as f:
        f.write(md + "\n")
    for method in ONLINE_METHODS:
        if method in methods:
            plot_method(bcfg, method, rows, tasks)
    if rows:
        plot_summary(rows, os.path.join(bcfg.results_dir, "methods.png"))
    print(md, flush=True)
    return out


def row_episodes(bcfg: ml_collections.ConfigDict, row: dict[str, Any]) -> list[EpisodeResult]:
    """Every evaluation episode of a table row over its seeds, the seed in the task key ("<seed>:<task>") so
    that pairs match within a seed (every method of a seed meets the same test scenes)."""
    return [e for seed in row["seeds"]
            for e in with_seed(load_episodes(workdir(bcfg, seed, row["method"]), row["evaluation"]), seed)]


PROBE_KEYS = ("q_success_auroc", "q_mc_spearman", "q_mc_pearson", "q_minus_mc_mean", "q_policy_minus_base",
              "best_of_n_success", "policy_success")


def critic_probes(bcfg: ml_collections.ConfigDict, methods: list[str]) -> dict[str, dict[str, dict[str, float]]]:
    """method -> stage ("offline"/"online") -> PROBE_KEYS averaged over seeds (+ "seeds"), from each run's
    probe.json (lwd_jax/learner/critic_probe.py: how well the critic ranks the offline data, and how far the
    extraction moved the policy) and its results.json (the best-of-N probe's success beside the policy's, on
    the same scenes: whether the critic ranks actions within a state)."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for method in methods:
        per_stage: dict[str, list[dict[str, float]]] = {}
        for seed in bcfg.seeds:
            path = os.path.join(workdir(bcfg, seed, method), "probe.json")
            if not os.path.exists(path):
                continue
            res = _load(bcfg, seed, method) or {}
            with open(path) as f:
                for stage, stats in json.load(f).items():
                    probe = next((v for k, v in res.items() if k.startswith(f"{stage} best-of-")), None)
                    if probe:
                        stats["best_of_n_success"] = float(np.mean([t["success_rate"] for t in probe.values()]))
                    if res.get(stage):
                        stats["policy_success"] = float(np.mean([t["success_rate"] for t in res[stage].values()]))
                    per_stage.setdefault(stage, []).append(stats)
        if per_stage:
            out[method] = {stage: {"seeds": len(ss), **{k: _nanmean([s.get(k, np.nan) for s in ss]) for k in PROBE_KEYS}}
                           for stage, ss in per_stage.items()}
    return out


def _nanmean(xs: list[float]) -> float:
    """Mean of the finite values; NaN (no warning) when a probe is absent in every seed (e.g. no best-of-N)."""
    finite = [float(x) for x in xs if np.isfinite(x)]
    return float(np.mean(finite)) if finite else float("nan")


def _fmt(x: float, nd: int = 2) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"


def markdown(out: dict[str, Any]) -> str:
    """Table I shape (methods x tasks + averages) for success, step-wise score and long-task cycle time,
    then the ablations, then the wall-clock cost per method."""
    tasks, long_tasks, rows = out["tasks"], set(out["long_tasks"]), out["rows"]
    short = "".join("S" if t not in long_tasks else "L" for t in tasks)
    lines = [f"Seeds {out['seeds']}; tasks (S short, L long): " + ", ".join(f"{t} ({k})" for t, k in zip(tasks, short, strict=True)), ""]

    def table(title: str, names: list[str], key: str, nd: int, interval: bool) -> None:
        lines.append(f"**{title}**")
        lines.append("")
        lines.append("| method | " + " | ".join(tasks) + " | average | avg short | avg long |")
        lines.append("|---" * (len(tasks) + 4) + "|")
        for name in names:
            r = rows[name]
            cells = []
            for t in tasks:
                s = r["per_task"].get(t)
                if s is None:
                    cells.append("–")
                elif interval:
                    cells.append(f"{_fmt(s[key], nd)} [{_fmt(s['success_lo'], nd)}, {_fmt(s['success_hi'], nd)}]")
                else:
                    cells.append(_fmt(s[key], nd))
            avgs = [f"{_fmt(r[g][key], nd)} ± {_fmt(r[g][key + '_seed_std'], nd)}" for g in ("average", "average_short", "average_long")]
            partial = len(r["seeds"]) < len(out["seeds"])  # a benchmark still running, or resumed for some rows
            label = f"{name} (seeds {', '.join(map(str, r['seeds']))} only)" if partial else name
            lines.append(f"| {label} | " + " | ".join(cells + avgs) + " |")
        lines.append("")

    main = [n for n, _, _ in TABLE_ROWS if n in rows]
    table("Success rate (pooled over seeds; per task: 95% Wilson interval; averages: mean ± std over seeds)", main,
          "success_rate", 2, True)
    table("Step-wise score (fraction of sub-goals reached)", main, "stepwise_score", 2, False)
    table("Cycle time in control steps (failures counted at the step budget)", main, "cycle_time_all", 0, False)
    abl = [n for n in ("LWD offline", "LWD online", *(r[0] for r in ABLATION_ROWS)) if n in rows]
    if len(abl) > 2:
        table("Ablations of LWD (each against LWD's row of the stage it changes): success rate", abl, "success_rate", 2, True)
        table("Ablations: step-wise score", abl, "stepwise_score", 2, False)
    if out.get("paired"):
        lines.append("**Paired comparisons** (success on the same test scenes, pooled over seeds)")
        lines.append("")
        lines.append(paired_markdown(out["paired"]))
        lines.append("")
    if out.get("critic_probe"):
        lines.append("**Critic probe** (Q̄ of each method's target critic on 2,048 offline transitions vs their Monte-Carlo "
                     "return; AUROC: successful vs failed episodes' transitions; mean over seeds)")
        lines.append("")
        lines.append("| method | stage | AUROC success | Spearman(Q̄, MC) | Pearson(Q̄, MC) | mean Q̄ − MC | "
                     "Q̄(policy) − Q̄(BC) | best-of-16 success | policy success |")
        lines.append("|---|---|---|---|---|---|---|---|---|")
        for m, stages in out["critic_probe"].items():
            for stage, s in stages.items():
                lines.append(f"| {m} | {stage} | " + " | ".join(_fmt(s[k]) for k in PROBE_KEYS) + " |")
        lines.append("")
    if out["seconds"]:
        lines.append("| run | runs | mean wall time per run (s) |")
        lines.append("|---|---|---|")
        for m, s in out["seconds"].items():
            lines.append(f"| {m} | {s['runs']} | {s['mean_s']:.0f} |")
        total = sum(s["total_s"] for s in out["seconds"].values())
        lines.append(f"\nTotal wall time of the runs: {total / 60:.1f} min.")
    return "\n".join(lines)


def plot_method(bcfg: ml_collections.ConfigDict, method: str, rows: dict[str, Any], tasks: list[str]) -> None:
    """Success rate vs fleet episodes of one method: each seed's trailing fleet success (robots without a
    human attendant) and the simulator evaluations before and after the fleet stage, pooled over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt


    fig, ax = plt.subplots(figsize=(6.5, 4), dpi=120)
    n_last = 0
    for k, seed in enumerate(bcfg.seeds):
        path = fleet_log_path(workdir(bcfg, seed, method))
        if not os.path.exists(path):
            continue
        cfg = run_config(bcfg, seed, method)
        specs = plan_fleet(cfg.online.num_robots, tasks, cfg.online.fleet_episodes, cfg.online.teleop_robots, cfg.seed)
        auto = {s.robot_id for s in specs if not s.teleop}
        with open(path) as f:
            eps = [json.loads(line) for line in f]
        n_last = max(n_last, len(eps))
        xs = [i + 1 for i, e in enumerate(eps) if e["robot_id"] in auto]
        ys = [float(e["success"]) for e in eps if e["robot_id"] in auto]
        if xs:
            ax.plot(xs, trailing_mean(ys, len(tasks)), color=f"C{k}", alpha=0.7, label=f"seed {seed}: fleet success (trailing {len(tasks)})")
    start_row = f"{method} offline" if f"{method} offline" in rows else SFT
    end_row = f"{method} online" if f"{method} online" in rows else method
    for x, row, color in ((0, start_row, "k"), (n_last, end_row, "C3")):
        if row in rows:
            s = rows[row]["average"]
            ax.errorbar([x], [s["success_rate"]], yerr=[[s["success_rate_seed_std"]], [s["success_rate_seed_std"]]],
                        fmt="o", capsize=4, color=color, label=f"eval {row}: {s['success_rate']:.2f} (± seed std)")
    ax.set_xlabel("fleet episodes")
    ax.set_ylabel("success rate")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    ax.set_title(f"{method}: success vs fleet episodes ({len(bcfg.seeds)} seeds)", fontsize=9)
    fig.tight_layout()
    fig.savefig(os.path.join(bcfg.results_dir, f"{slug(method)}.png"))
    plt.close(fig)


def plot_summary(rows: dict[str, Any], path: str) -> None:
    """Every row (Table I and ablations): average success on short and long tasks, error bars = seed std."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(rows)
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(6.5, 0.9 * len(names)), 4), dpi=120)
    for k, (group, label) in enumerate((("average_short", "short tasks"), ("average_long", "long tasks"))):
        m = [rows[n][group]["success_rate"] for n in names]
        e = [rows[n][group]["success_rate_seed_std"] for n in names]
        ax.bar(x + (k - 0.5) * 0.38, m, 0.38, yerr=e, capsize=3, label=label, color=f"C{k}")
    ax.set_xticks(x, names, rotation=30, ha="right", fontsize=7)
    ax.set_ylabel("success rate (mean over seeds ± std)")
    ax.set_ylim(0, 1)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    def with_cache(bcfg: ml_collections.ConfigDict) -> None:
        if bcfg.compilation_cache:
            jax.config.update("jax_compilation_cache_dir", bcfg.compilation_cache)
            jax.config.update("jax_persistent_cache_min_compile_time_secs", 2.0)
        run_benchmark(bcfg)

    config_main("experiments/configs/benchmark.py", "benchmark config", with_cache)


if __name__ == "__main__":
    main()
