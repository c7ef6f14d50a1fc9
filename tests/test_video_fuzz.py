"""A seeded subset of the reader's fuzz cases (the full set: `python -m tests.fuzz_video_io`), and a check
that the fuzz driver itself reports hangs and crashes."""

from .fuzz_video_io import MUTATIONS, fuzz, make_bases, make_case, run_cases


def test_damaged_files_end_in_frames_or_a_video_read_error(tmp_path):
    outcomes = fuzz(cases=50, seed=0, root=tmp_path)  # every base file with every kind of damage
    assert {o["case"]["mutation"] for o in outcomes} == set(MUTATIONS)
    failures = [(o["case"]["base"], o["case"]["mutation"], o["case"]["detail"], o["reason"])
                for o in outcomes if o["status"] == "fail"]
    assert not failures
    assert any(o["status"] == "error" for o in outcomes) and any(o["status"] == "ok" for o in outcomes)


def test_fuzz_driver_reports_a_hang_and_a_crash_and_goes_on(tmp_path):
    bases = make_bases(tmp_path)
    cases = [make_case(n, 0, bases, tmp_path) for n in range(4)]
    cases[1]["inject"] = "hang"
    cases[2]["inject"] = "crash"
    outcomes = {o["number"]: o for o in run_cases(cases, time_limit=2.0)}
    assert "hang" in outcomes[1]["reason"] and "crash" in outcomes[2]["reason"]
    assert outcomes[0]["status"] != "fail" and outcomes[3]["status"] != "fail"
