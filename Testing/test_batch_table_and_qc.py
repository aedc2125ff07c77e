"""Cohort batch without Dask or data: the cohort table's errors, the QC rules, the HTML report, the DONE marker."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from CrossModalRegLib.batch import CohortError, check_complete, flag_cases, read_cohort, robust_limits
from CrossModalRegLib.batch.case import write_done
from CrossModalRegLib.batch.qc import QC_COLUMNS, write_qc_table
from CrossModalRegLib.batch.report import svg_histogram, write_html_report


def _csv(tmp_path, text, name="cohort.csv"):
    p = tmp_path / name
    p.write_text(text)
    (tmp_path / "f.nii.gz").write_bytes(b"x")
    (tmp_path / "m.nii.gz").write_bytes(b"x")
    return str(p)


def test_reads_a_valid_table_with_relative_paths_and_comments(tmp_path):
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "lm.csv").write_text("label,x_lps,y_lps,z_lps\n")
    path = _csv(tmp_path, "# a comment line\ncase_id,fixed,moving,fixed_landmarks,moving_landmarks,preset,seed,note\n"
                "a1,f.nii.gz,m.nii.gz,sub/lm.csv,sub/lm.csv,multimodal-affine,7,first\n\n"
                "a2,f.nii.gz,missing.nii.gz,,,,,\n")
    cases = read_cohort(path)
    assert [c.case_id for c in cases] == ["a1", "a2"]
    a1, a2 = cases
    assert a1.fixed == str(tmp_path / "f.nii.gz") and a1.fixed_landmarks == str(sub / "lm.csv")
    assert a1.preset == "multimodal-affine" and a1.seed == 7 and a1.landmarks_for == "evaluation"
    assert (a1.row, a1.line) == (1, 3) and (a2.row, a2.line) == (2, 5)
    assert a1.problems == []
    assert len(a2.problems) == 1 and "column 'moving'" in a2.problems[0] and "missing.nii.gz" in a2.problems[0]


@pytest.mark.parametrize("text, expected", [
    ("case_id,fixed\nc1,f.nii.gz\n", "missing required column(s) 'moving'"),
    ("case_id,fixed,moving,movng_mask\nc1,f.nii.gz,m.nii.gz,x\n", "unknown column 'movng_mask'"),
    ("case_id,fixed,moving\nc1,f.nii.gz,m.nii.gz\nc2,,m.nii.gz\n", "row 2 (line 3), column 'fixed': empty"),
    ("case_id,fixed,moving\nc1,f.nii.gz,m.nii.gz\nc1,f.nii.gz,m.nii.gz\n",
     "row 2 (line 3), column 'case_id': 'c1' is already used by row 1"),
    ("case_id,fixed,moving\n../evil,f.nii.gz,m.nii.gz\n", "row 1 (line 2), column 'case_id': '../evil'"),
    ("case_id,fixed,moving,preset\nc1,f.nii.gz,m.nii.gz,no-such-preset\n",
     "row 1 (line 2), column 'preset': unknown preset 'no-such-preset'"),
    ("case_id,fixed,moving,seed\nc1,f.nii.gz,m.nii.gz,1.5\n", "row 1 (line 2), column 'seed': '1.5'"),
    ("case_id,fixed,moving,fixed_labels,moving_labels\nc1,f.nii.gz,m.nii.gz,f.nii.gz,\n",
     "row 1 (line 2), column 'moving_labels': empty while 'fixed_labels' is given"),
    ("case_id,fixed,moving,fixed_landmarks\nc1,f.nii.gz,m.nii.gz,x.csv\n",
     "column 'fixed_landmarks' needs its partner 'moving_landmarks'"),
    ("case_id,fixed,moving\nc1,f.nii.gz,m.nii.gz,extra\n", "row 1 (line 2): 4 cells but the header has 3 columns"),
    ("case_id,fixed,moving,landmarks_for\nc1,f.nii.gz,m.nii.gz,both\n", "row 1 (line 2), column 'landmarks_for'"),
    ("case_id,fixed,moving\n", "no case"),
    ("", "empty"),
])
def test_table_errors_name_the_row_and_column(tmp_path, text, expected):
    with pytest.raises(CohortError) as info:
        read_cohort(_csv(tmp_path, text))
    assert expected in str(info.value)
    assert str(info.value).startswith("cohort.csv")


def test_command_line_table_error_exits_2_before_writing(tmp_path, capsys):
    from CrossModalRegLib import cli

    path = _csv(tmp_path, "case_id,fixed,moving\nc1,f.nii.gz,\n")
    out = tmp_path / "out"
    assert cli.main(["batch", path, "--output-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert "cohort.csv row 1 (line 2), column 'moving': empty" in err
    assert not out.exists()


def _rec(cid, **kw):
    base = {"case_id": cid, "status": "ok", "preset": "p", "dimension": 2, "initial_metric": -0.5,
            "final_metric": -0.9, "run_time_s": 10.0}
    base.update(kw)
    return base


def test_review_rules():
    recs = [_rec(f"c{i}", final_metric=-0.90 + 0.001 * i, run_time_s=10.0 + 0.1 * i) for i in range(8)]
    recs += [
        _rec("slow", run_time_s=60.0),
        _rec("odd", final_metric=-0.3),
        _rec("worse", initial_metric=-0.95, final_metric=-0.90),
        _rec("folds", jacobian_fraction_folding=0.02, jacobian_min=-0.3),
        _rec("tre", profile="neuro 1.0.0", profile_failures=["tre_mean_mm 3.1 (needs < 2 mm)"]),
        _rec("bad", status="failed", failure_kind="input", failure_reason="cannot read moving image 'x'",
             final_metric=None, initial_metric=None, run_time_s=0.01),
        _rec("other-preset", preset="q", run_time_s=100.0, initial_metric=6.0, final_metric=5.0),
    ]
    out = {r["case_id"]: r for r in flag_cases(recs)}
    assert not any(out[f"c{i}"]["needs_review"] for i in range(8))
    assert "outlier run time" in out["slow"]["review_reason"]
    assert "outlier metric" in out["odd"]["review_reason"]
    assert out["worse"]["review_reason"].startswith("metric worse than at the start")
    assert "folding: 2.00% of the grid" in out["folds"]["review_reason"]
    assert "beyond acceptance profile neuro 1.0.0: tre_mean_mm 3.1" in out["tre"]["review_reason"]
    assert out["bad"]["review_reason"] == "failed (input): cannot read moving image 'x'"
    assert not out["other-preset"]["needs_review"]  # its own group is too small to compare
    med, low, high = robust_limits([1.0, 1.0, 1.0, 1.0, 10.0], floor=0.1)
    assert (med, low, high) == (1.0, pytest.approx(0.7), pytest.approx(1.3))


def test_qc_table_has_units_and_descriptions(tmp_path):
    path = write_qc_table(str(tmp_path / "qc.tsv"), flag_cases([_rec("a"), _rec("b", status="failed")]))
    header = open(path).readline().rstrip("\n").split("\t")
    assert header == [c.key for c in QC_COLUMNS]
    schema = open(tmp_path / "qc.schema.tsv").read()
    assert "run_time_s\tdouble\tRun time\ts\t" in schema
    assert all(c.description for c in QC_COLUMNS)


def test_report_is_self_contained_with_thumbnails_of_flagged_cases(tmp_path):
    case = tmp_path / "cases" / "worse"
    case.mkdir(parents=True)
    pic = sitk.GetImageFromArray(np.random.RandomState(0).randint(0, 255, (400, 900, 3)).astype(np.uint8),
                                 isVector=True)
    sitk.WriteImage(pic, str(case / "overlay_before_after.png"))
    recs = flag_cases([_rec(f"c{i}") for i in range(5)] + [_rec("worse", initial_metric=-0.95)])
    path = write_html_report(str(tmp_path / "r.html"), recs, str(tmp_path))
    page = open(path, encoding="utf-8").read()
    assert page.count("data:image/png;base64,") == 1
    assert "<script" not in page and "http://" not in page.replace("http://www.w3.org/2000/svg", "")
    assert page.count("<svg") >= 2 and page.count("<figure") >= 3 and "need review: <b>1</b>" in page
    svg = svg_histogram([1, 2, 2, 3], "x", "s")
    assert svg.count("<rect") >= 2 and "n=4" in svg


def test_done_marker_detects_changed_or_missing_files(tmp_path):
    (tmp_path / "qc.json").write_text("{}")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.txt").write_text("hello")
    assert check_complete(str(tmp_path)) == (False, "no DONE marker")
    write_done(str(tmp_path), "c1")
    assert check_complete(str(tmp_path)) == (True, "")
    (tmp_path / "sub" / "a.txt").write_text("HELLO")
    assert check_complete(str(tmp_path)) == (False, "sub/a.txt changed (checksum)")
    assert check_complete(str(tmp_path), verify="size")[0]
    os.remove(tmp_path / "sub" / "a.txt")
    assert check_complete(str(tmp_path), verify="exists") == (False, "sub/a.txt missing")


def test_package_imports_without_dask():
    code = ("import sys; sys.modules['dask'] = None; sys.modules['distributed'] = None; "
            "import CrossModalRegLib.batch, CrossModalRegLib.commands.batch_cmd, CrossModalRegLib.cli as c; "
            "c.build_parser(); print('ok')")
    root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "CrossModalReg")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": root})
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr


def test_report_never_says_every_check_passed_when_the_profile_was_incomplete(tmp_path):
    incomplete = dict(profile="neuro 1.0.0", profile_verdict="incomplete",
                      profile_not_evaluated=["tre_mean_mm (no landmarks given)"])
    recs = flag_cases([_rec(f"c{i}", **incomplete) for i in range(3)])
    assert [r["verdict"] for r in recs] == ["incomplete"] * 3
    assert "tre_mean_mm (no landmarks given)" in recs[0]["verdict_reason"]
    page = open(write_html_report(str(tmp_path / "r.html"), recs, str(tmp_path)), encoding="utf-8").read()
    assert "passed every check" not in page
    assert "verdict <b>incomplete</b>" in page and "<th>Verdict</th>" in page and "<td>incomplete</td>" in page
    passed = flag_cases([_rec(f"c{i}", profile="neuro 1.0.0", profile_verdict="pass") for i in range(3)])
    page = open(write_html_report(str(tmp_path / "p.html"), passed, str(tmp_path)), encoding="utf-8").read()
    assert "every case succeeded and passed every check" in page
    nothing_to_measure = flag_cases([_rec("c0", profile="neuro", profile_verdict=None)])[0]
    assert nothing_to_measure["verdict"] == "incomplete" and "not evaluated" in nothing_to_measure["verdict_reason"]
    unjudged = flag_cases([_rec("c0")])
    assert unjudged[0]["verdict"] == "checks passed"
    page = open(write_html_report(str(tmp_path / "u.html"), unjudged, str(tmp_path)), encoding="utf-8").read()
    assert "passed every check" not in page and "No acceptance profile was given" in page


def test_a_failed_case_card_shows_its_reason_and_no_empty_numbers(tmp_path):
    recs = flag_cases([_rec("ok1"), _rec("bad", status="failed", failure_kind="input",
                                           failure_reason="cannot read moving image 'x'", final_metric=None,
                                           initial_metric=None, run_time_s=None)])
    bad = {r["case_id"]: r for r in recs}["bad"]
    assert bad["verdict"] == "failed" and "cannot read moving image 'x'" in bad["verdict_reason"]
    page = open(write_html_report(str(tmp_path / "r.html"), recs, str(tmp_path)), encoding="utf-8").read()
    card = page[page.index("<div class='case'>"):]
    card = card[:card.index("</div>")]
    assert "&rarr; ;" not in card and " s;" not in card and "metric" not in card
    assert "<li>failed (input): cannot read moving image &#x27;x&#x27;</li>" in card
    assert "no QC picture" in card
