"""The study as Markdown (``study.md``) and as a terminal table, from its JSON alone."""

from __future__ import annotations

from typing import Any



from ..report.markdown import table
from .plan import METRICS, METRIC_LABELS, SKLEARN_NCA_COMPONENTS, SKLEARN_NCA_MAX_ITER, STUDENT, STUDENT_K, TALENT


def _fmt(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _fmt_signed(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:+.{digits}f}"


def _mean_std(stats: dict[str, Any], runs: int, deterministic: bool = False) -> str:
    if stats["mean"] is None:
        return "n/a"
    if deterministic:
        return f"{stats['mean']:.4f} (deterministic)"
    text = f"{stats['mean']:.4f} ± {stats['std']:.4f}"
    if stats["n"] < runs:
        text += f" (n={stats['n']})"
    return text


def _published_for(study: dict[str, Any], name: str | None) -> str:
    for row in study["published"]["rows"]:
        if row["name"] == name:
            return f"{row['mean']:.4f}" + (f" ± {row['std']:.4f}" if row["std"] is not None else "")
    return ""


def _diverged(summary: dict[str, Any]) -> str:
    return f"{summary['diverged']}/{summary['runs']}" if "diverged" in summary else "—"


def _epochs(summary: dict[str, Any]) -> str:
    stats = summary.get("epochs_run")
    return "—" if not stats or stats["mean"] is None else f"{stats['mean']:.1f}"


def _seconds(summary: dict[str, Any]) -> str:
    stats = summary.get("seconds")
    return "—" if not stats or stats["mean"] is None else f"{stats['mean']:.1f}"


def render_markdown(study: dict[str, Any]) -> str:
    """``study.md``: the command, the setup, the tables and what they say."""
    task = study["task"]
    n = len(study["seeds"])
    machine = study["machine"]
    metric_a, metric_b = METRICS[task]
    lines = [
        "# Abalone study: ModernNCA vs the student's SeedNCA",
        "",
        "Regenerate with:",
        "",
        "```",
        study["command"],
        "```",
        "",
        *([f"(Tables re-rendered from the saved results, without training, by `{study['rendered_from']} --out "
           "DIR`.)", ""] if study.get("rendered_from") else []),
        f"- task: **{task}** ({'3 classes: rings 1-8 / 9-10 / 11-29' if task == 'multiclass' else 'rings'}), "
        "metrics on the test split",
        f"- seeds: {_seed_text(study['seeds'])} ({n} seed{'s' if n != 1 else ''}); a seed drives model "
        "initialisation, batch order and candidate sampling",
        f"- split: fixed, split seed {study['split_seed']} (64/16/20 = 2672/669/836 rows) for every seed, as "
        "TALENT's 15 seeds vary the model seed on one fixed split",
        f"- machine: {machine['cpu_count']} CPUs, {machine['platform']}, Python {machine['python']}, "
        f"torch {machine['torch']}, numpy {machine['numpy']}, scikit-learn {machine['sklearn']}; "
        f"{machine['jobs']} parallel job(s), {machine['threads_per_run']} thread per run",
        *([f"- code: stablenca at commit {machine['code']}"] if machine.get("code") else []),
        *([f"- provenance: {study['provenance']}"] if study.get("provenance") else []),
        f"- wall time: {study['wall_seconds']:.1f} s for {study['runs']} runs "
        f"(sum of run times {study['run_seconds_total']:.1f} s); started {study['started_at']}",
        "- mean ± std over seeds; std is the population std (ddof=0, as TALENT's np.std)",
    ]
    if study["max_epochs"] is not None:
        lines += ["", f"> **Smoke run**: every trained row was capped at {study['max_epochs']} epoch(s), and "
                      "scikit-learn NCA at as many iterations (`--max-epochs`). These numbers are not "
                      "comparable with TALENT's or with a full study."]
    lines += ["", "## Main table", ""]
    published_header = f"Published {METRIC_LABELS[study['published']['metric']]} (TALENT¹)"
    headers = ["Row", "Protocol", f"Test {METRIC_LABELS[metric_a]}", f"Test {METRIC_LABELS[metric_b]}", "Diverged",
               "Epochs run", "s/run", published_header]
    rows = []
    shown = set()
    for entry in study["rows"]:
        summary = entry["summary"]
        published = _published_for(study, entry["published"])
        if published:
            shown.add(entry["published"])
        rows.append([entry["label"], entry["protocol"],
                     _mean_std(summary[metric_a], summary["runs"], entry["deterministic"]),
                     _mean_std(summary[metric_b], summary["runs"], entry["deterministic"]),
                     _diverged(summary), _epochs(summary), _seconds(summary), published])
    for row in study["published"]["rows"]:
        if row["name"] not in shown:
            rows.append([f"{row['name']} (published only, not run here)", "TALENT defaults", "—", "—", "—", "—",
                         "—", _published_for(study, row["name"])])
    lines += table(headers, rows).split("\n")
    tuned = next((e for e in study["rows"] if e["kind"] == "knn_tuned"), None)
    selection = "accuracy" if task == "multiclass" else "MAE"
    lines += ["", "Notes:", "",
              f"1. Published numbers: {study['published']['source']}; dataset `{study['published']['dataset']}`. "
              "They are measured on TALENT's own fixed split, not on this one, so they are a reference point, "
              "not a paired comparison. TALENT's KNN tunes k, hence its place beside the tuned-k row.",
              f"2. {TALENT}; the checkpoint is the one with the best validation {selection}.",
              f"3. {STUDENT}.",
              f"4. scikit-learn `NeighborhoodComponentsAnalysis(n_components={SKLEARN_NCA_COMPONENTS})` (the width "
              f"of the student's embedding; init 'auto', which is PCA here; max_iter={SKLEARN_NCA_MAX_ITER}, "
              f"scikit-learn's default), fitted on the train split, then KNN with k={STUDENT_K} like the student's "
              "readout. The fit is deterministic, so it is run once.",
              "5. Every row uses the same features, standardised numerical columns + one-hot sex fitted on the "
              "train split, except rows marked \"sex column dropped\" (numerical columns only, as the student's "
              "code loads only `N_*.npy`). Deterministic rows (baselines) are run once and show no std.",
              "6. Diverged = runs stopped at a non-finite loss or gradient. The trainer never applies a "
              "non-finite step. A diverged run's metrics are those of its kept checkpoint: under the TALENT "
              "protocol the best-validation epoch before the failure (often epoch 1), under the student "
              "protocol, which keeps no checkpoint, the last finite parameters. Where a metric is missing for "
              "some seeds (non-finite parameters), n= shows how many seeds the mean uses.",
              ]
    if tuned is not None:
        lines.append(f"7. Tuned KNN: k = {tuned['summary'].get('k')} (grid 1..50, best validation "
                     f"{'accuracy' if task == 'multiclass' else 'RMSE'}, smallest k on ties).")
    if study.get("factors"):
        lines += _factors_markdown(study)
    if study["ablation"]:
        lines += _ablation_markdown(study)
    lines += ["", "## Reading the table", ""]
    lines += [f"- {sentence}" for sentence in reading(study)]
    lines += ["", "Per-seed raw results (status, epochs, val and test metrics, divergence step) are in "
                  "`study.json`.", ""]
    return "\n".join(lines)


def _seed_text(seeds: list[int]) -> str:
    if len(seeds) > 2 and seeds == list(range(seeds[0], seeds[-1] + 1)):
        return f"{seeds[0]}..{seeds[-1]}"
    return ", ".join(map(str, seeds))


def _interval(paired: dict[str, Any]) -> str:
    if paired["mean"] is None:
        return "n/a"
    if paired["low"] is None:
        return f"{paired['mean']:+.4f} (n={paired['n']}, no interval)"
    return f"{paired['mean']:+.4f} [{paired['low']:+.4f}, {paired['high']:+.4f}]"


def _factors_markdown(study: dict[str, Any]) -> list[str]:
    metric_a, metric_b = METRICS[study["task"]]
    level = round(100 * study["factors"][0]["paired"][metric_a]["confidence"])
    lines = ["", "## Factors: paired comparisons over the same seeds", "",
             f"Δ = mean over seeds of (row with the factor changed − base row), seed by seed; in brackets the "
             f"{level} % Student-t confidence interval of that mean (n − 1 degrees of freedom, sample std of the "
             "paired differences). An interval that contains 0 means the factor is not resolved by these seeds.",
             ""]
    rows = [[factor["id"], factor["change"], f"`{factor['base']}`", _interval(factor["paired"][metric_a]),
             _interval(factor["paired"][metric_b]), factor["paired"][metric_a]["n"]] for factor in study["factors"]]
    lines += table(["Factor", "Change", "Base row", f"Δ test {METRIC_LABELS[metric_a]} [{level} % CI]",
                    f"Δ test {METRIC_LABELS[metric_b]} [{level} % CI]", "n"], rows).split("\n")
    return lines


def _ablation_markdown(study: dict[str, Any]) -> list[str]:
    lines = ["", "## Ablation: from the student's setup to ModernNCA, one factor per step", "",
             "Each step is the previous one with the single change shown, over the same seeds. "
             "Δ = this step's mean minus the previous step's mean; in brackets the std of the paired "
             "per-seed differences, then the 95 % Student-t confidence interval of the mean paired "
             "difference (n − 1 degrees of freedom).", ""]
    rows = []
    for step in study["ablation"]:
        summary = step["summary"]
        cells = []
        for metric in METRICS["multiclass"]:
            paired = step.get("paired_delta", {}).get(metric)
            delta = _fmt_signed(step["delta"][metric])
            if paired and paired["std"] is not None and step["delta"][metric] is not None:
                delta += f" (sd {paired['std']:.4f})"
                interval = step.get("paired_interval", {}).get(metric)
                if interval and interval["low"] is not None:
                    delta += f" [{interval['low']:+.4f}, {interval['high']:+.4f}]"
            cells += [_mean_std(summary[metric], summary["runs"]), delta if step["delta"][metric] is not None
                      else ("—" if step["id"] == "A0" else "n/a")]
        rows.append([step["id"], step["change"], *cells, _diverged(summary), _epochs(summary)])
    lines += table(["Step", "Change", "Test accuracy", "Δ accuracy", "Test macro-F1", "Δ macro-F1", "Diverged",
                    "Epochs run"], rows).split("\n")
    last = study["ablation"][-1]
    regression = last["summary"].get("regression")
    if regression and regression["rmse"]["mean"] is not None:
        runs = last["summary"]["runs"]
        lines += ["", f"A9's regression model itself: test RMSE {_mean_std(regression['rmse'], runs)}, "
                      f"MAE {_mean_std(regression['mae'], runs)} rings."]
    lines += ["", "Why this order: the loss goes first, because with the ratio loss the later steps would be "
                  "measured on diverging runs; the encoder goes last, so that every earlier step is measured on "
                  "the small 3-d model the student wrote and the last step lands exactly on TALENT's ModernNCA "
                  "configuration. A8 is exactly "
                  "the ModernNCA float32 row of the main table (same configuration, same runs)."]
    return lines


def reading(study: dict[str, Any]) -> list[str]:
    """Sentences that say what the measured numbers show (only for rows that were run)."""
    task = study["task"]
    metric = METRICS[task][0]
    rows = {entry["id"]: entry for entry in study["rows"]}
    steps = study["ablation"]
    name = METRIC_LABELS[metric]

    def mean(entry):
        return entry["summary"][metric]["mean"] if entry else None

    def describe(entry):
        return _mean_std(entry["summary"][metric], entry["summary"]["runs"], entry["deterministic"])

    sentences: list[str] = []
    if study["max_epochs"] is not None:
        sentences.append(f"Smoke run (epochs capped at {study['max_epochs']}): the sentences below describe these "
                         "numbers only.")
    modern = rows.get("modernnca_f32") or next((s for s in steps if s["id"] == "A8"), None)
    student = rows.get("seed_ratio") or next((s for s in steps if s["id"] == "A0"), None)
    if task == "multiclass" and modern and student and mean(modern) is not None and mean(student) is not None:
        gap = mean(modern) - mean(student)
        summary = student["summary"]
        text = (f"The gap: ModernNCA reaches {describe(modern)} test accuracy, the student's SeedNCA with the ratio "
                f"loss {describe(student)}, a difference of {gap:+.4f}.")
        if summary.get("diverged"):
            where = summary.get("diverged_at_epoch")
            text += (f" {summary['diverged']}/{summary['runs']} ratio runs hit a non-finite loss or gradient"
                     + (_epoch_range(where) if where else "")
                     + "; their accuracy is that of the last finite parameters.")
        else:
            text += f" No ratio run diverged within {_epochs(summary)} epochs on average."
        sentences.append(text)
    for other, what in (("seed_ratio_eps", "ratio_eps (the +1e-10 patch)"), ("seed_difference", "difference")):
        if other in rows and mean(rows[other]) is not None:
            sentences.append(f"SeedNCA with {what} under the same student protocol: {describe(rows[other])}, "
                             f"{_diverged(rows[other]['summary'])} diverged.")
    if steps:
        deltas = [(s, s["delta"][metric]) for s in steps[1:] if s["delta"][metric] is not None]
        if deltas:
            a8 = next((s for s in steps if s["id"] == "A8"), None)
            total = (mean(a8) - mean(steps[0])) if a8 and mean(a8) is not None and mean(steps[0]) is not None \
                else None
            ranked = sorted(deltas, key=lambda item: -abs(item[1]))
            noise = []
            parts = []
            for step, delta in ranked:
                paired = step.get("paired_delta", {}).get(metric, {})
                se = paired.get("se")
                within = se is not None and abs(delta) < 2 * se
                if within:
                    noise.append(step["id"])
                parts.append(f"{step['id']} ({step['label']}) {delta:+.4f}")
            text = "Ablation, steps ordered by the size of their accuracy change: " + "; ".join(parts) + "."
            if total is not None:
                text += (f" A0 -> A8 totals {total:+.4f} (the deltas add up to it by construction; each depends "
                         "on the steps before it, so the order matters).")
            if noise:
                text += (f" Within seed noise (|Δ| < 2 standard errors of the paired per-seed differences): "
                         f"{', '.join(noise)}.")
            elif len(study["seeds"]) < 2:
                text += " With one seed there is no estimate of seed noise."
            sentences.append(text)
        a8 = next((s for s in steps if s["id"] == "A8"), None)
        a9 = next((s for s in steps if s["id"] == "A9"), None)
        if a8 and a9 and a9["delta"][metric] is not None:
            sentences.append(f"Task framing: training on rings and thresholding (A9, {describe(a9)}) instead of "
                             f"classifying directly (A8, {describe(a8)}) changes accuracy by "
                             f"{a9['delta'][metric]:+.4f}.")
    f32, f64 = rows.get("modernnca_f32"), rows.get("modernnca_f64")
    if f32 and f64 and mean(f32) is not None and mean(f64) is not None:
        sentences.append(f"Precision: ModernNCA in float64 gives {describe(f64)} vs {describe(f32)} in float32 "
                         f"({mean(f64) - mean(f32):+.4f}); {_diverged(f32['summary'])} float32 runs diverged.")
    logspace = rows.get("modernnca_logspace")
    if f32 and logspace and mean(f32) is not None and mean(logspace) is not None:
        sentences.append(f"Loss formulation inside ModernNCA: nca_logspace gives {describe(logspace)} vs "
                         f"{describe(f32)} with TALENT's modernnca loss ({mean(logspace) - mean(f32):+.4f}).")
    seed_mse = rows.get("seed_mse")
    if f32 and seed_mse and mean(f32) is not None and mean(seed_mse) is not None:
        sentences.append(f"The student's encoder and protocol on rings (SeedNCA, MSE loss): {describe(seed_mse)} "
                         f"{name} vs ModernNCA {describe(f32)} ({mean(seed_mse) - mean(f32):+.4f}).")
    knn3, nca, tuned, dummy = (rows.get(k) for k in ("knn3", "sklearn_nca_knn3", "knn_tuned", "dummy"))
    baseline = []
    for entry in (nca, knn3, tuned, dummy):
        if entry and mean(entry) is not None:
            baseline.append(f"{entry['label']} {describe(entry)}")
    if baseline:
        text = "Baselines: " + "; ".join(baseline) + "."
        if nca and knn3 and mean(nca) is not None and mean(knn3) is not None:
            text += (f" A linear {SKLEARN_NCA_COMPONENTS}-d NCA projection changes KNN-3 {name} by "
                     f"{mean(nca) - mean(knn3):+.4f}.")
        if modern and tuned and mean(modern) is not None and mean(tuned) is not None:
            text += f" ModernNCA minus tuned KNN: {mean(modern) - mean(tuned):+.4f} {name}."
        sentences.append(text)
    published = {row["name"]: row for row in study["published"]["rows"]}
    if modern and mean(modern) is not None and "ModernNCA" in published:
        reference = published["ModernNCA"]
        difference = mean(modern) - reference["mean"]
        sentences.append(f"Against TALENT's published ModernNCA ({reference['mean']:.4f} ± {reference['std']:.4f}, "
                         f"on TALENT's split): measured here {describe(modern)}, a difference of {difference:+.4f}"
                         f" ({abs(difference) / reference['std']:.1f} published std).")
    return sentences


def _epoch_range(where: dict[str, Any]) -> str:
    if where["min"] == where["max"]:
        return f" (all in epoch {where['min']})"
    return f" (epochs {where['min']}-{where['max']}, median {where['median']:g})"


def format_table(study: dict[str, Any]) -> str:
    """A short plain-text summary for the terminal."""
    lines = []
    for entry in study["rows"] + study["ablation"]:
        metric = METRICS[entry["task"]][0]
        value = _mean_std(entry["summary"][metric], entry["summary"]["runs"], entry["deterministic"])
        lines.append(f"{entry['id']:<20} {value:<28} {entry['label']}")
    return "\n".join(lines)
