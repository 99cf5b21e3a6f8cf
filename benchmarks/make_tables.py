"""Render benchmarks/results/*.json as the markdown tables of docs/benchmarks.md.

    python benchmarks/make_tables.py > /tmp/tables.md
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def pct(x: float) -> str:
    return f"{x * 100:.1f}"


def prov(d: dict) -> str:
    p = d["provenance"]
    return f"`{p['command']}` — commit `{p['commit']}`, {p['date']}, {p['machine']}, torch {p['torch']}"


def thresholds(d: dict) -> list[str]:
    out = [prov(d), ""]
    for model, e in d["models"].items():
        ts = list(next(iter(e["methods"].values()))["accuracy"])
        out.append(f"**{model}** — ANN {pct(e['ann_accuracy'])} % on the same {e['test_samples']} test images; "
                   "each cell: SNN accuracy / quantisation ceiling (%)")
        out.append("")
        out.append("| method | " + " | ".join(f"T={t}" for t in ts) + " |")
        out.append("|---|" + "---|" * len(ts))
        for m, row in e["methods"].items():
            out.append(f"| {m} | " + " | ".join(f"{pct(row['accuracy'][t])} / {pct(row['ceiling'][t])}" for t in ts) + " |")
        out.append("")
    return out


def adafire(d: dict) -> list[str]:
    out = [prov(d), ""]
    for model, e in d["models"].items():
        cfgs = e["configs"]
        ts = sorted({t for rows in cfgs.values() for t in rows}, key=int)  # a partial run may lack some T
        out.append(f"**{model}** — ANN {pct(e['ann_accuracy'])} % on the same {e['test_samples']} test images; "
                   "each cell: accuracy / ceiling (%), SOPs per image (millions)")
        out.append("")
        out.append("| config | " + " | ".join(f"T={t}" for t in ts) + " |")
        out.append("|---|" + "---|" * len(ts))
        for c, rows in cfgs.items():
            out.append(f"| {c} | " + " | ".join(
                f"{pct(rows[t]['accuracy'])} / {pct(rows[t]['ceiling'])}, {rows[t]['sops'] / 1e6:.1f} M" if t in rows
                else "–" for t in ts) + " |")
        caps = {c: {t: rows[t].get("caps") for t in rows} for c, rows in cfgs.items() if any(r.get("caps") for r in rows.values())}
        if caps:
            out.append("")
            out.append("Burst caps chosen (layer order): " + "; ".join(
                f"{c} T={t}: {list(v.values())}" for c, per in caps.items() for t, v in sorted(per.items(), key=lambda kv: int(kv[0]))
                if v))
        out.append("")
    return out


def simulation(d: dict) -> list[str]:
    def both(r: dict, key: str) -> str:  # wall time, and CPU time where the run recorded it
        return f"{r[key]:.2f}" + (f" ({r[key + '_cpu']:.2f})" if key + "_cpu" in r else "")

    out = [prov(d), "", "Ratios of wall time (of CPU time, in brackets, where recorded).", "",
           "| model | T | SNN / (T x ANN) | SNN / (T x BN-folded ANN) | counting on / off | "
           "peak RSS T=max / T=min | run memory above baseline (MiB) |", "|---|---|---|---|---|---|---|"]
    for model, r in d["models"].items():
        mem = ", ".join(f"T={m['T']}: {(m['peak_bytes'] - m['base_bytes']) / 2**20:.0f}" for m in r["memory"])
        out.append(f"| {model} | {r['T']} | {both(r, 'ratio_vs_T_ann')} | {both(r, 'ratio_vs_T_folded_ann')} | "
                   f"{both(r, 'counting_overhead')} | {r['peak_rss_ratio']:.3f} | {mem} |")
    return out + [""]


def ssc_iat(d: dict) -> list[str]:
    out = [prov(d), ""]
    for model, e in d["models"].items():
        out.append(f"**{model}** (base: {e['base']})")
        out.append("")
        ref = next((r for k, r in e["ssc"].items() if k.split()[0] == "0.0"), None)  # the unscaled model
        if e["ssc"]:  # --skip-ssc runs have IAT rows only
            out.append("| SSC tau | accuracy % | SOPs / image | vs tau = 0: points, SOPs | saving vs ANN (45 nm) | scales |")
            out.append("|---|---|---|---|---|---|")
            for tau, r in e["ssc"].items():
                vs = (f"{(r['accuracy'] - ref['accuracy']) * 100:+.2f}, {(r['sops'] / ref['sops'] - 1) * 100:+.1f} %"
                      if ref else "")
                out.append(f"| {tau} | {pct(r['accuracy'])} | {r['sops'] / 1e6:.2f} M | {vs} | {pct(r['saving'])} % | "
                           f"{', '.join(f'{v:g}' for v in r['scales'].values())} |")
            out.append("")
        if not e["iat"]:
            continue
        out.append("| IAT T | schedule | accuracy % (full run) | mean steps (% of T) | wall time vs full | "
                   "SOPs / image (full) | saving vs ANN (full) |")
        out.append("|---|---|---|---|---|---|---|")
        for t, rows in e["iat"].items():
            if "accuracy" in rows:  # results written before several schedules were compared
                rows = {"paper a=0.6 b=0.4": rows}
            for sname, r in rows.items():
                ab = f" (a={r['a']:.3f}, b={r['b']:.3f})" if "a" in r else ""
                out.append(f"| {t} | {sname}{ab} | {pct(r['accuracy'])} ({pct(r['full_accuracy'])}) | "
                           f"{r['mean_steps']:.2f} ({r['mean_steps'] / int(t) * 100:.0f} %) | {r['wall_ratio']:.2f} | "
                           f"{r['sops'] / 1e6:.2f} M ({r['full_sops'] / 1e6:.2f} M) | {pct(r['saving'])} % "
                           f"({pct(r['full_saving'])} %) |")
        out.append("")
    return out


def measures(d: dict) -> list[str]:
    out = [prov(d), ""]
    for model, e in d["models"].items():
        ts = sorted({int(t) for rows in e["variants"].values() for t in rows})
        out.append(f"**{model}** — base {d['base']}; ANN {pct(e['ann_accuracy'])} % on the same "
                   f"{e['test_samples']} test images; each cell: accuracy / ceiling (%), SOPs per image (millions)")
        out.append("")
        out.append("| variant | " + " | ".join(f"T={t}" for t in ts) + " |")
        out.append("|---|" + "---|" * len(ts))
        for v, rows in e["variants"].items():
            cells = [rows.get(str(t)) for t in ts]
            out.append(f"| {v} | " + " | ".join(
                f"{pct(r['accuracy'])} / {pct(r['ceiling'])}, {r['sops'] / 1e6:.1f} M" if r else "" for r in cells) + " |")
        out.append("")
    return out


def hed(d: dict) -> list[str]:
    cfgs = d["configs"]
    out = []
    for c in cfgs.values():
        p = c["provenance"]
        out.append(f"* {c['label']}: `{p['command']}` — commit `{p['commit']}`, {p['date']}, {p['machine']}, "
                   f"torch {p['torch']}; conversion {c['convert_s']:.0f} s, simulation "
                   f"{c['simulate_s_per_image']:.0f} s per image to T = {max(map(int, c['metrics']))}")
    ts = list(next(iter(cfgs.values()))["metrics"])
    out += ["", f"{len(d['test_images'])} test photos ({', '.join(d['test_images'])}), {d['size'][0]}x{d['size'][1]}; "
            f"{d['calib_images']} calibration images; the ANN marks {pct(d['ann_edge_share'])} % of the pixels as "
            "edges (p > 0.5). Each cell: F-measure at 0.5 / mean absolute error of the edge probabilities "
            "(mean F over thresholds 0.1 ... 0.9; worst photo's F at 0.5).", ""]
    out.append("| config | " + " | ".join(f"T={t}" for t in ts) + " |")
    out.append("|---|" + "---|" * len(ts))
    for c in cfgs.values():
        out.append(f"| {c['label']} | " + " | ".join(
            f"{m['f05']:.3f} / {m['mae']:.4f} ({m['f_mean']:.3f}; {m['f05_min_image']:.3f})"
            for m in (c["metrics"][t] for t in ts)) + " |")
    return out + [""]


def spike_linear(d: dict) -> list[str]:
    out = [prov(d), ""]
    for model, e in d["models"].items():
        out.append(f"**{model}** — ANN {pct(e['ann_accuracy'])} % on the same test images (base: {e['base']})")
        out.append("")
        out.append("| T | SSC tau | bottlenecks | accuracy % | SOPs / image | MACs / image | saving vs ANN (45 nm) |")
        out.append("|---|---|---|---|---|---|---|")
        for r in e["rows"]:
            kind = f"spiking ({r['bipolar_neurons']} bipolar layers)" if r["spike_linear"] else "analog"
            out.append(f"| {r['T']} | {r['ssc_tau']:g} | {kind} | {r['accuracy'] * 100:.2f} | {r['sops'] / 1e6:.2f} M | "
                       f"{r['macs'] / 1e6:.2f} M | {pct(r['saving'])} % |")
        out.append("")
    return out


RENDER = {"measures": measures, "hed": hed, "thresholds": thresholds, "adafire": adafire, "simulation": simulation,
          "ssc_iat": ssc_iat, "spike_linear": spike_linear}


def main() -> int:
    for path in sorted(RESULTS.glob("*.json")):
        d = json.loads(path.read_text())
        kind = next((k for k in RENDER if path.stem.startswith(k)), None)
        if kind:
            print(f"<!-- {path.name} -->")
            print("\n".join(RENDER[kind](d)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
