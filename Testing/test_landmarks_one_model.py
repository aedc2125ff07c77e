"""One landmark model: the same landmark files feed every command, and every landmark CSV a command writes is
read back by the others with the same labels and positions (issue #10).

The chain on small generated files (a 3D blob volume and a copy moved by a known translation, six landmarks whose
moving file lists them in another order): ``register --fixed-landmarks F --moving-landmarks M`` ->
``validate`` with F and M and with the CSVs register wrote -> ``landmarks register`` with them -> ``landmarks
import`` + ``landmarks stats``, whose consensus CSVs go back into ``validate`` and ``landmarks register``.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk

from CrossModalRegLib import cli
from CrossModalRegLib.errors import CrossModalRegError
from CrossModalRegLib.landmarks import (
    LandmarkSet,
    pair_landmarks,
    read_landmark_file,
    target_registration_error,
    write_fcsv,
    write_landmarks_csv,
    write_mrk_json,
)
from CrossModalRegLib.pipeline import landmarks_in_image_space, write_landmark_outputs

SHIFT = np.array([3.0, -2.0, 2.5])  # fixed -> moving, LPS mm
LABELS = ["nose", "left", "right", "top", "back", "chin"]
FIXED_LPS = np.array([[0.0, -20.0, 4.0], [18.0, 2.0, -6.0], [-17.0, 4.0, 8.0], [2.0, 6.0, 22.0],
                      [-4.0, 21.0, -3.0], [6.0, -12.0, -19.0]])
MOVING_ORDER = [3, 0, 5, 1, 4, 2]  # the moving file lists the landmarks in another order


def _blob_image():
    size, spacing, origin = 36, 2.0, -35.0
    idx = np.indices((size,) * 3).astype(float) * spacing + origin  # (k, j, i) -> z, y, x in mm
    z, y, x = idx
    arr = np.zeros_like(x)
    for (cx, cy, cz), r, a in (((0, 0, 0), 14, 60), ((9, -6, 4), 5, 80), ((-10, 8, -6), 6, 50), ((4, 10, 12), 4, 90)):
        arr += a * np.exp(-((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) / (2 * r * r))
    image = sitk.GetImageFromArray(arr.astype(np.float32))
    image.SetSpacing((spacing,) * 3)
    image.SetOrigin((origin,) * 3)
    return image


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("one_model")
    fixed = _blob_image()
    # moving(x) = fixed(x - SHIFT): the fixed point p is at p + SHIFT in the moving image
    moving = sitk.Resample(fixed, fixed, sitk.TranslationTransform(3, tuple(-SHIFT)), sitk.sitkLinear, 0.0)
    paths = {"fixed": str(d / "fixed.nii.gz"), "moving": str(d / "moving.nii.gz"),
             "F": str(d / "F.csv"), "M": str(d / "M.csv"), "F2": str(d / "F2.csv"), "M2": str(d / "M2.csv")}
    sitk.WriteImage(fixed, paths["fixed"])
    sitk.WriteImage(moving, paths["moving"])
    moving_lps = FIXED_LPS + SHIFT
    write_landmarks_csv(paths["F"], LABELS, FIXED_LPS)
    write_landmarks_csv(paths["M"], [LABELS[i] for i in MOVING_ORDER], moving_lps[MOVING_ORDER])
    jitter = np.random.RandomState(3).normal(0, 0.3, FIXED_LPS.shape)  # a second annotator
    write_landmarks_csv(paths["F2"], LABELS, FIXED_LPS + jitter)
    write_landmarks_csv(paths["M2"], LABELS, moving_lps + jitter)  # the same error on both: consensus pairs exact
    return d, paths


def _tsv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def _assert_same(a: LandmarkSet, labels, points, atol=1e-9):
    assert a.labels == list(labels)
    np.testing.assert_allclose(a.points, points, atol=atol)


def test_register_validate_landmarks_chain_reads_the_same_files_and_what_each_writes(files, capsys):
    d, p = files
    reg = d / "reg"
    code = cli.main(["register", "--fixed", p["fixed"], "--moving", p["moving"], "--fixed-landmarks", p["F"],
                     "--moving-landmarks", p["M"], "--landmarks-for", "evaluation", "--no-rotation-search",
                     "--no-orientation-search", "--output-dir", str(reg), "--no-progress"])
    assert code == 0, capsys.readouterr().err
    prov = json.loads((reg / "registration.json").read_text())["landmarks"]
    assert prov["labels"] == LABELS  # paired by label, in the fixed file's order
    np.testing.assert_allclose(prov["distance_before_mm"], [np.linalg.norm(SHIFT)] * 6, atol=1e-9)
    assert prov["mean_after_mm"] < 0.5  # the translation is recovered
    # what register wrote is the landmark CSV, frame in the header, the pairs it used
    for role, truth in (("fixed", FIXED_LPS), ("moving", FIXED_LPS + SHIFT)):
        path = reg / f"{role}_landmarks.csv"
        assert path.read_text().splitlines()[0] == "label,x_lps,y_lps,z_lps"
        _assert_same(read_landmark_file(str(path)), LABELS, truth)

    # validate: with the user's files and with the files register wrote, the same landmark table
    tables = []
    for name, (fl, ml) in {"input": (p["F"], p["M"]),
                           "written": (str(reg / "fixed_landmarks.csv"), str(reg / "moving_landmarks.csv"))}.items():
        out = d / f"val_{name}"
        assert cli.main(["validate", "--fixed", p["fixed"], "--moving", p["moving"], "--transform",
                         str(reg / "transform.h5"), "--fixed-landmarks", fl, "--moving-landmarks", ml,
                         "--output-dir", str(out)]) == 0
        tables.append(_tsv(out / "landmarks.tsv"))
    assert tables[0] == tables[1]
    assert [r["label"] for r in tables[0]] == LABELS
    np.testing.assert_allclose([float(r["tre_before_mm"]) for r in tables[0]], [np.linalg.norm(SHIFT)] * 6,
                               atol=1e-4)
    np.testing.assert_allclose([float(r["tre_after_mm"]) for r in tables[0]], prov["distance_after_mm"], atol=1e-4)

    # landmarks register: the written pairs give the known translation back
    lreg = d / "lreg"
    assert cli.main(["landmarks", "register", "--fixed-landmarks", str(reg / "fixed_landmarks.csv"),
                     "--moving-landmarks", p["M"], "--model", "rigid", "--output-dir", str(lreg)]) == 0
    matrix = np.array(json.loads((lreg / "registration.json").read_text())["matrix_fixed_to_moving"])
    np.testing.assert_allclose(matrix[:3, 3], SHIFT, atol=1e-9)
    np.testing.assert_allclose(matrix[:3, :3], np.eye(3), atol=1e-12)
    assert [r["label"] for r in _tsv(lreg / "registration.tsv")] == LABELS


def test_landmarks_stats_consensus_csvs_feed_validate_and_landmarks_register(files):
    d, p = files
    session, stats = d / "session", d / "stats"
    assert cli.main(["landmarks", "import", str(session), "--image", f"fixed={p['fixed']}", "--image",
                     f"moving={p['moving']}", "--annotator", f"a=fixed:{p['F']},moving:{p['M']}",
                     "--annotator", f"b=fixed:{p['F2']},moving:{p['M2']}"]) == 0
    assert cli.main(["landmarks", "stats", str(session), "--output-dir", str(stats)]) == 0
    f2, m2 = read_landmark_file(p["F2"]), read_landmark_file(p["M2"])
    for image, second, truth in (("fixed", f2, FIXED_LPS), ("moving", m2, FIXED_LPS + SHIFT)):
        path = stats / f"consensus_{image}.csv"
        assert path.read_text().splitlines()[0] == "label,x_lps,y_lps,z_lps"
        _assert_same(read_landmark_file(str(path)), LABELS, (truth + second.points) / 2)  # mean of a and b
    truth = sitk.TranslationTransform(3, tuple(SHIFT))
    sitk.WriteTransform(truth, str(d / "truth.tfm"))
    out = d / "val_consensus"
    assert cli.main(["validate", "--fixed", p["fixed"], "--moving", p["moving"], "--transform", str(d / "truth.tfm"),
                     "--fixed-landmarks", str(stats / "consensus_fixed.csv"), "--moving-landmarks",
                     str(stats / "consensus_moving.csv"), "--output-dir", str(out)]) == 0
    rows = _tsv(out / "landmarks.tsv")
    assert [r["label"] for r in rows] == LABELS
    assert max(float(r["tre_after_mm"]) for r in rows) < 1e-4  # both consensuses carry the same mean error
    lreg = d / "lreg_consensus"
    assert cli.main(["landmarks", "register", "--fixed-landmarks", str(stats / "consensus_fixed.csv"),
                     "--moving-landmarks", str(stats / "consensus_moving.csv"), "--model", "rigid",
                     "--output-dir", str(lreg)]) == 0
    np.testing.assert_allclose(json.loads((lreg / "registration.json").read_text())["fre_rms"], 0.0, atol=1e-9)


@pytest.mark.parametrize("fmt", ["csv-lps", "csv-ras", "old-lps", "old-ras", "fcsv-ras", "mrk-json"])
def test_every_format_reads_to_the_same_landmarks_and_the_same_validation(files, fmt):
    d, p = files
    path = d / f"fixed_{fmt}.{ {'fcsv-ras': 'fcsv', 'mrk-json': 'mrk.json'}.get(fmt, 'csv') }"
    ras = FIXED_LPS * [-1, -1, 1]
    if fmt == "csv-lps":
        write_landmarks_csv(str(path), LABELS, FIXED_LPS)
    elif fmt == "csv-ras":
        write_landmarks_csv(str(path), LABELS, FIXED_LPS, frame="RAS")
        assert path.read_text().startswith("label,x_ras,y_ras,z_ras\n")
    elif fmt.startswith("old"):  # the dialect validate used to read: a '# frame:' line, rows label,x,y,z
        frame, pts = ("LPS", FIXED_LPS) if fmt == "old-lps" else ("RAS", ras)
        header = "label,x,y,z\n" if frame == "LPS" else ""
        path.write_text(f"# frame: {frame}\n{header}" + "".join(f"{lab},{x},{y},{z}\n" for lab, (x, y, z)
                                                                 in zip(LABELS, pts)))
    elif fmt == "fcsv-ras":
        write_fcsv(str(path), LABELS, FIXED_LPS, coordinate_system="RAS")
    else:
        write_mrk_json(str(path), LABELS, FIXED_LPS)
    _assert_same(read_landmark_file(str(path)), LABELS, FIXED_LPS, atol=1e-12)
    sitk.WriteTransform(sitk.TranslationTransform(3, tuple(SHIFT)), str(d / f"t_{fmt}.tfm"))
    out = d / f"val_{fmt}"
    assert cli.main(["validate", "--fixed", p["fixed"], "--moving", p["moving"], "--transform", str(d / f"t_{fmt}.tfm"),
                     "--fixed-landmarks", str(path), "--moving-landmarks", p["M"], "--output-dir", str(out)]) == 0
    rows = _tsv(out / "landmarks.tsv")
    assert [r["label"] for r in rows] == LABELS and max(float(r["tre_after_mm"]) for r in rows) < 1e-6


def test_2d_runs_write_pixel_csvs_that_read_back_to_the_same_physical_points(tmp_path):
    fixed = sitk.Image(60, 40, sitk.sitkFloat32)
    fixed.SetSpacing((0.5, 0.25))
    fixed.SetOrigin((10.0, -3.0))
    moving = sitk.Image(50, 50, sitk.sitkFloat32)
    moving.SetSpacing((0.8, 0.8))  # every point inside the moving image too (points outside are refused)
    moving.SetOrigin((5.0, -4.0))
    pixels = np.array([[3.0, 4.5], [20.25, 7.0], [41.0, 30.0]])
    f_phys = landmarks_in_image_space(fixed, LandmarkSet(["a", "b", "c"], pixels, "pixel", "f.csv"), "fixed").points
    m_phys = f_phys + [1.0, 2.0]
    files = write_landmark_outputs(str(tmp_path), fixed, moving, ["a", "b", "c"], f_phys, m_phys)
    assert (tmp_path / files["fixed"]).read_text().splitlines()[0] == "label,x_pixel,y_pixel"
    back = read_landmark_file(str(tmp_path / files["fixed"]))
    assert back.frame == "pixel"
    _assert_same(back, ["a", "b", "c"], pixels)
    moving_back = landmarks_in_image_space(moving, read_landmark_file(str(tmp_path / files["moving"])), "moving")
    _assert_same(moving_back, ["a", "b", "c"], m_phys)


def test_pairing_is_by_label_and_the_tre_is_measured_in_the_moving_space():
    fixed = LandmarkSet(LABELS, FIXED_LPS, source="F.csv")
    moving = LandmarkSet([LABELS[i] for i in MOVING_ORDER], (FIXED_LPS + SHIFT)[MOVING_ORDER], source="M.csv")
    pairs = pair_landmarks(fixed, moving)
    assert pairs.labels == LABELS
    np.testing.assert_allclose(pairs.moving - pairs.fixed, np.tile(SHIFT, (6, 1)))
    tre = target_registration_error(sitk.TranslationTransform(3, tuple(SHIFT)), pairs.fixed, pairs.moving)
    np.testing.assert_allclose(tre.before, np.linalg.norm(SHIFT))
    np.testing.assert_allclose(tre.after, 0.0, atol=1e-12)
    np.testing.assert_allclose(tre.mapped, pairs.moving)
    with pytest.raises(CrossModalRegError, match=r"\['chin'\] only in fixed \(F.csv\)"):
        pair_landmarks(fixed, LandmarkSet(LABELS[:5], FIXED_LPS[:5], source="M.csv"))
    pixel = LandmarkSet(["a", "b"], np.zeros((2, 2)), "pixel", "P.csv")
    with pytest.raises(CrossModalRegError, match="give both in the same frame"):
        pair_landmarks(fixed, pixel)


@pytest.mark.parametrize("command", ["register", "validate", "landmarks register"])
def test_one_sided_labels_are_refused_by_every_command_and_skipped_on_request(files, tmp_path, capsys, command):
    d, p = files
    short = tmp_path / "short.csv"
    write_landmarks_csv(str(short), LABELS[:5], FIXED_LPS[:5] + SHIFT)
    out = tmp_path / "out"
    sitk.WriteTransform(sitk.TranslationTransform(3, tuple(SHIFT)), str(tmp_path / "t.tfm"))
    images = ["--fixed", p["fixed"], "--moving", p["moving"]]
    argv = {"register": ["register", *images, "--no-progress", "--no-rotation-search", "--no-orientation-search",
                         "--landmarks-for", "evaluation"],
            "validate": ["validate", *images, "--transform", str(tmp_path / "t.tfm")],
            "landmarks register": ["landmarks", "register", "--model", "rigid"]}[command]
    argv += ["--fixed-landmarks", p["F"], "--moving-landmarks", str(short), "--output-dir", str(out)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "['chin'] only in fixed" in err[0] and "--skip-unpaired-landmarks" in err[0]
    assert not out.exists()
    if command != "register":  # register's run with the option is the chain test's (and costs a registration)
        assert cli.main(argv + ["--skip-unpaired-landmarks"]) == 0
        assert out.exists()


def test_batch_pairs_by_label_skipping_one_sided_labels_only_for_anhir_pixel_files(files, shared_data, tmp_path):
    from CrossModalRegLib.batch.case import _landmark_pairs
    from CrossModalRegLib.batch.cohort import CohortCase

    h = shared_data / "histology"
    he, pck = sitk.ReadImage(str(h / "Rat-Kidney_HE.jpg")), sitk.ReadImage(str(h / "Rat-Kidney_PanCytokeratin.jpg"))
    case = CohortCase("anhir", str(h / "Rat-Kidney_HE.jpg"), str(h / "Rat-Kidney_PanCytokeratin.jpg"),
                      fixed_landmarks=str(h / "Rat-Kidney_HE.csv"), moving_landmarks=str(h / "Rat-Kidney_PanCytokeratin.csv"))
    pairs = _landmark_pairs(case, he, pck)
    assert pairs.labels == [str(i) for i in range(1, 70)] and pairs.unpaired == ["70", "71"]
    pixels = read_landmark_file(str(h / "Rat-Kidney_HE.csv")).points[:69]
    np.testing.assert_allclose(pairs.fixed, [he.TransformContinuousIndexToPhysicalPoint(tuple(p)) for p in pixels])
    d, p = files
    short = tmp_path / "short.csv"
    write_landmarks_csv(str(short), LABELS[:5], FIXED_LPS[:5])
    case3d = CohortCase("3d", p["fixed"], p["moving"], fixed_landmarks=p["F"], moving_landmarks=str(short))
    fixed, moving = sitk.ReadImage(p["fixed"]), sitk.ReadImage(p["moving"])
    with pytest.raises(CrossModalRegError, match=r"\['chin'\] only in fixed"):
        _landmark_pairs(case3d, fixed, moving)


def test_validate_refuses_2d_pixel_landmarks_in_one_line(files, tmp_path, capsys):
    d, p = files
    pixel = tmp_path / "px.csv"
    write_landmarks_csv(str(pixel), ["a", "b", "c"], np.zeros((3, 2)), frame="pixel")
    sitk.WriteTransform(sitk.TranslationTransform(3, tuple(SHIFT)), str(tmp_path / "t.tfm"))
    out = tmp_path / "out"
    assert cli.main(["validate", "--fixed", p["fixed"], "--moving", p["moving"], "--transform", str(tmp_path / "t.tfm"),
                     "--fixed-landmarks", str(pixel), "--moving-landmarks", p["M"], "--output-dir", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "px.csv' are 2D pixels but the fixed image is 3D" in err[0] and not out.exists()


def test_2d_register_then_validate_with_the_pixel_csvs_it_wrote_gives_its_own_landmark_errors(shared_data, tmp_path,
                                                                                               capsys):
    """A 2D pair (BrainWeb, moving shifted by the README's (13, 17) mm): register with pixel landmark files, then
    validate with the pixel CSVs register wrote: validate measures them (as a one-slice volume) and finds the
    distances register recorded; and 3D landmarks off the 2D plane are refused in one line."""
    from _cases import BRAINWEB_CASES

    fixed_name, moving_name, truth = BRAINWEB_CASES["shift_13_17"]
    f_path, m_path = (str(shared_data / "brainweb2d" / n) for n in (fixed_name, moving_name))
    fixed, moving = sitk.ReadImage(f_path), sitk.ReadImage(m_path)
    f_px = np.array([[60.0, 70.0], [150.0, 80.0], [100.0, 160.0], [70.0, 140.0]])
    tx = truth()
    m_px = np.array([moving.TransformPhysicalPointToContinuousIndex(
        tx.TransformPoint(fixed.TransformContinuousIndexToPhysicalPoint(tuple(p)))) for p in f_px])
    labels = ["a", "b", "c", "d"]
    write_landmarks_csv(str(tmp_path / "F.csv"), labels, f_px, frame="pixel")
    write_landmarks_csv(str(tmp_path / "M.csv"), labels, m_px, frame="pixel")
    reg = tmp_path / "reg"
    assert cli.main(["register", "--fixed", f_path, "--moving", m_path, "--fixed-landmarks", str(tmp_path / "F.csv"),
                     "--moving-landmarks", str(tmp_path / "M.csv"), "--landmarks-for", "evaluation", "--no-progress",
                     "--output-dir", str(reg)]) == 0
    recorded = json.loads((reg / "registration.json").read_text())["landmarks"]
    val = tmp_path / "val"
    assert cli.main(["validate", "--fixed", f_path, "--moving", m_path, "--transform", str(reg / "transform.h5"),
                     "--fixed-landmarks", str(reg / "fixed_landmarks.csv"), "--moving-landmarks",
                     str(reg / "moving_landmarks.csv"), "--output-dir", str(val)]) == 0
    rows = _tsv(val / "landmarks.tsv")
    assert [r["label"] for r in rows] == labels
    np.testing.assert_allclose([float(r["tre_after_mm"]) for r in rows], recorded["distance_after_mm"], atol=1e-3)
    np.testing.assert_allclose([float(r["tre_before_mm"]) for r in rows], recorded["distance_before_mm"], atol=1e-3)
    assert max(recorded["distance_after_mm"]) < 0.5 < min(recorded["distance_before_mm"])  # 21.4 mm before
    capsys.readouterr()
    lifted = tmp_path / "F3d.csv"
    pts = np.array([fixed.TransformContinuousIndexToPhysicalPoint(tuple(p)) for p in f_px])
    write_landmarks_csv(str(lifted), labels, np.column_stack([pts, np.full(len(pts), 5.0)]))
    assert cli.main(["validate", "--fixed", f_path, "--moving", m_path, "--transform", str(reg / "transform.h5"),
                     "--fixed-landmarks", str(lifted), "--moving-landmarks", str(reg / "moving_landmarks.csv"),
                     "--output-dir", str(tmp_path / "val3d")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "off the image plane" in err[0] and not (tmp_path / "val3d").exists()


def test_a_landmark_set_refuses_what_pairing_cannot_use_and_the_writer_what_a_csv_cannot_hold(tmp_path):
    with pytest.raises(CrossModalRegError, match="M.csv: duplicate landmark label 'a'"):
        LandmarkSet(["a", "b", "a"], np.zeros((3, 3)), source="M.csv")
    with pytest.raises(CrossModalRegError, match="2 labels for 3 points"):
        LandmarkSet(["a", "b"], np.zeros((3, 3)))
    with pytest.raises(CrossModalRegError, match=r"landmarks \['b'\] have missing or non-numeric"):
        LandmarkSet(["a", "b"], [[0, 0, 0], [np.nan, 0, 0]])
    with pytest.raises(CrossModalRegError, match="pixel points need 2"):
        LandmarkSet(["a"], np.zeros((1, 3)), "pixel")
    node_like = LandmarkSet(["F-1, left", "F-2"], np.zeros((2, 3)))  # a Slicer node may hold such a label
    with pytest.raises(CrossModalRegError, match="contains a comma"):
        write_landmarks_csv(str(tmp_path / "x.csv"), node_like.labels, node_like.points)
    assert not (tmp_path / "x.csv").exists()


def test_stats_says_which_labels_a_consensus_csv_leaves_out_and_the_chain_pairs_the_rest(files, tmp_path, capsys):
    """A second annotator 25 mm off on one fixed landmark: the pair is flagged there, the fixed consensus CSV has
    no such row; stats names it, `landmarks register` without --skip-unpaired-landmarks refuses naming it, and with
    it registers on the other five."""
    d, p = files
    bad = read_landmark_file(p["F2"]).points.copy()
    bad[2] += [25.0, 0.0, 0.0]
    write_landmarks_csv(str(tmp_path / "F2bad.csv"), LABELS, bad)
    session, stats = tmp_path / "session", tmp_path / "stats"
    assert cli.main(["landmarks", "import", str(session), "--image", f"fixed={p['fixed']}", "--image",
                     f"moving={p['moving']}", "--annotator", f"a=fixed:{p['F']},moving:{p['M']}",
                     "--annotator", f"b=fixed:{tmp_path / 'F2bad.csv'},moving:{p['M2']}"]) == 0
    capsys.readouterr()
    assert cli.main(["landmarks", "stats", str(session), "--output-dir", str(stats), "--outlier-distance", "5"]) == 0
    out = capsys.readouterr().out
    assert f"fixed: consensus_fixed.csv leaves out {LABELS[2]}" in out, out
    assert LABELS[2] not in read_landmark_file(str(stats / "consensus_fixed.csv")).labels
    args = ["landmarks", "register", "--fixed-landmarks", str(stats / "consensus_fixed.csv"), "--moving-landmarks",
            str(stats / "consensus_moving.csv"), "--model", "rigid"]
    assert cli.main(args + ["--output-dir", str(tmp_path / "refused")]) == 2
    assert LABELS[2] in capsys.readouterr().err
    assert cli.main(args + ["--output-dir", str(tmp_path / "lreg"), "--skip-unpaired-landmarks"]) == 0
    assert json.loads((tmp_path / "lreg" / "registration.json").read_text())["n_landmarks"] == len(LABELS) - 1


def test_2d_landmarks_outside_their_image_are_refused_with_the_pixel_bounds():
    image = sitk.Image(60, 40, sitk.sitkFloat32)
    image.SetSpacing((0.5, 0.25))
    inside = LandmarkSet(["a", "b"], np.array([[-0.5, 0.0], [59.5, 39.5]]), "pixel", "in.csv")  # on the edges
    assert len(landmarks_in_image_space(image, inside, "fixed")) == 2
    outside = LandmarkSet(["a", "b"], np.array([[3.0, 4.0], [61.0, 5.0]]), "pixel", "out.csv")
    with pytest.raises(CrossModalRegError, match=r"1 of 2 fixed landmarks of 'out.csv' lie outside the fixed image "
                                                 r"\(e\.g\. 'b' at pixel \[61\.0, 5\.0\]; the image is 60 x 40 pixels"):
        landmarks_in_image_space(image, outside, "fixed")
