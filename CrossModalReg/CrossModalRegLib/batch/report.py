"""The one-page cohort report: a self-contained HTML file (no external file, script or style sheet).

It shows the counts, the flagged cases with their reasons and a before/after overlay thumbnail (the case's
``overlay_before_after.png``, shrunk and embedded as base64), the cohort distributions as inline SVG histograms,
and the table of every case.
"""

from __future__ import annotations

import base64
import html
import math
import os
import tempfile

from .case import STATUS_OK

THUMB_WIDTH = 900
HISTOGRAMS = [
    ("final_metric", "Final metric (lower is better)", ""),
    ("metric_improvement", "Metric improvement (initial - final)", ""),
    ("run_time_s", "Run time", "s"),
    ("tre_mean_mm", "TRE (held-out landmarks)", "mm"),
    ("dice_mean", "Dice (mean over labels)", ""),
    ("jacobian_min", "Jacobian determinant, minimum", ""),
]
TABLE_KEYS = [("case_id", "Case"), ("verdict", "Verdict"), ("status", "Status"), ("final_metric", "Final metric"),
              ("metric_improvement", "Improvement"), ("tre_mean_mm", "TRE mm"), ("dice_mean", "Dice"),
              ("run_time_s", "Time s"), ("attempts", "Attempts"), ("verdict_reason", "Reason")]


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if not math.isfinite(v):
            return ""
        return str(int(v)) if v.is_integer() and abs(v) < 1e15 else f"{v:.4g}"
    return str(v)


def thumbnail_data_uri(png_path: str, width: int = THUMB_WIDTH) -> str | None:
    """The PNG shrunk to about ``width`` pixels wide, as a ``data:image/png;base64,...`` URI (None if unreadable)."""
    if not os.path.isfile(png_path):
        return None
    try:
        import SimpleITK as sitk

        img = sitk.ReadImage(png_path)
        factor = max(1, int(math.ceil(img.GetSize()[0] / float(width))))
        data = None
        if factor > 1:
            small = sitk.BinShrink(img, [factor] * img.GetDimension())  # averages: thin contour lines survive
            with tempfile.TemporaryDirectory() as tmp:
                p = os.path.join(tmp, "thumb.png")
                sitk.WriteImage(small, p)
                with open(p, "rb") as f:
                    data = f.read()
        if data is None:
            with open(png_path, "rb") as f:
                data = f.read()
    except (RuntimeError, OSError):
        return None
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def svg_histogram(values, title: str, unit: str = "", *, bins: int = 12, width: int = 300, height: int = 150,
                  marked=()) -> str:
    """An inline SVG histogram of ``values`` (bars; ``marked`` values drawn as red ticks below the axis)."""
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    esc = html.escape
    head = f'<figure class="hist"><figcaption>{esc(title)}{" (" + esc(unit) + ")" if unit else ""}, n={len(vals)}'
    if not vals:
        return head + "</figcaption><p class='muted'>no value</p></figure>"
    lo, hi = min(vals), max(vals)
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5 * (abs(lo) or 1.0) * 0.01, hi + 0.5 * (abs(hi) or 1.0) * 0.01
    bins = max(1, min(bins, len(vals)))
    counts = [0] * bins
    for v in vals:
        counts[min(bins - 1, int((v - lo) / (hi - lo) * bins))] += 1
    top = max(counts)
    pad_l, pad_b, pad_t = 28, 30, 6
    pw, ph = width - pad_l - 6, height - pad_b - pad_t
    bw = pw / bins
    parts = [f'<svg width="{width}" height="{height}" role="img" '
             f'aria-label="{esc(title)}">']
    for i, c in enumerate(counts):
        h = ph * c / top
        x = pad_l + i * bw
        parts.append(f'<rect x="{x + 1:.1f}" y="{pad_t + ph - h:.1f}" width="{max(bw - 2, 1):.1f}" height="{h:.1f}" '
                     f'fill="#4a7ab5"><title>{c} case(s) in [{lo + i * (hi - lo) / bins:.4g}, '
                     f'{lo + (i + 1) * (hi - lo) / bins:.4g}]</title></rect>')
    for v in marked:
        if v is not None and math.isfinite(float(v)):
            x = pad_l + (float(v) - lo) / (hi - lo) * pw
            parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{pad_t + ph + 2}" y2="{pad_t + ph + 9}" '
                         'stroke="#c0392b" stroke-width="2"/>')
    y_axis = pad_t + ph
    parts.append(f'<line x1="{pad_l}" x2="{pad_l + pw}" y1="{y_axis}" y2="{y_axis}" stroke="#333"/>')
    parts.append(f'<text x="{pad_l}" y="{height - 4}" font-size="11">{lo:.4g}</text>')
    parts.append(f'<text x="{pad_l + pw}" y="{height - 4}" font-size="11" text-anchor="end">{hi:.4g}</text>')
    parts.append(f'<text x="{pad_l - 4}" y="{pad_t + 10}" font-size="11" text-anchor="end">{top}</text>')
    parts.append(f'<text x="{pad_l - 4}" y="{y_axis}" font-size="11" text-anchor="end">0</text>')
    parts.append("</svg>")
    return head + "</figcaption>" + "".join(parts) + "</figure>"


STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:1.5em;color:#222;max-width:1200px}
h1{font-size:1.4em} h2{font-size:1.15em;margin-top:1.4em;border-bottom:1px solid #ccc}
.counts span{display:inline-block;margin-right:1.5em;font-size:1.05em}
.bad{color:#c0392b;font-weight:600} .muted{color:#777}
.cases{display:flex;flex-wrap:wrap;gap:12px}
.case{border:1px solid #ddd;border-radius:6px;padding:8px;width:100%;max-width:920px;font-size:.9em}
.case img{width:100%;image-rendering:auto;border:1px solid #eee}
.hists{display:flex;flex-wrap:wrap;gap:16px} figure.hist{margin:0} figcaption{font-size:.85em}
table{border-collapse:collapse;font-size:.85em} td,th{border:1px solid #ddd;padding:2px 6px;text-align:left}
tr.flag{background:#fdf0ef}
"""


def review_summary(flagged: list[dict], review: list[dict]) -> str:
    """One sentence on what was judged: never "every check passed" unless every check ran and passed."""
    if not flagged:
        return "<p>No case in the cohort.</p>"
    verdicts = [r.get("verdict") for r in flagged]
    if review:
        more = verdicts.count("incomplete")
        return (f"<p class='bad'>{len(review)} of {len(flagged)} cases need a look; the reason is on each card."
                + (f" {more} more could not be fully judged (verdict incomplete, see the table).</p>" if more
                   else "</p>"))
    if all(v == "pass" for v in verdicts):
        return "<p>None: every case succeeded and passed every check (sanity checks and acceptance profile).</p>"
    incomplete = [r for r in flagged if r.get("verdict") == "incomplete"]
    if incomplete:
        reasons = sorted({r.get("verdict_reason", "") for r in incomplete})
        return (f"<p>No case was flagged, but for {len(incomplete)} of {len(flagged)} cases the acceptance profile "
                "could not be fully evaluated (verdict <b>incomplete</b>): " + html.escape("; ".join(reasons))
                + ". Their post-run sanity checks passed.</p>")
    return ("<p>No case was flagged: every case succeeded and passed the post-run sanity checks. No acceptance "
            "profile was given (<code>--profile</code>), so TRE and Dice were not judged.</p>")


def case_card(r: dict, output_dir: str) -> str:
    """A flagged case: verdict, every reason, the numbers that exist, the QC picture and a link to its report."""
    esc = html.escape
    case_dir = os.path.join(output_dir, "cases", r["case_id"])
    uri = thumbnail_data_uri(os.path.join(case_dir, "overlay_before_after.png"))
    img = (f"<img alt='before/after QC views of {esc(r['case_id'])}' src='{uri}'>" if uri else
           "<p class='muted'>no QC picture (the registration produced no outputs)</p>")
    facts = []
    if r.get("initial_metric") is not None and r.get("final_metric") is not None:
        facts.append(f"metric {_fmt(r['initial_metric'])} &rarr; {_fmt(r['final_metric'])}")
    if r.get("tre_mean_mm") is not None:
        facts.append(f"TRE {_fmt(r['tre_mean_mm'])} mm")
    if r.get("run_time_s") is not None:
        facts.append(f"{_fmt(r['run_time_s'])} s")
    facts.append(f"folder {esc(r.get('case_dir', ''))}")
    link = (f" &middot; <a href='cases/{esc(r['case_id'])}/report.html'>case report</a>"
            if os.path.isfile(os.path.join(case_dir, "report.html")) else "")
    reasons = "".join(f"<li>{esc(x)}</li>" for x in (r.get("review_reason") or "").split("; ") if x)
    return (f"<div class='case'><b>{esc(r['case_id'])}</b> &ndash; verdict <b>{esc(r.get('verdict', ''))}</b>"
            f"<ul class='bad'>{reasons}</ul><span class='muted'>{'; '.join(facts)}{link}</span>{img}</div>")


def write_html_report(path: str, flagged: list[dict], output_dir: str, *, title: str = "Cohort registration QC",
                      meta: dict | None = None) -> str:
    """Write the report (atomically); ``flagged`` are records from :func:`qc.flag_cases`."""
    esc = html.escape
    n = len(flagged)
    ok = sum(1 for r in flagged if r.get("status") == STATUS_OK)
    review = [r for r in flagged if r.get("needs_review")]
    out = ["<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
           f"<title>{esc(title)}</title><style>{STYLE}</style></head><body>",
           f"<h1>{esc(title)}</h1>"]
    m = meta or {}
    if m:
        out.append("<p class='muted'>" + " &middot; ".join(f"{esc(str(k))}: {esc(str(v))}" for k, v in m.items())
                   + "</p>")
    out.append("<p class='counts'>"
               f"<span>cases: <b>{n}</b></span><span>succeeded: <b>{ok}</b></span>"
               f"<span class='{'bad' if n - ok else ''}'>failed: <b>{n - ok}</b></span>"
               f"<span class='{'bad' if review else ''}'>need review: <b>{len(review)}</b></span></p>")

    out.append("<h2>Cases to review</h2>")
    out.append(review_summary(flagged, review))
    if review:
        out.append("<div class='cases'>")
        out += [case_card(r, output_dir) for r in review]
        out.append("</div>")

    out.append("<h2>Cohort distributions</h2><p class='muted'>Succeeded cases; red ticks mark cases to review."
               "</p><div class='hists'>")
    good = [r for r in flagged if r.get("status") == STATUS_OK]
    for key, name, unit in HISTOGRAMS:
        vals = [r.get(key) for r in good if r.get(key) is not None]
        if not vals and key in ("tre_mean_mm", "dice_mean", "jacobian_min"):
            continue
        marked = [r.get(key) for r in good if r.get("needs_review")]
        out.append(svg_histogram(vals, name, unit, marked=marked))
    out.append("</div>")

    out.append("<h2>All cases</h2><table><tr>" + "".join(f"<th>{esc(t)}</th>" for _, t in TABLE_KEYS) + "</tr>")
    for r in flagged:
        cls = " class='flag'" if r.get("needs_review") else ""
        out.append(f"<tr{cls}>" + "".join(f"<td>{esc(_fmt(r.get(k)))}</td>" for k, _ in TABLE_KEYS) + "</tr>")
    out.append("</table><p class='muted'>The full table with units and descriptions: cohort_qc.tsv "
               "(+ cohort_qc.schema.tsv). Each case's outputs: cases/&lt;case_id&gt;/.</p></body></html>\n")
    tmp = path + ".partial"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("\n".join(out))
    os.replace(tmp, path)
    return path
