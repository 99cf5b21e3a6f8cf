"""Plots and a report page for a converted model and its evaluation.

    from ann2snn.report import write_report
    write_report("runs/report", result, snn)   # PNGs + report.md (+ report.html)

Plots (matplotlib, Agg backend, so no display is needed):

* ``accuracy.png``: SNN accuracy against T, with the ANN line and the quantisation ceiling;
* ``energy.png``: per-layer firing rates and synaptic operations (:meth:`EnergyReport.plot`);
* ``thresholds.png``: the distribution of the thresholds of each neuron layer (one per channel).
"""

from __future__ import annotations

import datetime
import html
import json
import os
from pathlib import Path
from typing import Any

from .adaptation.checks import summaries
from .evaluation import EvalResult, default_timesteps
from .model import SpikingModel

__all__ = ["plot_accuracy", "plot_comparison", "plot_thresholds", "write_comparison", "write_report"]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_accuracy(result: EvalResult, path: str | os.PathLike, title: str | None = None) -> Path:
    """SNN accuracy at every t = 1..T (log-2 axis), the ANN's accuracy and the quantisation ceiling;
    with energy counting, a second panel: accuracy against energy relative to the ANN."""
    plt = _plt()
    counted = result.energy is not None and bool(result.sops_per_t)
    fig, axes = plt.subplots(1, 2 if counted else 1, figsize=(11.5 if counted else 6.4, 4.2), squeeze=False)
    ax = axes[0][0]
    ts = list(range(1, result.timesteps + 1))
    acc = [a * 100 for a in result.accuracy_per_t]
    ax.plot(ts, acc, color="tab:blue", lw=2, label="SNN")
    if result.ceiling:
        cts = sorted(result.ceiling)
        ax.plot(cts, [result.ceiling[t] * 100 for t in cts], "o--", color="tab:green", ms=4,
                label="quantisation ceiling")
    ax.axhline(result.ann_accuracy * 100, color="tab:red", ls=":", lw=1.5,
               label=f"ANN ({result.ann_accuracy * 100:.2f} %)")
    ax.set_xscale("log", base=2)
    marks = default_timesteps(result.timesteps)
    ax.set_xticks(marks, [str(t) for t in marks])
    ax.set_xlabel("timesteps T")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title or f"accuracy against T ({result.samples} samples)")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(loc="lower right")
    if counted:
        ax2 = axes[0][1]
        ann = result.energy.ann_energy
        ratio = [result.energy_at(t) / ann * 100 for t in ts]
        ax2.plot(ratio, acc, color="tab:blue", lw=2, label="SNN, t = 1..T")
        for t in marks:
            ax2.annotate(f"T={t}", (ratio[t - 1], acc[t - 1]), textcoords="offset points", xytext=(4, -10),
                         fontsize=7)
            ax2.plot(ratio[t - 1], acc[t - 1], "o", color="tab:blue", ms=3)
        if result.iat is not None and result.iat.get("energy_ratio") is not None:
            ax2.plot(result.iat["energy_ratio"] * 100, result.iat["accuracy"] * 100, "*", color="tab:purple", ms=12,
                     label=f"adaptive exit (IAT), {result.iat['mean_steps']:.1f} steps")
        ax2.axhline(result.ann_accuracy * 100, color="tab:red", ls=":", lw=1.5, label="ANN accuracy")
        ax2.axvline(100, color="tab:red", ls="--", lw=1, label="ANN energy")
        ax2.set_xlabel(f"SNN energy per sample, % of the ANN's ({result.energy.energy_model.name})")
        ax2.set_ylabel("accuracy (%)")
        ax2.set_title("accuracy against energy")
        ax2.grid(True, alpha=0.3)
        ax2.legend(loc="lower right")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_thresholds(snn: SpikingModel, path: str | os.PathLike) -> Path:
    """Box plot of each neuron layer's thresholds (one value per channel, or one per layer)."""
    plt = _plt()
    neurons = snn.neurons()
    names = list(neurons)
    values = [neurons[n].threshold.detach().flatten().cpu().numpy() for n in names]
    fig, ax = plt.subplots(figsize=(max(6.4, 0.55 * len(names) + 2), 4.2))
    if names:
        ax.boxplot(values, showfliers=True, flierprops={"markersize": 2})
        for i, v in enumerate(values, start=1):  # the channels themselves, jittered
            jitter = (i + (0.3 * ((v * 7919) % 1) - 0.15)) if len(v) > 1 else [i]
            ax.plot(jitter, v, ".", color="tab:blue", alpha=0.25, ms=2)
        ax.set_xticks(range(1, len(names) + 1), names, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("threshold θ (per channel)")
    cfg = snn.config
    ax.set_title(f"thresholds per layer ({cfg.threshold}, {cfg.granularity}-wise, {cfg.neuron})")
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_exit_steps(histogram: list[int], path: str | os.PathLike, mean_steps: float | None = None) -> Path:
    """Bar chart of how many samples exited after each number of steps (adaptive timesteps)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    steps = list(range(1, len(histogram) + 1))
    ax.bar(steps, histogram, color="tab:blue")
    if mean_steps is not None:
        ax.axvline(mean_steps, color="tab:red", linestyle="--", label=f"mean {mean_steps:.2f}")
        ax.legend()
    ax.set_xlabel("exit step")
    ax.set_ylabel("samples")
    ax.set_title("Input-aware adaptive timesteps: exit steps")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def _md_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _html_table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x * 100:.2f} %"


def _sections(result: EvalResult, snn: SpikingModel) -> list[tuple[str, Any]]:
    """The report's content as (kind, payload) items, rendered to markdown or HTML."""
    out: list[tuple[str, Any]] = []
    source = snn.info.get("source", {}) or {}
    facts = [["evaluated samples", result.samples], ["timesteps T", result.timesteps],
             ["ANN accuracy", _pct(result.ann_accuracy)], [f"SNN accuracy at T={result.timesteps}", _pct(result.accuracy)]]
    for key in ("model", "weights", "data", "calib_samples", "created"):
        if source.get(key) is not None:
            facts.append([key.replace("_", " "), source[key]])
    out.append(("h2", "Summary"))
    out.append(("table", (["", ""], facts)))
    checked = summaries(snn.info)
    if checked:
        out.append(("h2", "Calibration choices and how sure they are"))
        out.append(("p", "Choices made on the adaptation samples, with the figures behind them. The IAT and SSC "
                         "targets are chosen on one part of the samples and checked on the other; the interval "
                         "is the exact (Clopper-Pearson) binomial one."))
        out.extend(("p", line) for line in checked)
    out.append(("h2", "Accuracy against timesteps"))
    rows = [[r["T"], _pct(r["snn"]), _pct(r["ceiling"]), f"{(r['snn'] - result.ann_accuracy) * 100:+.2f}",
             "-" if r["sops"] is None else f"{r['sops']:,.0f}", _pct(r["energy_ratio"])]
            for r in result.rows()]
    if result.iat is not None:
        i = result.iat
        rows.append([f"IAT (mean {i['mean_steps']:.2f} steps)", _pct(i["accuracy"]), "-",
                     f"{(i['accuracy'] - result.ann_accuracy) * 100:+.2f}",
                     "-" if i.get("sops") is None else f"{i['sops']:,.0f}", _pct(i.get("energy_ratio"))])
    out.append(("table", (["T", "SNN", "quantisation ceiling", "SNN − ANN (points)", "SOPs / sample",
                           "energy / ANN"], rows)))
    out.append(("p", "The gap SNN → ceiling is the unevenness error (spikes arriving unevenly in time); "
                     "ceiling → ANN is the clipping and quantisation error of the thresholds."))
    out.append(("img", ("accuracy.png", "accuracy against T")))
    if result.iat is not None and result.iat.get("exit_histogram"):
        out.append(("h2", "Adaptive timesteps"))
        out.append(("p", f"Samples stop as soon as the network is confident: {result.iat['mean_steps']:.2f} of "
                         f"{result.timesteps} steps on average."))
        out.append(("img", ("exit_steps.png", "distribution of exit steps")))
    e = result.energy
    if e is not None:
        m = e.energy_model
        out.append(("h2", "Spikes, synaptic operations and energy"))
        out.append(("table", (["per sample", "value"], [
            ["spikes", f"{e.spikes:,.0f}"], ["SOPs", f"{e.sops:,.0f}"], ["MACs (SNN)", f"{e.macs:,.0f}"],
            ["MACs (ANN)", f"{e.ann_macs:,.0f}"],
            [f"energy SNN ({m.name})", f"{e.snn_energy * 1e6:.4g} µJ"],
            [f"energy ANN ({m.name})", f"{e.ann_energy * 1e6:.4g} µJ"],
            ["saving vs ANN", f"{e.saving * 100:.1f} %"]])))
        layer_rows = [[r.name, r.kind, r.neurons or "", f"{r.firing_rate:.3f}" if r.kind == "neuron" else "",
                       f"{r.sops:,.0f}" if r.kind != "neuron" else "", f"{r.macs:,.0f}" if r.kind == "synaptic" else ""]
                      for r in e.layers]
        out.append(("table", (["layer", "kind", "neurons", "firing rate", "SOPs", "MACs"], layer_rows)))
        out.append(("img", ("energy.png", "firing rates and synaptic operations per layer")))
    ssc = snn.info.get("ssc")
    if ssc:
        out.extend(_ssc_section(ssc))
    out.append(("h2", "Thresholds"))
    layers = snn.info.get("layers", [])
    if layers:
        header = ["layer", "channels", "burst cap", "mean clip value", "max clip value", "source"]
        rows = [[d.get("name"), d.get("channels"), d.get("cap"), f"{d.get('clip_value_mean', 0):.4g}",
                 f"{d.get('clip_value_max', 0):.4g}", d.get("source") or ""] for d in layers]
        if ssc:
            header.insert(3, "SSC scale")
            for row, d in zip(rows, layers, strict=True):
                row.insert(3, f"{ssc['scales'].get(d.get('name'), 1.0):g}")
        out.append(("table", (header, rows)))
        if ssc:
            out.append(("p", "Clip values as calibrated; spike compression multiplies them by the SSC scale."))
    out.append(("img", ("thresholds.png", "thresholds per layer")))
    out.append(("h2", "Conversion config"))
    out.append(("code", json.dumps(snn.config.to_dict(), indent=2, default=str)))
    out.append(("h2", "Conversion info"))
    info = {k: v for k, v in snn.info.items() if k != "layers"}
    out.append(("code", json.dumps(info, indent=2, default=str)))
    return out


def _ssc_section(ssc: dict[str, Any]) -> list[tuple[str, Any]]:
    items: list[tuple[str, Any]] = [("h2", "Spike compression (SSC)")]
    scaled = sum(r != 1.0 for r in ssc["scales"].values())
    text = (f"Allowance tau = {ssc['tau']:g}, minimising {ssc.get('cost', 'spikes')}; {scaled} of "
            f"{len(ssc['scales'])} layers scaled")
    if ssc.get("max_loss") is not None:
        text = (f"Target: at most {ssc['max_loss'] * 100:.2f} % of predictions changed against the uncompressed "
                f"network; {len(ssc.get('tries') or [])} allowances tried, " + text[0].lower() + text[1:] + " (kept)")
    if ssc.get("recorrected"):
        text += f", {ssc['recorrected']} correction measured again after scaling"
    checks = ssc.get("checks") or []
    if any(c.get("passed") is not None for c in checks):  # verified: say how the combination was found
        kept = [c for c in checks if c.get("kept")]
        text += (f". {len(checks)} combination{'s' if len(checks) != 1 else ''} checked on the calibration samples "
                 f"against the limit (1 + tau) x the unscaled divergence; ")
        text += (f"kept the cheapest that holds, chosen by the DP at allowance {kept[0]['tau']:.3g}" if kept
                 else "none held, so no layer is scaled")
    items.append(("p", text + "."))
    cal = ssc.get("calibration")
    if cal and cal.get("sops_before"):
        change = cal["sops_after"] / cal["sops_before"] - 1
        items.append(("table", (["on the calibration samples", "without SSC", "with SSC", "change"], [
            ["SOPs / sample", f"{cal['sops_before']:,.0f}", f"{cal['sops_after']:,.0f}", f"{change * 100:+.1f} %"],
            ["divergence from the ANN", f"{cal['divergence_before']:.4g}", f"{cal['divergence_after']:.4g}",
             f"{(cal['divergence_after'] / max(cal['divergence_before'], 1e-12) - 1) * 100:+.1f} %"]])))
    return items


def _render_md(title: str, items: list[tuple[str, Any]]) -> str:
    parts = [f"# {title}", ""]
    for kind, payload in items:
        if kind == "h2":
            parts += [f"## {payload}", ""]
        elif kind == "table":
            parts += [_md_table(*payload), ""]
        elif kind == "p":
            parts += [payload, ""]
        elif kind == "img":
            parts += [f"![{payload[1]}]({payload[0]})", ""]
        elif kind == "code":
            parts += ["```json", payload, "```", ""]
    return "\n".join(parts)


def _render_html(title: str, items: list[tuple[str, Any]]) -> str:
    style = ("body{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.2em .6em}"
             "pre{background:#f6f6f6;padding:1em;overflow:auto}img{max-width:100%}")
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>"]
    for kind, payload in items:
        if kind == "h2":
            parts.append(f"<h2>{html.escape(payload)}</h2>")
        elif kind == "table":
            parts.append(_html_table(*payload))
        elif kind == "p":
            parts.append(f"<p>{html.escape(payload)}</p>")
        elif kind == "img":
            parts.append(f"<img src='{html.escape(payload[0])}' alt='{html.escape(payload[1])}'>")
        elif kind == "code":
            parts.append(f"<pre>{html.escape(payload)}</pre>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(directory: str | os.PathLike, result: EvalResult, snn: SpikingModel, *,
                 title: str | None = None, html_page: bool = True) -> Path:
    """Write ``accuracy.png``, ``energy.png``, ``thresholds.png``, ``results.json``, ``report.md`` and
    (with ``html_page``) ``report.html`` into ``directory`` (created if needed). Returns report.md's path."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    plot_accuracy(result, d / "accuracy.png")
    if result.energy is not None:
        result.energy.plot(str(d / "energy.png"))
    plot_thresholds(snn, d / "thresholds.png")
    if result.iat is not None and result.iat.get("exit_histogram"):
        plot_exit_steps(result.iat["exit_histogram"], d / "exit_steps.png", result.iat["mean_steps"])
    (d / "results.json").write_text(result.to_json(indent=2) + "\n")
    source = snn.info.get("source", {}) or {}
    if title is None:
        what = source.get("model", "spiking model")
        data = result.meta.get("data") or source.get("data")
        title = f"ann2snn report: {what}" + (f" on {data}" if data else "")
    items = _sections(result, snn)
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    items.insert(0, ("p", f"Generated by ann2snn on {stamp}."))
    md = d / "report.md"
    md.write_text(_render_md(title, items))
    if html_page:
        (d / "report.html").write_text(_render_html(title, items))
    return md


def plot_comparison(comparison: dict[str, Any], path: str | os.PathLike) -> Path:
    """Two bar panels for ``ann2snn compare``: accuracy of the ANN and of each spiking model, and each
    model's energy per sample as a percentage of the ANN's (the ANN's own bar at 100 %)."""
    plt = _plt()
    rows = comparison["snns"]
    names = ["ANN"] + [f"{r['name']}\n{r['config']['summary']}, T={r['timesteps']}" for r in rows]
    acc = [comparison["ann"]["accuracy"] * 100] + [r["accuracy"] * 100 for r in rows]
    energy = [100.0] + [(1.0 - r["saving"]) * 100 for r in rows]
    colors = ["tab:red"] + ["tab:blue"] * len(rows)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 1.2 + 0.65 * len(names)), sharey=True)
    ys = list(range(len(names)))[::-1]
    ax1.barh(ys, acc, color=colors)
    low = min(acc)
    ax1.set_xlim(max(0.0, low - max(2.0, (100 - low) * 0.5)), 100)
    for y, a in zip(ys, acc, strict=True):
        ax1.annotate(f"{a:.2f} %", (a, y), xytext=(-4, 0), textcoords="offset points", ha="right", va="center",
                     color="white", fontsize=8)
    ax1.set_yticks(ys, names, fontsize=8)
    ax1.set_xlabel("accuracy (%)")
    ax1.set_title(f"accuracy ({comparison['samples']} {comparison['data']} test samples)")
    ax2.barh(ys, energy, color=colors)
    ax2.axvline(100, color="tab:red", ls=":", lw=1)
    for y, e in zip(ys, energy, strict=True):
        ax2.annotate(f"{e:.1f} %", (e, y), xytext=(4, 0), textcoords="offset points", va="center", fontsize=8)
    ax2.set_xlim(0, max(energy) * 1.18)
    ax2.set_xlabel(f"energy per sample, % of the ANN's ({comparison['energy_model']['name']})")
    ax2.set_title("energy")
    for ax in (ax1, ax2):
        ax.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_comparison(directory: str | os.PathLike, comparison: dict[str, Any], header: list[str],
                     rows: list[list[Any]]) -> Path:
    """Write ``compare.png``, ``compare.md`` (the table ``header`` / ``rows``, as ``ann2snn compare``
    prints it) and ``compare.json`` into ``directory`` (created if needed). Returns compare.md's path."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    plot_comparison(comparison, d / "compare.png")
    (d / "compare.json").write_text(json.dumps(comparison, indent=2) + "\n")
    c = comparison
    what = f"{c['model']} on {c['data']}" if c.get("model") else c["data"]
    subset = f" (a random subset of {c['of_samples']})" if c["samples"] < c["of_samples"] else ""
    m = c["energy_model"]
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    page = [f"# ann2snn compare: {what}", "",
            f"Generated by ann2snn on {stamp}: {c['samples']} {c['data']} test samples{subset}, the same for "
            f"every model; each spiking model runs at its own T.", "",
            _md_table(header, rows), "",
            f"Accuracy differences in points. Energy per sample ({m['name']}: {m['e_mac'] * 1e12:.3g} pJ/MAC, "
            f"{m['e_ac'] * 1e12:.3g} pJ/SOP); the ANN spends {c['ann']['energy_j'] * 1e6:.4g} uJ "
            f"({c['ann']['macs']:,.0f} MACs); a positive saving is less energy than the ANN's.", "",
            "![accuracy and energy per model](compare.png)", ""]
    md = d / "compare.md"
    md.write_text("\n".join(page))
    return md
