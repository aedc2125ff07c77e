"""``report.html``: one self-contained page per registration that a reader can judge in ten seconds.

The verdict and the key numbers first, then the QC pictures (embedded as base64 PNG data URIs), the metric per
iteration as an inline SVG plot with stage/level boundaries marked, the sanity checks with values and limits, the
landmark table before/after, the provenance, and the command that repeats the run. No external URL, no script,
no style sheet from anywhere: it opens offline and can be mailed as one file.
"""

from __future__ import annotations

import base64
import html
import math
import os

esc = html.escape

PICTURES = [
    ("overlay_before_after.png", "Before and after, three views through the region of interest"),
]
STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:1.2em auto;color:#222;max-width:1800px;padding:0 1em}
h1{font-size:1.4em;margin-bottom:.2em} h2{font-size:1.15em;margin-top:1.4em;border-bottom:1px solid #ccc}
.verdict{font-size:1.15em;padding:.5em .8em;border-radius:6px;display:inline-block;margin:.4em 0}
.pass{background:#e3f4e3;color:#1d5e1d} .fail{background:#fbe3e1;color:#8e1f14}
.muted{color:#666} .num{text-align:right;font-variant-numeric:tabular-nums}
.key span{display:inline-block;margin-right:2em} img.qc{max-width:100%;border:1px solid #ddd}
table{border-collapse:collapse;font-size:.9em;margin:.4em 0} td,th{border:1px solid #ddd;padding:3px 8px;text-align:left}
tr.bad td{background:#fdf0ef} pre{background:#f5f5f5;padding:.6em;white-space:pre-wrap;word-break:break-all}
"""


def fmt(value, digits: int = 3, unit: str = "") -> str:
    """A number as a reader wants it: integers as integers, others rounded to ``digits`` significant digits."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int) or (isinstance(value, float) and math.isfinite(value) and value.is_integer()
                                  and abs(value) < 1e15):
        text = str(int(value))
    elif isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        text = f"{value:.{digits}g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"
    else:
        return str(value)
    return f"{text} {unit}" if unit else text


def data_uri(path: str) -> str | None:
    if not os.path.isfile(path):
        return None
    with open(path, "rb") as f:
        return "data:image/png;base64," + base64.b64encode(f.read()).decode("ascii")


def level_segments(rows: list[dict]) -> list[tuple[int, int, str]]:
    """(first index, last index, "stage level") for each run of the trace at one stage and level."""
    segments = []
    for i, r in enumerate(rows):
        key = f"{r.get('stage', '')} level {int(r.get('level', 0)) + 1}"
        if r.get("stage_index") is not None:
            key = f"stage {int(r['stage_index']) + 1} {key}"
        if segments and segments[-1][2] == key:
            segments[-1] = (segments[-1][0], i, key)
        else:
            segments.append((i, i, key))
    return segments


def svg_trace(rows: list[dict], width: int = 900, height: int = 260) -> str:
    """Inline SVG line plot of the metric per iteration, dashed lines at each stage/level boundary."""
    values = [float(r["metric"]) for r in rows if r.get("metric") is not None and math.isfinite(float(r["metric"]))]
    if len(values) < 2:
        return "<p class='muted'>No metric trace recorded (fewer than two iterations).</p>"
    lo, hi = min(values), max(values)
    if hi - lo < 1e-12:
        lo, hi = lo - 1e-6, hi + 1e-6
    pl, pr, pt, pb = 70, 10, 22, 34
    pw, ph = width - pl - pr, height - pt - pb
    n = len(values)

    def xy(i, v):
        return pl + pw * i / (n - 1), pt + ph * (hi - v) / (hi - lo)

    pts = " ".join(f"{x:.1f},{y:.1f}" for x, y in (xy(i, v) for i, v in enumerate(values)))
    out = [f'<svg width="{width}" height="{height}" role="img" '
           'aria-label="metric per iteration">',
           f'<rect x="{pl}" y="{pt}" width="{pw}" height="{ph}" fill="#fafafa" stroke="#999"/>']
    for k, (a, _b, label) in enumerate(level_segments(rows)):
        x = xy(a, lo)[0]
        if k:
            out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{pt}" y2="{pt + ph}" stroke="#c0392b" '
                       'stroke-dasharray="4,3"/>')
        out.append(f'<text x="{x + 3:.1f}" y="{pt - 6}" font-size="11" fill="#c0392b">{esc(label)}</text>')
    out.append(f'<polyline fill="none" stroke="#1f5fa8" stroke-width="1.5" points="{pts}"/>')
    for v in (hi, lo):
        out.append(f'<text x="{pl - 4}" y="{xy(0, v)[1] + 4:.1f}" font-size="11" text-anchor="end">{fmt(v, 4)}</text>')
    out.append(f'<text x="{pl}" y="{height - 18}" font-size="11">0</text>'
               f'<text x="{pl + pw}" y="{height - 18}" font-size="11" text-anchor="end">{n - 1}</text>'
               f'<text x="{pl + pw / 2:.0f}" y="{height - 4}" font-size="12" text-anchor="middle">'
               'iteration (running index over every stage and level)</text></svg>')
    return "".join(out)


def _table(headers, rows, bad=None) -> str:
    out = ["<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in headers) + "</tr>"]
    for i, row in enumerate(rows):
        cls = " class='bad'" if bad and bad[i] else ""
        out.append(f"<tr{cls}>" + "".join(f"<td>{esc(str(c))}</td>" for c in row) + "</tr>")
    return "".join(out) + "</table>"


def _check_value(check: dict) -> str:
    v = check.get("value")
    return fmt(v, 4) if isinstance(v, (int, float)) else ("" if v is None else str(v))


def section_checks(sanity: dict | None) -> str:
    if not sanity:
        return "<p class='muted'>No sanity check was run.</p>"
    checks = sanity.get("checks", [])
    rows = [[c["name"], "pass" if c["passed"] else "FAIL", _check_value(c), c.get("limit", ""),
             c.get("message", "")] for c in checks]
    return _table(["check", "result", "value", "limit", "message"], rows, [not c["passed"] for c in checks])


def section_landmarks(lm: dict | None) -> str:
    if not lm:
        return "<p class='muted'>No landmarks were given (--fixed-landmarks/--moving-landmarks).</p>"
    before, after = lm["distance_before_mm"], lm["distance_after_mm"]
    rows = [[label, fmt(b, 3, "mm"), fmt(a, 3, "mm"), fmt(a - b, 3, "mm")]
            for label, b, a in zip(lm["labels"], before, after)]
    rows.append(["mean", fmt(lm["mean_before_mm"], 3, "mm"), fmt(lm["mean_after_mm"], 3, "mm"),
                 fmt(lm["mean_after_mm"] - lm["mean_before_mm"], 3, "mm")])
    use = ("used to initialise the registration (so 'after' is a fiducial error, not an independent test)"
           if lm.get("used_for_initialization") else "used only to evaluate (an independent test)")
    return (f"<p>{len(before)} landmark pairs, {esc(use)}. Distance between the fixed landmark and the moving one "
            "mapped through the transform; 'before' is as the file headers place them.</p>"
            + _table(["landmark", "before", "after", "change"], rows, [a > b for b, a in zip(before, after)] + [False]))


def section_provenance(prov: dict) -> str:
    rows = [[k, v] for k, v in (prov.get("software") or {}).items()]
    preset = prov.get("preset") or {}
    rows += [["preset", f"{preset.get('name', '')} (sha256 {str(prov.get('preset_sha256', ''))[:16]}...)"],
             ["seed", fmt(prov.get("seed"))], ["threads", fmt(prov.get("threads"))],
             ["deterministic", fmt(prov.get("deterministic"))], ["started", prov.get("started", "")],
             ["transform direction", prov.get("transform_direction", "")], ["frame", prov.get("transform_frame", "")]]
    for role, info in (prov.get("command_inputs") or {}).items():
        rows.append([f"input {role}", f"{info['path']} (sha256 {info['sha256'][:16]}...)"])
    orient = (prov.get("initialization") or {}).get("orientation_search")
    if orient:
        rows.append(["orientation search", f"{orient.get('chosen')}" + (" (TURNED)" if orient.get("turned") else "")])
    for k, v in (prov.get("timings_s") or {}).items():
        rows.append([f"time {k}", fmt(v, 3, "s")])
    return _table(["item", "value"], rows)


def section_trace(prov: dict) -> str:
    rows = prov.get("metric_trace") or []
    last = rows[-1]["metric"] if rows else None
    note = ("<p class='muted'>Each resolution level has its own image resolution and samples, so the metric is "
            "<b>not comparable across levels</b> (a jump at a dashed line is not a step backwards). The final metric "
            f"({fmt(prov.get('final_metric'), 5)}) and the initial one ({fmt(prov.get('initial_metric'), 5)}) are the "
            "first stage's metric at full resolution, on smoothed images and fixed samples, so they can be compared "
            f"with each other but not with the trace's last value ({fmt(last, 5)}). Lower is better.</p>")
    return svg_trace(rows) + note


def headline(prov: dict) -> str:
    sanity = prov.get("sanity") or {}
    passed = bool(sanity.get("passed"))
    failures = [c["message"] for c in sanity.get("checks", []) if not c["passed"]]
    verdict = ("<div class='verdict pass'>Sanity checks passed: look at the pictures, then the landmarks.</div>"
               if passed else "<div class='verdict fail'>FAILED post-run checks: " + esc("; ".join(failures))
               + "</div>")
    key = [f"<span>metric {fmt(prov.get('initial_metric'), 5)} &rarr; {fmt(prov.get('final_metric'), 5)} "
           "(lower is better)</span>"]
    lm = prov.get("landmarks")
    if lm:
        key.append(f"<span>landmarks: mean {fmt(lm['mean_before_mm'], 3, 'mm')} before &rarr; "
                   f"<b>{fmt(lm['mean_after_mm'], 3, 'mm')}</b> after ({len(lm['labels'])} pairs)</span>")
    total = (prov.get("timings_s") or {}).get("total")
    if total is not None:
        key.append(f"<span>run time {fmt(total, 3, 's')}</span>")
    return verdict + "<p class='key'>" + "".join(key) + "</p>"


def section_pictures(folder: str, legend: str) -> str:
    out = []
    for name, caption in PICTURES:
        uri = data_uri(os.path.join(folder, name))
        if uri is None:
            out.append(f"<p class='muted'>{esc(name)} was not made (pictures were switched off).</p>")
            continue
        out.append(f"<figure><img class='qc' alt='{esc(caption)}' src='{uri}'><figcaption>{esc(caption)}. "
                   f"{esc(legend)} Columns: contour before, contour after, checkerboard before, checkerboard after."
                   "</figcaption></figure>")
    return "".join(out)


def write_report(path: str, provenance: dict, *, folder: str | None = None, title: str | None = None) -> str:
    """Write ``report.html`` (atomically) from the run's ``registration.json`` content and its PNGs in ``folder``."""
    folder = folder or os.path.dirname(os.path.abspath(path))
    names = provenance.get("image_names") or {}
    title = title or f"Registration: {names.get('moving', 'moving')} onto {names.get('fixed', 'fixed')}"
    command = provenance.get("command")
    body = [f"<h1>{esc(title)}</h1>", headline(provenance),
            "<h2>Is it aligned?</h2>",
            section_pictures(folder, (provenance.get("qc_pictures") or {}).get("legend", "")),
            "<h2>Landmarks</h2>", section_landmarks(provenance.get("landmarks")),
            "<h2>Metric per iteration</h2>", section_trace(provenance),
            "<h2>Sanity checks</h2>", section_checks(provenance.get("sanity")),
            "<h2>Provenance</h2>", section_provenance(provenance),
            "<h2>Repeat this run</h2>",
            f"<pre>{esc(command)}</pre>" if command else
            "<p class='muted'>Not run from the command line: registration.json holds every parameter.</p>",
            "<p class='muted'>Files beside this page: transform.h5 (fixed &rarr; moving points, LPS mm), "
            "moving_resampled.nii.gz, registration.json, metric_trace.tsv, scene/registration.mrml.</p>"]
    page = ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>{esc(title)}</title><style>{STYLE}</style></head><body>" + "\n".join(body) + "</body></html>\n")
    tmp = path + ".partial"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(page)
    os.replace(tmp, path)
    return path
