"""Evaluation statistics and reports: per-episode records, per-task summaries with 95% intervals, averages
over tasks, markdown tables and the JSON/markdown report files. Pure functions of the episode records: the
episodes themselves are run by `lwd_jax/learner/evaluation.py`.

Reports (`write_report`): `<stem>.json` holds every episode, the per-task summaries and the short/long/all
averages (NaN, e.g. the cycle time of a task never solved, is written as null); `<stem>.md` is the table.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy.stats import binomtest

from lwd_jax.sim.tasks import TASKS

# The sim's nominal control rate: OGBench manipspace steps at control_timestep = 0.05 s (lwd_jax/sim/env.py
# leaves it at its default; the bridge's SimRobot runs at the same 20 Hz). Cycle times in seconds use it.
SIM_CONTROL_HZ = 20.0
Z95 = 1.96  # two-sided 95% normal quantile (1.959964), as the usual tables round it
# Per-task summary keys averaged over tasks in a report (interval bounds are not: a mean of bounds is no interval).
AVERAGED = (
    "success_rate", "stepwise_score", "cycle_time_success", "cycle_time_all", "cycle_time_success_s",
    "cycle_time_all_s", "intervention_rate",
)


@dataclasses.dataclass(frozen=True)
class EpisodeResult:
    task: str
    seed: int
    success: bool
    steps: int  # control steps until success, or the step budget on a failure
    subgoal_frac: float  # sub-goals reached / the task's number of sub-goals (step-wise score)
    budget: int
    intervention_rate: float = 0.0  # fraction of steps the simulated teleoperator drove (0 without one)



# ================================================================================================ statistics
def _wilson(p: float, n: int, z: float) -> tuple[float, float]:
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(max(p * (1 - p), 0.0) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """95% Wilson score interval of a binomial rate (sane at 0/n and n/n, unlike the normal one)."""
    if n == 0:
        return (0.0, 1.0)
    return _wilson(successes / n, n, z)


def score_interval(scores: Sequence[float], z: float = Z95) -> tuple[float, float]:
    """95% interval of the mean step-wise score (each episode's score in [0, 1]).

    The Wilson interval at the mean score, i.e. with the variance bound mean * (1 - mean) that holds for any
    [0, 1]-valued score. Why not a t/normal interval on the sample variance, or a bootstrap: at evaluation sizes
    (10-40 episodes) a policy often scores the same on every episode (all 0, or all 1 on short tasks), where both
    give a zero-width interval, claiming certainty from a handful of episodes; they also leave [0, 1] near the
    ends. The bounded-variance interval stays inside [0, 1], is conservative (coverage at least nominal; exact
    Wilson when the scores are 0/1, so it equals the success interval there) and needs no random numbers.
    """
    n = len(scores)
    if n == 0:
        return (0.0, 1.0)
    m = float(np.mean(scores))
    if not 0.0 <= m <= 1.0:
        raise ValueError(f"score_interval: scores must lie in [0, 1], got mean {m}")
    return _wilson(m, n, z)


def with_seed(episodes: Sequence[EpisodeResult], seed: int) -> list[EpisodeResult]:
    """Episodes with the training seed in the task key ("<seed>:<task>"), so pairs pooled over seeds match
    within a seed only (every stage and method of a seed meets the same test scenes)."""
    return [dataclasses.replace(e, task=f"{seed}:{e.task}") for e in episodes]


def paired_success(a: Sequence[EpisodeResult], b: Sequence[EpisodeResult], bootstrap: int = 2000,
                   seed: int = 0) -> dict[str, float]:
    """Success of `a` against `b` on the same scenes (episodes matched by task and reset seed).

    Returns n (pairs), the mean difference a - b with a 95% paired-bootstrap interval, the discordant
    counts (a_only: a succeeded where b failed; b_only: the reverse) and McNemar's exact two-sided p-value
    (a binomial test on the discordant pairs). Why paired: every method meets the same scenes, so scene
    difficulty cancels and a 0.05 gain is resolved with far fewer episodes than by comparing two pooled rates.

    Those three hold the trained policies fixed: they say whether *these* checkpoints differ, not whether
    the *methods* do. When the episodes are pooled over training seeds (`with_seed` keys, "<seed>:<task>")
    the result also has the difference per seed (`seed_diffs`) and an interval over seeds and scenes
    (`diff_lo_seeds`, `diff_hi_seeds`: a two-level bootstrap, seeds with replacement and then pairs within
    each seed). The benchmark measured why it matters: the same 3+3 checkpoints were 0.036 apart on the test
    scenes and 0.010 the other way on validation scenes, while their per-seed differences spread by ~0.1.
    With few seeds this interval is itself rough (3 seeds have 10 distinct resamples), so read it as a floor
    on the method-level uncertainty, not a test.
    """
    sb = {(r.task, r.seed): r.success for r in b}
    pairs = [(r.task, float(r.success), float(sb[(r.task, r.seed)])) for r in a if (r.task, r.seed) in sb]
    if not pairs:
        return {"n": 0}
    d = np.asarray([x - y for _, x, y in pairs])
    a_only, b_only = int(np.sum(d > 0)), int(np.sum(d < 0))
    p = binomtest(a_only, a_only + b_only, 0.5).pvalue if a_only + b_only else 1.0
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), (bootstrap, len(d)))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    out: dict[str, Any] = {"n": len(d), "diff": float(d.mean()), "diff_lo": float(lo), "diff_hi": float(hi),
                           "a_only": a_only, "b_only": b_only, "mcnemar_p": float(p)}
    groups = _seed_groups([t for t, _, _ in pairs])
    if groups is not None and len(groups) >= 2:
        per_seed = [d[idx] for idx in groups.values()]
        out["seed_diffs"] = {s: float(x.mean()) for s, x in zip(groups, per_seed, strict=True)}
        out["diff_lo_seeds"], out["diff_hi_seeds"] = seed_scene_interval(per_seed, bootstrap, rng)
    return out


def _seed_groups(keys: Sequence[str]) -> dict[str, np.ndarray] | None:
    """Pair indices per training seed when every task key is "<seed>:<task>" (`with_seed`), else None."""
    seeds = [k.split(":", 1)[0] if ":" in k else None for k in keys]
    if any(s is None for s in seeds):
        return None
    order = list(dict.fromkeys(seeds))
    return {s: np.flatnonzero(np.asarray(seeds) == s) for s in order}


def seed_scene_interval(per_seed: Sequence[np.ndarray], bootstrap: int, rng: np.random.Generator) -> tuple[float, float]:
    """95% interval of the mean paired difference when both the training seeds and the scenes are samples:
    draw len(per_seed) seeds with replacement, then that seed's pairs with replacement, average the per-seed
    means (each seed weighs the same, as each is one independent training run)."""
    k = len(per_seed)
    stats = np.empty(bootstrap)
    for i in range(bootstrap):
        chosen = rng.integers(0, k, k)
        stats[i] = np.mean([per_seed[j][rng.integers(0, len(per_seed[j]), len(per_seed[j]))].mean() for j in chosen])
    lo, hi = np.percentile(stats, [2.5, 97.5])
    return float(lo), float(hi)


def paired_markdown(comparisons: Mapping[str, Mapping[str, Any]]) -> str:
    """A markdown table of `paired_success` results, one row per "a vs b"; with two more columns (the per-seed
    differences and the interval over seeds and scenes) when the comparisons pool training seeds."""
    seeds = any("seed_diffs" in c for c in comparisons.values())
    head = "| comparison (same scenes) | pairs | success a - b [95% CI] | a only / b only | McNemar p |"
    rows = [head + (" per seed | 95% CI over seeds and scenes |" if seeds else ""),
            "| --- | --- | --- | --- | --- |" + (" --- | --- |" if seeds else "")]
    for name, c in comparisons.items():
        if not c.get("n"):
            continue
        row = (f"| {name} | {c['n']} | {c['diff']:+.3f} [{c['diff_lo']:+.3f}, {c['diff_hi']:+.3f}] | "
               f"{c['a_only']} / {c['b_only']} | {c['mcnemar_p']:.3g} |")
        if seeds:
            if "seed_diffs" in c:
                per = " ".join(f"{v:+.2f}" for v in c["seed_diffs"].values())
                row += f" {per} | [{c['diff_lo_seeds']:+.3f}, {c['diff_hi_seeds']:+.3f}] |"
            else:
                row += " – | – |"
        rows.append(row)
    return "\n".join(rows)


def summarize(results: Sequence[EpisodeResult], control_hz: float = SIM_CONTROL_HZ) -> dict[str, dict[str, float]]:
    """Per task: success rate (+ Wilson interval), step-wise score (+ interval), cycle time (steps, and seconds at
    `control_hz`) on successes and with failures counted at the step budget, mean intervention rate."""
    out: dict[str, dict[str, float]] = {}
    for task in dict.fromkeys(r.task for r in results):
        rs = [r for r in results if r.task == task]
        wins = [r for r in rs if r.success]
        lo, hi = wilson_interval(len(wins), len(rs))
        scores = [r.subgoal_frac for r in rs]
        s_lo, s_hi = score_interval(scores)
        ct_success = float(np.mean([r.steps for r in wins])) if wins else float("nan")
        ct_all = float(np.mean([r.steps if r.success else r.budget for r in rs]))
        out[task] = {
            "episodes": len(rs),
            "success_rate": len(wins) / len(rs),
            "success_lo": lo,
            "success_hi": hi,
            "stepwise_score": float(np.mean(scores)),
            "score_lo": s_lo,
            "score_hi": s_hi,
            "cycle_time_success": ct_success,
            "cycle_time_all": ct_all,
            "cycle_time_success_s": ct_success / control_hz,
            "cycle_time_all_s": ct_all / control_hz,
            "intervention_rate": float(np.mean([r.intervention_rate for r in rs])),
        }
    return out


def default_long_tasks(tasks: Sequence[str]) -> set[str]:
    """The registered long-horizon tasks among `tasks` (names not in the registry count as short)."""

    return {t for t in tasks if t in TASKS and TASKS[t].is_long}


def averages(summary: Mapping[str, Mapping[str, float]], long_tasks: set[str]) -> dict[str, dict[str, float]]:
    """Means over tasks of the AVERAGED keys, for all / short / long tasks (cycle time on successes: over the
    tasks with at least one success; NaN when none)."""
    groups = {
        "all": list(summary),
        "short": [t for t in summary if t not in long_tasks],
        "long": [t for t in summary if t in long_tasks],
    }
    out: dict[str, dict[str, float]] = {}
    for name, ts in groups.items():
        if not ts:
            continue
        row: dict[str, float] = {"tasks": len(ts), "episodes": int(sum(summary[t]["episodes"] for t in ts))}
        for k in AVERAGED:
            vals = [summary[t][k] for t in ts if k in summary[t] and not math.isnan(summary[t][k])]
            row[k] = float(np.mean(vals)) if vals else float("nan")
        out[name] = row
    return out


# ================================================================================================ tables
def _num(x: float, fmt: str) -> str:
    return "–" if x is None or math.isnan(x) else format(x, fmt)


def _detail_headers(m: str, interventions: bool) -> list[str]:
    heads = [f"{m} success [95% CI]", f"{m} score [95% CI]", f"{m} cycle steps (success / all)", f"{m} cycle s (success / all)"]
    return heads + ([f"{m} intervention"] if interventions else [])


def _detail_cell(s: Mapping[str, float] | None, interventions: bool, intervals: bool = True) -> list[str]:
    """One method's cells of a task row (with 95% intervals) or of an average row (`intervals=False`)."""
    if s is None:
        return ["–"] * (5 if interventions else 4)
    ci = (lambda k: f" [{s[k + '_lo']:.2f}, {s[k + '_hi']:.2f}]") if intervals else (lambda k: "")
    cells = [
        f"{s['success_rate']:.2f}{ci('success')}",
        f"{s['stepwise_score']:.2f}{ci('score')}",
        f"{_num(s['cycle_time_success'], '.0f')} / {_num(s['cycle_time_all'], '.0f')}",
        f"{_num(s['cycle_time_success_s'], '.1f')} / {_num(s['cycle_time_all_s'], '.1f')}",
    ]
    return cells + ([f"{s['intervention_rate']:.2f}"] if interventions else [])


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def markdown_table(
    columns: dict[str, dict[str, dict[str, float]]],
    long_tasks: set[str] | None = None,
    *,
    detail: bool = False,
    interventions: bool = False,
) -> str:
    """`columns`: method -> summarize() output. Rows: tasks, then averages (all, and short/long).

    Default: success [95% CI], score and cycle steps per method (the training script's table). `detail=True`
    adds the score interval, cycle time in steps and seconds (on successes / with failures at budget) and, with
    `interventions`, the mean fraction of steps the simulated teleoperator drove.
    """
    if detail:
        return _detail_table(columns, long_tasks, interventions)
    methods = list(columns)
    tasks = list(dict.fromkeys(t for m in methods for t in columns[m]))
    head = "| task | " + " | ".join(f"{m} success | {m} score | {m} cycle (steps)" for m in methods) + " |"
    sep = "|---" * (1 + 3 * len(methods)) + "|"
    lines = [head, sep]

    def cell(s: dict[str, float] | None) -> str:
        if s is None:
            return " – | – | – "
        ct = s["cycle_time_success"]
        return f" {s['success_rate']:.2f} [{s['success_lo']:.2f}, {s['success_hi']:.2f}] | {s['stepwise_score']:.2f} | {'–' if math.isnan(ct) else f'{ct:.0f}'} "

    for t in tasks:
        tag = " (long)" if long_tasks and t in long_tasks else ""
        lines.append(f"| {t}{tag} |" + "|".join(cell(columns[m].get(t)) for m in methods) + "|")
    groups = [("average", tasks)]
    if long_tasks:
        groups += [("average short", [t for t in tasks if t not in long_tasks]), ("average long", [t for t in tasks if t in long_tasks])]
    for name, ts in groups:
        if not ts:
            continue
        cells = []
        for m in methods:
            ss = [columns[m][t] for t in ts if t in columns[m]]
            sr = np.mean([s["success_rate"] for s in ss])
            sc = np.mean([s["stepwise_score"] for s in ss])
            ct = np.mean([s["cycle_time_all"] for s in ss])
            cells.append(f" {sr:.2f} | {sc:.2f} | {ct:.0f} (all) ")
        lines.append(f"| **{name}** |" + "|".join(cells) + "|")
    return "\n".join(lines)


def _detail_table(columns: dict[str, dict[str, dict[str, float]]], long_tasks: set[str] | None, interventions: bool) -> str:
    methods = list(columns)
    tasks = list(dict.fromkeys(t for m in methods for t in columns[m]))
    long_tasks = long_tasks or set()
    head = ["task"] + [h for m in methods for h in _detail_headers(m, interventions)]
    lines = [_row(head), "|---" * len(head) + "|"]
    for t in tasks:
        tag = " (long)" if t in long_tasks else ""
        lines.append(_row([t + tag] + [c for m in methods for c in _detail_cell(columns[m].get(t), interventions)]))
    avgs = {m: averages(columns[m], long_tasks) for m in methods}
    for group, name in (("all", "average"), ("short", "average short"), ("long", "average long")):
        if (group != "all" and not long_tasks) or not any(group in avgs[m] for m in methods):
            continue
        lines.append(_row([f"**{name}**"] + [c for m in methods for c in _detail_cell(avgs[m].get(group), interventions, intervals=False)]))
    return "\n".join(lines)


# ================================================================================================ reports
def _jsonable(x: Any) -> Any:
    """NaN -> None (strict JSON), recursively."""
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, Mapping):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    return x


def write_report(
    results: Sequence[EpisodeResult] | Mapping[str, Sequence[EpisodeResult]],
    path_stem: str,
    *,
    seed: int | None = None,
    policy: Mapping[str, Any] | None = None,
    teleop: bool = False,
    long_tasks: set[str] | None = None,
    control_hz: float = SIM_CONTROL_HZ,
) -> dict[str, Any]:
    """Writes `<path_stem>.json` and `<path_stem>.md`; returns the JSON report (with NaN as None).

    `results`: one method's episodes (named by `policy["kind"]`, else "policy") or method -> episodes.
    `policy`: what was evaluated (e.g. `ExportedPolicy.info()`), recorded as is. Nothing time-dependent is
    written, so the same evaluation gives byte-identical files.
    """
    if not isinstance(results, Mapping):
        results = {str((policy or {}).get("kind", "policy")): list(results)}
    tasks = list(dict.fromkeys(r.task for rs in results.values() for r in rs))
    long_tasks = default_long_tasks(tasks) if long_tasks is None else set(long_tasks)
    summaries = {m: summarize(rs, control_hz) for m, rs in results.items()}
    episodes = {t: max(sum(1 for r in rs if r.task == t) for rs in results.values()) for t in tasks}
    report = {
        "seed": seed,
        "teleop": bool(teleop),
        "control_hz": control_hz,
        "policy": dict(policy or {}),
        "tasks": tasks,
        "long_tasks": sorted(long_tasks & set(tasks)),
        "episodes_per_task": episodes,
        "methods": {
            m: {
                "summary": summaries[m],
                "averages": averages(summaries[m], long_tasks),
                "episodes": [dataclasses.asdict(r) for r in rs],
            }
            for m, rs in results.items()
        },
    }
    report = _jsonable(report)
    os.makedirs(os.path.dirname(os.path.abspath(path_stem)), exist_ok=True)
    with open(path_stem + ".json", "w") as f:
        json.dump(report, f, indent=1, allow_nan=False)
        f.write("\n")
    with open(path_stem + ".md", "w") as f:
        f.write(report_markdown(report) + "\n")
    return report


def report_markdown(report: Mapping[str, Any]) -> str:
    """The `.md` of a report: a header naming policy, seed, episodes and teleop, then the detailed table."""
    summaries = {
        m: {t: {k: float("nan") if v is None else v for k, v in s.items()} for t, s in body["summary"].items()}
        for m, body in report["methods"].items()
    }
    pol = report.get("policy") or {}
    eps = sorted(set(report["episodes_per_task"].values()))
    header = [
        "# Evaluation: " + ", ".join(report["methods"]),
        "",
        ", ".join(f"{k} {v}" for k, v in pol.items() if k != "kind") or "policy: (not recorded)",
        f"seed {report['seed']}; episodes per task {'/'.join(map(str, eps))}; teleop {'on' if report['teleop'] else 'off'}; "
        f"cycle time in control steps and in seconds at {report['control_hz']:g} Hz, failures counted at the step budget.",
        "",
    ]
    table = markdown_table(summaries, set(report["long_tasks"]), detail=True, interventions=bool(report["teleop"]))
    return "\n".join(header) + table


def load_results(path: str) -> dict[str, list[EpisodeResult]]:
    """Method -> episodes of a `write_report` JSON (to re-summarize, or to compare methods across runs)."""
    with open(path) as f:
        report = json.load(f)
    return {m: [EpisodeResult(**e) for e in body["episodes"]] for m, body in report["methods"].items()}
