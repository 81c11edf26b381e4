"""The bench report: its rows, `bench.json`, `bench.md` (Markdown tables, CPU against GPU side by side) and the
PNG bar charts (what each row buys over its baseline, per device)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..files import atomic_write, write_json

SECTIONS = {"host": "Data on the host (the same for every device)", "data": "Data to the device",
            "training": "Training step", "inference": "Inference"}


@dataclass
class Row:
    """One measurement. `value` is the row's figure, higher is better (images/s, GB/s); each row is compared with
    the first measured row of its section and group on the same device."""

    section: str  # host, data, training, inference
    group: str
    name: str
    device: str  # host, cpu, cuda
    value: float | None = None
    unit: str = ""
    figures: dict = field(default_factory=dict)  # the row's other figures (phase shares, latency, peak memory)
    note: str = ""
    skipped: str | None = None  # why it was not measured

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class BenchReport:
    """Everything one `gpuvision bench` run measured, and where (machine, versions, commit, load)."""

    settings: dict
    date: str
    commit: str | None
    versions: dict
    machine: dict
    devices: list[str]
    data: dict
    model: dict
    peak_tflops: dict  # device -> precision -> TFLOP/s: the matmul probe, run at the start of the bench
    load_average: dict  # at start and end: the machine may be shared
    rows: list[Row] = field(default_factory=list)
    recorded: dict = field(default_factory=dict)  # device -> model -> the training rates `auto` follows
    files: dict = field(default_factory=dict)
    seconds: float = 0.0

    def to_json(self) -> dict:
        return {"schema_version": 1, **asdict(self)}

    def speedup(self, row: Row) -> float | None:
        """The row's value over its baseline's (the first measured row of its section, group and device)."""
        base = next((r for r in self.rows if (r.section, r.group, r.device) == (row.section, row.group, row.device)
                     and r.value), None)
        return row.value / base.value if row.value and base else None

    def latency_speedup(self, row: Row) -> float | None:
        base = next((r for r in self.rows if (r.section, r.device) == (row.section, row.device)
                     and r.figures.get("latency_ms_b1")), None)
        ms = row.figures.get("latency_ms_b1")
        return base.figures["latency_ms_b1"] / ms if ms and base else None


# ------------------------------------------------------------------------------------------ Markdown
def _num(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _times(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _cell(report: BenchReport, row: Row | None) -> list[str]:
    if row is None:
        return ["", ""]
    if row.skipped:
        return [f"skipped: {row.skipped}", ""]
    return [f"{_num(row.value, 2 if row.value < 100 else 0)} {row.unit}", _times(report.speedup(row))]


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)] + ["| " + " | ".join(r) + " |"
                                                                                for r in rows]


def _ratio(find: dict, name: str, devices: list[str], figure=lambda r: r.value) -> list[str]:
    """The second device's figure over the first's (GPU over CPU), where there are two and both measured it."""
    if len(devices) < 2:
        return []
    a, b = (find.get((name, d)) for d in devices[:2])
    return [_times(figure(b) / figure(a)) if a and b and figure(a) and figure(b) else "-"]


def _side_by_side(report: BenchReport, section: str) -> list[str]:
    rows = [r for r in report.rows if r.section == section]
    devices = list(dict.fromkeys(r.device for r in rows))
    find = {(r.name, r.device): r for r in rows}
    headers = ["row"] + [h for d in devices for h in (d, "x")] + ([f"{devices[1]} / {devices[0]}"] if
                                                                  len(devices) > 1 else [])
    return _table(headers, [[n] + [c for d in devices for c in _cell(report, find.get((n, d)))] +
                            _ratio(find, n, devices) for n in dict.fromkeys(r.name for r in rows)])


def _training_detail(report: BenchReport, device: str) -> list[str]:
    peak = report.peak_tflops.get(device, {})
    shown = ", ".join(f"{p} {r:.2f}" for p, r in peak.items() if r)
    lines = [f"### Training on {device}: where the time goes", "",
             f"Peak: the matmul probe's rate in the row's precision ({shown} TFLOP/s). Achieved: 3 x forward FLOPs x "
             "images/s (a forward pass plus a backward pass of twice its work).", ""]
    rows = []
    for r in report.rows:
        if (r.section, r.device) != ("training", device) or r.skipped:
            continue
        f, share = r.figures, r.figures.get("phase_share", {})
        rows.append([r.name, _num(r.value), *(_num(100 * share[p] if p in share else None, 1)
                                              for p in ("data", "forward", "backward", "optimizer")),
                     _num(f.get("tflops"), 3), _num(f.get("peak_share") and 100 * f["peak_share"], 1),
                     _num(f.get("first_steps_s"), 1), _num(f.get("peak_memory_mib"))])
    return lines + _table(["row", "img/s", "data %", "forward %", "backward %", "optimizer %", "TFLOP/s", "% of peak",
                           "warm-up s", "peak MiB"], rows)


def _inference_table(report: BenchReport) -> list[str]:
    rows = [r for r in report.rows if r.section == "inference"]
    devices = list(dict.fromkeys(r.device for r in rows))
    find = {(r.name, r.device): r for r in rows}
    headers = ["row"] + [h for d in devices for h in (f"{d} b1 ms", "x", f"{d} b256 img/s", "x", "peak MiB")]
    if len(devices) > 1:
        headers += [f"{devices[1]} / {devices[0]} b1", "b256"]
    table = []
    for name in dict.fromkeys(r.name for r in rows):
        cells = [name]
        for d in devices:
            r = find.get((name, d))
            if r is None or r.skipped:
                cells += [f"skipped: {r.skipped}" if r else "", "", "", "", ""]
                continue
            cells += [_num(r.figures["latency_ms_b1"], 2), _times(report.latency_speedup(r)), _num(r.value),
                      _times(report.speedup(r)), _num(r.figures.get("peak_memory_mib"))]
        speed_b1 = _ratio(find, name, devices, lambda r: 1 / r.figures["latency_ms_b1"] if r.value else None)
        table.append(cells + speed_b1 + _ratio(find, name, devices))
    return _table(headers, table)


def markdown(report: BenchReport) -> str:
    m, v, d, model = report.machine, report.versions, report.data, report.model
    gpus = ", ".join(g["name"] for g in m["gpus"]) or "none"
    load = report.load_average
    lines = ["# gpuvision bench", "",
             f"{report.date}; gpuvision {v['gpuvision']} (commit {report.commit or 'unknown'}); Python {v['python']}, "
             f"torch {v['torch']}, CUDA {v['cuda'] or '-'}, cuDNN {v['cudnn'] or '-'}, driver {v['driver'] or '-'}.",
             f"CPU: {m['cpu']}, {m['cores']} cores, ISA {' '.join(m['isa']) or '-'}"
             f"{' (AMX)' if 'amx_bf16' in m['isa'] else ''}; torch threads: {report.settings['threads']}; GPUs: "
             f"{gpus}. Load average {load['start']:.2f} at the start, {load['end']:.2f} at the end (1 min).",
             f"Data: {d['source']} ({d['images']:,} images of {d['shape']}; {d['train_images']:,} on the device for "
             f"training). Model: {model['name']} ({model['params']:,} parameters, {model['forward_mflops']:.1f} MFLOPs "
             f"a forward pass per image), training batch {model['batch_size']}.",
             f"Command: `{report.settings['command']}`" + (" (quick: few steps on a subset)" if
                                                           report.settings["quick"] else "") +
             f"; {report.seconds:.0f} s. Ratios (x) compare rows measured in this one run.", ""]
    for section, title in SECTIONS.items():
        if not any(r.section == section for r in report.rows):
            continue
        lines += [f"## {title}", ""]
        lines += _inference_table(report) if section == "inference" else _side_by_side(report, section)
        lines.append("")
        if section == "training":
            for device in dict.fromkeys(r.device for r in report.rows if r.section == "training"):
                lines += _training_detail(report, device) + [""]
    notes = [f"- {r.section}, {r.name}: {r.note}" for r in report.rows if r.note and not r.skipped]
    if notes:
        lines += ["## How each row was measured", "", *dict.fromkeys(notes), ""]
    if report.recorded:
        lines += ["## Recorded for `auto`", "", "The training rates `--precision auto` and `--channels-last auto` "
                  "follow on this machine:", ""]
        lines += [f"- {dev}, {name}: " + ", ".join(f"{k} {r:,.0f} img/s" for k, r in rates.items())
                  for dev, models in report.recorded.items() for name, rates in models.items()]
        lines.append("")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ charts
def chart(report: BenchReport, section: str, path: Path) -> bool:
    """A bar chart of each row's speed-up over its baseline, one bar per device (a Figure of its own: no backend
    switch); False where the section has no measured row."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = [r for r in report.rows if r.section == section and r.value]
    if not rows:
        return False
    names = list(dict.fromkeys(r.name for r in rows))
    devices = list(dict.fromkeys(r.device for r in rows))
    panels = [("b256 throughput" if section == "inference" else "", report.speedup)]
    if section == "inference":
        panels.append(("b1 latency", report.latency_speedup))
    fig = Figure(figsize=(7.5, 0.5 + 0.45 * len(names) * len(panels) + 0.4 * len(panels)))
    FigureCanvasAgg(fig)
    height = 0.8 / len(devices)
    for p, (label, speedup) in enumerate(panels):
        ax = fig.add_subplot(len(panels), 1, p + 1)
        for i, device in enumerate(devices):
            found = {r.name: speedup(r) for r in rows if r.device == device}
            ys = [k + i * height for k in range(len(names))]
            bars = ax.barh(ys, [found.get(n) or 0 for n in names], height=height, label=device)
            ax.bar_label(bars, [f"{found[n]:.2f}x" if found.get(n) else "" for n in names], fontsize=7, padding=2)
        shown = [s for s in (speedup(r) for r in rows) if s]
        if shown and max(shown) / min(shown) > 20:  # e.g. a cache against a decode: small ratios stay readable
            ax.set_xscale("log")
        ax.axvline(1.0, color="grey", linewidth=0.8)
        ax.set_yticks([k + height * (len(devices) - 1) / 2 for k in range(len(names))], names, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("x its baseline (higher is faster)" + (f", {label}" if label else ""))
        ax.grid(axis="x", alpha=0.3)
        if len(devices) > 1:
            ax.legend(fontsize=8)
    where = "" if len(devices) > 1 else f" ({devices[0]})"
    fig.suptitle(f"gpuvision bench: {SECTIONS[section].split(' (')[0].lower()}{where}", fontsize=10)
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=100))
    return True


def write(report: BenchReport, out: Path) -> None:
    """bench.json, bench.md and a chart per section into `out` (each written atomically)."""
    charts = [f"bench-{s}.png" for s in SECTIONS if chart(report, s, out / f"bench-{s}.png")]
    report.files.update(json=str(out / "bench.json"), markdown=str(out / "bench.md"),
                        charts=[str(out / c) for c in charts])
    atomic_write(out / "bench.md", lambda p: Path(p).write_text(markdown(report)))
    write_json(out / "bench.json", report.to_json())
