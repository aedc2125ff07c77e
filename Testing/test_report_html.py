"""QC pictures and report.html: a 2 mm misregistration is visible, the page opens in a real browser.

The browser is Debian's headless chromium (``scripts/setup-venv.sh`` installs it with the test extra). Outside CI
the browser test skips with a reason when chromium is absent; with ``CI=true`` it fails instead.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import tempfile

import numpy as np
import pytest
import SimpleITK as sitk

from CrossModalRegLib import cli, qc_pictures
from CrossModalRegLib.landmarks.fileio import write_landmarks_csv
from CrossModalRegLib.mrml import set_transform_fixed_to_moving, volume_node_from_image
from CrossModalRegLib.pipeline import TerminalProgress
from CrossModalRegLib.progress import Progress
from CrossModalRegLib.report_html import fmt, level_segments


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _small_t1(shared_data) -> sitk.Image:
    t1 = sitk.ReadImage(str(shared_data / "mni152" / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"),
                        sitk.sitkFloat32)
    return sitk.BinShrink(t1, [2, 2, 2])


def _best_shift(a: np.ndarray, b: np.ndarray, max_shift: int = 10) -> tuple[int, int]:
    """Integer (dx, dy) that moves ``a`` onto ``b`` best (least squares over the common part)."""
    best, arg = np.inf, (0, 0)
    m = max_shift
    for dy in range(-m, m + 1):
        for dx in range(-m, m + 1):
            sa = a[m + dy:a.shape[0] - m + dy, m + dx:a.shape[1] - m + dx]
            sb = b[m:b.shape[0] - m, m:b.shape[1] - m]
            err = float(np.mean((sa - sb) ** 2))
            if err < best:
                best, arg = err, (dx, dy)
    return arg


def test_a_2mm_misregistration_is_visible_in_the_before_after_pictures(shared_data, slicer_app):
    """The moving image is the fixed one placed 2 mm to the patient's left; 'after' applies the true transform."""
    fixed = _small_t1(shared_data)
    moving = sitk.Image(fixed)
    moving.SetOrigin(tuple(np.array(fixed.GetOrigin()) + (2.0, 0.0, 0.0)))  # LPS +x: 2 mm to the left
    truth = sitk.TranslationTransform(3, (2.0, 0.0, 0.0))  # fixed -> moving
    scene = slicer_app.scene
    fixed_node = volume_node_from_image(scene, fixed, "fixed")
    moving_node = volume_node_from_image(scene, moving, "moving")
    tnode = scene.AddNewNodeByClass("vtkMRMLTransformNode", "t")
    set_transform_fixed_to_moving(tnode, truth)
    qc = qc_pictures.render_qc(scene, slicer_app.app_logic, fixed, fixed_node, moving_node, tnode, truth)

    axial = qc.geometry[0]
    assert [g.name for g in qc.geometry] == ["Axial", "Coronal", "Sagittal"]
    assert all(g.px_per_mm >= 2.0 for g in qc.geometry)  # 1 mm is at least 2 px
    assert {g.fov_mm for g in qc.geometry} == {axial.fov_mm}  # one field of view for every panel
    # Before: the moving image lies 2 mm away from the fixed one on screen; after, on it. Measured on the moving
    # layer of the axial view, rendered by Slicer's slice logic with and without the transform.
    renderer = qc_pictures.SliceRenderer(scene, slicer_app.app_logic, fixed_node, moving_node)
    bg, fg_after = renderer.layers(axial)
    moving_node.SetAndObserveTransformNodeID(None)
    _, fg_before = renderer.layers(axial)
    dx, dy = _best_shift(fg_before[..., 0].astype(float), fg_after[..., 0].astype(float))
    assert dy == 0 and abs(abs(dx) - 2.0 * axial.px_per_mm) <= 1.0, (dx, dy, axial.px_per_mm)
    assert np.abs(fg_after[..., 0].astype(float) - bg[..., 0]).mean() < 2.0  # aligned: the layers coincide
    # The labelled checkerboards differ measurably before and after (tile seams break up where it is misaligned).
    before = qc.panels[("checkerboard", "before")][0].astype(float)
    after = qc.panels[("checkerboard", "after")][0].astype(float)
    changed = (np.abs(before - after).max(axis=2) > 30).mean()
    assert changed > 0.03, changed
    # The red fixed-edge contour is the same line before and after; only the moving image under it moves.
    red = np.array(qc_pictures.EDGE_RGB)
    cb = (qc.panels[("contour", "before")][0] == red).all(axis=2)
    ca = (qc.panels[("contour", "after")][0] == red).all(axis=2)
    assert cb.sum() > 500 and (cb == ca).mean() > 0.999


def test_checkerboard_tiles_fit_the_anatomy_and_outside_the_moving_field_of_view_shows_the_fixed():
    bg = np.zeros((400, 400, 4), np.uint8)
    bg[..., :3], bg[..., 3] = 100, 255
    fg = np.zeros_like(bg)
    fg[:, :200, :3], fg[:, :200, 3] = 200, 255  # the moving image covers only the left half
    board = qc_pictures.checkerboard_panel(bg, fg, tile_px=40)
    assert (board[:, 200:] == 100).all()  # no black tiles where the moving has no data
    assert (board[:, :200] == 200).mean() == pytest.approx(0.5, abs=0.05)
    # Tiles, not stripes: 40 px squares counted from the view's centre, fixed and moving alternating in both
    # directions, read at each tile's centre over the moving image's half.
    for ty in range(-5, 5):
        for tx in range(-5, 0):
            y, x = 200 + 40 * ty + 20, 200 + 40 * tx + 20
            assert (board[y, x] == (200 if (ty + tx) % 2 else 100)).all(), (ty, tx, board[y, x])
    roi = qc_pictures.Roi(np.zeros(3), np.array([140.0, 180.0, 120.0]))
    geom = qc_pictures.view_geometry("Axial", roi)
    tiles_across = 180.0 * geom.px_per_mm / geom.tile_px
    assert 8 <= tiles_across <= 12 and geom.px_per_mm >= 2.0


def test_numbers_are_rounded_with_units_and_integers_stay_integers():
    assert fmt(10.0) == "10" and fmt(3) == "3" and fmt(0.123456, 3, "mm") == "0.123 mm"
    assert fmt(-0.6843119876, 5) == "-0.68431" and fmt(None) == "" and fmt(True) == "yes"
    rows = [{"stage_index": 0, "stage": "rigid", "level": 0}, {"stage_index": 0, "stage": "rigid", "level": 0},
            {"stage_index": 0, "stage": "rigid", "level": 1}, {"stage_index": 1, "stage": "affine", "level": 0}]
    assert level_segments(rows) == [(0, 1, "stage 1 rigid level 1"), (2, 2, "stage 1 rigid level 2"),
                                    (3, 3, "stage 2 affine level 1")]


def test_multi_stage_progress_says_which_stage_it_is_in():
    out = io.StringIO()
    progress = TerminalProgress(stream=out)
    for f, si, msg in ((0.1, 0, "rigid level 1/3"), (0.15, 0, "rigid level 2/3"), (0.5, 1, "affine level 1/2"),
                       (1.0, 1, "affine done")):
        progress(Progress(fraction=f, stage=msg.split()[0], stage_index=si, n_stages=2, message=msg))
    text = out.getvalue()
    assert "stage 1/2 rigid level 1/3" in text and "stage 2/2 affine level 1/2" in text
    single = io.StringIO()
    TerminalProgress(stream=single)(Progress(fraction=1.0, stage="rigid", n_stages=1, message="rigid done"))
    assert single.getvalue().split("% ", 1)[1].startswith("rigid done")  # one stage: no "stage 1/1"


@pytest.fixture(scope="module")
def registered_3d(shared_data, tmp_path_factory):
    """A real `crossmodalreg register` run on a 3D pair with evaluation landmarks (MNI T1 at 2 mm, moved 6 mm)."""
    d = tmp_path_factory.mktemp("report")
    fixed = _small_t1(shared_data)
    truth = sitk.Euler3DTransform((0, 0, 0), 0.05, 0.0, 0.03, (4.0, -3.0, 3.0))
    truth.SetCenter(fixed.TransformContinuousIndexToPhysicalPoint([s / 2 for s in fixed.GetSize()]))
    moving = sitk.Resample(fixed, truth.GetInverse(), sitk.sitkLinear, 0.0)  # moving(p) = fixed(T^-1 p)
    sitk.WriteImage(fixed, str(d / "fixed.nii.gz"))
    sitk.WriteImage(moving, str(d / "moving.nii.gz"))
    c = np.array(truth.GetCenter())
    pts = c + np.array([[0, 0, 0], [30, 0, 0], [-30, 0, 0], [0, 35, 0], [0, -40, 10], [0, 0, 30], [20, 20, -20]])
    labels = [f"p{i}" for i in range(len(pts))]
    write_landmarks_csv(str(d / "fixed.csv"), labels, pts)
    write_landmarks_csv(str(d / "moving.csv"), labels, [truth.TransformPoint(tuple(p)) for p in pts])
    out = d / "out"
    terminal = io.StringIO()
    with contextlib.redirect_stdout(terminal):
        code = cli.main(["register", "--fixed", str(d / "fixed.nii.gz"), "--moving", str(d / "moving.nii.gz"),
                         "--preset", "mr-t1-t2-rigid", "--fixed-landmarks", str(d / "fixed.csv"),
                         "--moving-landmarks", str(d / "moving.csv"), "--landmarks-for", "evaluation",
                         "--no-orientation-search", "--output-dir", str(out), "--no-progress"])
    assert code == 0
    (d / "terminal.txt").write_text(terminal.getvalue())
    return out


def test_register_writes_a_report_and_a_tsv_with_rounded_numbers(registered_3d):
    out = registered_3d
    terminal = (out.parent / "terminal.txt").read_text()
    assert re.search(r"landmarks \(evaluation, 7 pairs\): mean distance \d+\.\d\d mm before -> \d\.\d\d mm after",
                     terminal), terminal
    assert f"report: {out / 'report.html'}" in terminal
    page = (out / "report.html").read_text()
    prov = json.loads((out / "registration.json").read_text())
    assert "Sanity checks passed" in page and "not comparable across levels" in page
    assert page.count("<img") == 1 and "data:image/png;base64," in page
    assert "--landmarks-for evaluation" in prov["command"] and f"--seed {prov['seed']}" in prov["command"]
    assert "crossmodalreg register --fixed" in page  # the command to repeat the run
    for label, after in zip(prov["landmarks"]["labels"], prov["landmarks"]["distance_after_mm"]):
        assert f"<td>{label}</td>" in page and f"<td>{fmt(after, 3, 'mm')}</td>" in page
    lines = (out / "metric_trace.tsv").read_text().splitlines()
    assert lines[0].split("\t") == ["iteration_index", "stage", "level", "iteration", "metric"]
    for line in lines[1:]:
        idx, _, level, it, metric = line.split("\t")
        assert idx.isdigit() and level.isdigit() and it.isdigit()
        assert len(metric.lstrip("-").replace(".", "").lstrip("0")) <= 6, metric
    assert "final_metric_note" in prov and prov["qc_pictures"]["pixels_per_mm"] >= 2.0


def test_validate_links_the_registration_report(registered_3d, tmp_path, capsys):
    d = registered_3d.parent
    code = cli.main(["validate", "--fixed", str(d / "fixed.nii.gz"), "--moving", str(d / "moving.nii.gz"),
                     "--transform", str(registered_3d / "transform.h5"), "--output-dir", str(tmp_path / "v")])
    assert code == 0
    report = str(registered_3d / "report.html")
    assert f"registration report (pictures, checks): {report}" in capsys.readouterr().out
    summary = json.loads((tmp_path / "v" / "summary.json").read_text())
    assert summary["provenance"]["registration_report"] == report


def test_a_failed_run_report_says_so_first_with_the_failing_check():
    from CrossModalRegLib.report_html import write_report

    prov = {"initial_metric": -0.5, "final_metric": -0.4, "metric_trace": [],
            "sanity": {"passed": False, "checks": [
                {"name": "metric_improved", "passed": False, "value": -0.4, "limit": "<= start -0.5",
                 "message": "the metric got worse: -0.5 -> -0.4"},
                {"name": "overlap", "passed": True, "value": 0.99, "limit": ">= 0.05", "message": "ok"}]}}
    with tempfile.TemporaryDirectory() as d:
        page = open(write_report(os.path.join(d, "report.html"), prov), encoding="utf-8").read()
    head = page[page.index("<body>"):page.index("<h2>")]
    assert "FAILED post-run checks: the metric got worse: -0.5 -&gt; -0.4" in head
    assert "<tr class='bad'><td>metric_improved</td><td>FAIL</td><td>-0.4</td><td>&lt;= start -0.5</td>" in page
    assert "was not made" in page and "No landmarks were given" in page and "No metric trace recorded" in page


def _chromium() -> str | None:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if _in_ci():
            pytest.fail("CI=true but chromium is missing: scripts/setup-venv.sh VENV test installs it")
        pytest.skip("chromium not installed (scripts/setup-venv.sh .venv test installs Debian's chromium)")
    return path


def _run_chromium(args: list[str]) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as profile:
        cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
               *args]
        # bytes decoded as UTF-8 whatever the locale (a C/POSIX locale would decode the page as ASCII and fail)
    return subprocess.run(cmd, capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=120)


PROBE = """<script>window.addEventListener('load', function () {
  var out = [];
  document.querySelectorAll('img').forEach(function (im) { out.push([im.complete, im.naturalWidth, im.naturalHeight]); });
  var p = document.createElement('pre'); p.id = 'probe'; p.textContent = JSON.stringify(out);
  document.body.appendChild(p);
});</script>"""


def test_report_opens_in_headless_chromium_every_image_decodes_and_nothing_refers_outside(registered_3d, tmp_path):
    page = (registered_3d / "report.html").read_text()
    # Self-contained: no URL, no file reference, no script, every src a data URI.
    assert not re.search(r"https?:|file:|<script|<link|@import|url\(", page, re.I)
    assert all(src.startswith("data:image/png;base64,") for src in re.findall(r"src=['\"]([^'\"]*)", page))
    probe = tmp_path / "probe.html"  # a copy with a probe script; the report itself has none
    probe.write_text(page.replace("</body>", PROBE + "</body>"))
    dom = _run_chromium(["--virtual-time-budget=10000", "--dump-dom", probe.as_uri()])
    assert dom.returncode == 0, dom.stderr[-2000:]
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom.stdout, re.S)
    assert found, dom.stdout[-2000:]
    images = json.loads(found.group(1))
    assert len(images) == 1
    for complete, width, height in images:
        assert complete and width > 1000 and height > 1000  # decoded at full size (4 panels x 3 views)
    assert "Sanity checks passed" in dom.stdout
    shot = tmp_path / "shot.png"
    res = _run_chromium(["--window-size=1400,2000", f"--screenshot={shot}", (registered_3d / "report.html").as_uri()])
    assert res.returncode == 0 and shot.is_file(), res.stderr[-2000:]
    arr = sitk.GetArrayFromImage(sitk.ReadImage(str(shot)))
    assert arr.shape[:2] == (2000, 1400) and arr.std() > 20  # a rendered page, not a blank one


def test_landmarks_far_from_the_slice_are_drawn_dim_and_those_on_it_bright():
    from CrossModalRegLib.qc_pictures import ERROR_RGB, FIXED_LM_RGB, NEAR_SLICE_MM, ViewGeometry, draw_landmarks

    geom = ViewGeometry(name="Axial", width=100, height=100, fov_mm=100.0, center_ras=np.zeros(3), tile_px=10,
                        xy_to_ras=np.eye(4))  # pixel (x, y) is RAS (x, y, 0); the slice normal is z
    rgb = np.zeros((100, 100, 3), np.uint8)
    fixed = np.array([[20.0, 20.0, 0.0], [70.0, 70.0, 3 * NEAR_SLICE_MM]])  # on the slice, and 30 mm off it
    draw_landmarks(rgb, geom, fixed, fixed + [10.0, 0.0, 0.0])
    near_dot, far_dot = rgb[100 - 1 - 20, 20], rgb[100 - 1 - 70, 70]
    assert tuple(near_dot) == FIXED_LM_RGB
    assert 0 < far_dot.max() < 0.5 * max(FIXED_LM_RGB)  # dimmed, still there
    assert tuple(rgb[100 - 1 - 20, 25]) == ERROR_RGB and rgb[100 - 1 - 70, 75].max() < 0.5 * max(ERROR_RGB)
