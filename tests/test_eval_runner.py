"""`storm-hf eval` (storm_hf.evaluation.runner): scoring, per-type accuracy and timing, resuming an interrupted run,
background decoding, one setting for k / p / s, and clear errors."""

import json
import os

import pytest

import storm_hf.evaluation.runner as eval_runner
from storm_hf.apps.cli import main as cli
from storm_hf.inference import load
from storm_hf.evaluation.runner import answer_letter, letter_prompt, parse_letter, run_evaluation
from storm_hf.inference import set_token_reduction
from storm_hf.evaluation import evaluate
from storm_hf.miniature.temporal_qa import write_split


@pytest.fixture(scope="module")
def bundled():
    return load()  # the bundled model and its processor


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval-data")
    return write_split(root, "test", count=10, seed=5)


def test_loglikelihood_scoring_equals_evaluate_and_reports_types_tokens_and_time(bundled, data, tmp_path):
    model, processor = bundled
    result = run_evaluation(data, model, processor, num_frames=16, batch_size=4, scoring="loglikelihood",
                            output=str(tmp_path / "r.json"))
    reference = evaluate(model, processor, data, video_root=os.path.dirname(data), num_frames=16)
    assert [e["prediction_loglikelihood"] for e in result["predictions"]] == [p["prediction"] for p in reference.predictions]
    assert result["accuracy"] == pytest.approx(reference.accuracy)
    assert result["accuracy_by_task"] == pytest.approx(reference.accuracy_by_task)
    assert result["visual_tokens_per_sample"] == model.config.num_visual_tokens(16)
    assert set(result["seconds_per_sample"]) == {"decode", "encode", "prefill", "generate"}
    assert all(result["seconds_per_sample"][k] > 0 for k in ("decode", "encode", "prefill"))
    written = json.loads((tmp_path / "r.json").read_text())
    assert written["accuracy"] == result["accuracy"] and len(written["predictions"]) == 10
    assert not (tmp_path / "r.json.partial.jsonl").exists()  # replaced by the final file


def test_letter_scoring_lists_the_options_and_parses_the_generated_letter(bundled, data, tmp_path):
    model, processor = bundled
    result = run_evaluation(data, model, processor, num_frames=16, batch_size=5, scoring="both", limit=4,
                            output=str(tmp_path / "r.json"))
    for entry in result["predictions"]:
        letters = "ABCDEFGHIJ"[: len(entry["option_loglikelihoods"])]
        assert entry["answer_letter"] in letters and "generated" in entry
        assert entry["prediction_letter"] == parse_letter(entry["generated"], entry["option_loglikelihoods"])
        assert entry["correct"] == entry["correct_letter"]
        assert entry["seconds"]["generate"] >= 0 and entry["seconds"]["prefill"] > 0
    assert result["accuracy"] == result["accuracy_letter"]
    assert result["accuracy_loglikelihood"] == sum(e["correct_loglikelihood"] for e in result["predictions"]) / 4


def test_letters():
    record = {"messages": [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "which colour ?"}]},
                           {"role": "assistant", "content": "red"}], "options": ["red", "blue", "green"], "answer": "blue"}
    text = letter_prompt(record)["messages"][-1]["content"][-1]["text"]
    assert text == ("which colour ?\nA. red\nB. blue\nC. green\n"
                    "Answer with the option's letter from the given choices directly.")
    assert len(letter_prompt(record)["messages"]) == 1  # the answer turn is not part of the prompt
    assert answer_letter(record) == "B" and answer_letter(dict(record, answer="c")) == "C"
    options = record["options"]
    for given, letter in [("B", "B"), ("b.", "B"), ("(C) green", "C"), ("A) red", "A"), ("Blue", "B"),
                          ("green.", "C"), ("D", None), ("Because", None), ("", None), ("A blue", "A")]:
        assert parse_letter(given, options) == letter, given
    with pytest.raises(ValueError, match="neither an option letter nor one of the options"):
        answer_letter(dict(record, answer="purple"))


def test_an_interrupted_run_resumes_without_recomputing(bundled, data, tmp_path, monkeypatch):
    model, processor = bundled
    output = str(tmp_path / "r.json")
    scored = []
    real = eval_runner._score

    def failing_after_two_batches(model, processor, batch, start, *args):
        if len(scored) == 2:
            raise KeyboardInterrupt
        scored.append(start)
        return real(model, processor, batch, start, *args)

    monkeypatch.setattr(eval_runner, "_score", failing_after_two_batches)
    with pytest.raises(KeyboardInterrupt):
        run_evaluation(data, model, processor, num_frames=16, batch_size=3, scoring="loglikelihood", output=output)
    lines = open(output + ".partial.jsonl").read().splitlines()
    assert len(lines) == 1 + 6 and not os.path.exists(output)  # header + two batches; no final file yet
    with open(output + ".partial.jsonl", "a") as f:
        f.write('{"index": 6, "tas')  # a line cut off by the kill: ignored
    monkeypatch.setattr(eval_runner, "_score", lambda *args: (scored.append(args[3]), real(*args))[1])
    resumed = run_evaluation(data, model, processor, num_frames=16, batch_size=3, scoring="loglikelihood",
                             output=output)
    assert scored == [0, 3, 6, 9]  # only the batches not yet written were scored
    fresh = run_evaluation(data, model, processor, num_frames=16, batch_size=3, scoring="loglikelihood",
                           output=str(tmp_path / "fresh.json"))
    strip = lambda entries: [{k: v for k, v in e.items() if k != "seconds"} for e in entries]  # noqa: E731
    assert strip(resumed["predictions"]) == strip(fresh["predictions"])


def test_partial_results_of_other_settings_are_refused_not_overwritten(bundled, data, tmp_path):
    model, processor = bundled
    output = str(tmp_path / "r.json")
    with open(output + ".partial.jsonl", "w") as f:
        f.write(json.dumps({"settings": {"other": 1}}) + "\n")
    with pytest.raises(ValueError, match="holds predictions of another evaluation.*--restart"):
        run_evaluation(data, model, processor, num_frames=16, scoring="loglikelihood", output=output, limit=2)
    assert open(output + ".partial.jsonl").read() == json.dumps({"settings": {"other": 1}}) + "\n"
    result = run_evaluation(data, model, processor, num_frames=16, scoring="loglikelihood", output=output, limit=2,
                            restart=True)
    assert result["records"] == 2


def test_background_decoding_gives_the_same_predictions(bundled, data, tmp_path):
    model, processor = bundled
    runs = [run_evaluation(data, model, processor, num_frames=16, batch_size=2, scoring="loglikelihood", limit=6,
                           prefetch=prefetch, output=str(tmp_path / f"r{prefetch}.json")) for prefetch in (0, 2)]
    assert [e["option_loglikelihoods"] for e in runs[0]["predictions"]] == \
           [e["option_loglikelihoods"] for e in runs[1]["predictions"]]
    timing = runs[1]["timing_this_run"]
    assert 0 <= timing["decode_wait_seconds"] <= timing["decode_seconds"] + 0.5


def test_token_reduction_is_one_setting_for_model_and_processor(bundled, data, tmp_path):
    model, processor = bundled
    before = (model.config.temporal_pool_k, model.config.spatial_pool_p, model.config.temporal_sample_s)
    result = run_evaluation(data, model, processor, num_frames=16, scoring="loglikelihood", limit=3,
                            temporal_pool_k=2, spatial_pool_p=2, temporal_sample_s=2, output=str(tmp_path / "r.json"))
    tokens = result["predictions"][0]["visual_tokens"]
    set_token_reduction(model, processor, 2, 2, 2)
    try:
        assert tokens == model.config.num_visual_tokens(16) == processor.num_visual_tokens(16)
    finally:
        set_token_reduction(model, processor, *before)
    assert (model.config.temporal_pool_k, model.config.spatial_pool_p, model.config.temporal_sample_s) == before
    assert processor.temporal_pool_k == before[0] and processor.temporal_sample_s == before[2]
    with pytest.raises(ValueError, match="temporal_sample_s must be a positive integer"):
        set_token_reduction(model, processor, temporal_sample_s=0)


def test_cli_eval_writes_results_and_bad_input_exits_with_a_message(data, tmp_path, capsys):
    output = tmp_path / "cli.json"
    assert cli(["eval", data, "--num-frames", "16", "--limit", "3", "--scoring", "loglikelihood",
                "--output", str(output)]) == 0
    out = capsys.readouterr().out
    assert "3 records, accuracy" in out and "seconds per sample" in out and output.is_file()
    with pytest.raises(SystemExit) as exit_info:
        cli(["eval", str(tmp_path / "missing.jsonl")])
    assert exit_info.value.code == 2 and "missing.jsonl: no such data file" in capsys.readouterr().err
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "bad.mp4").write_bytes(b"not a video at all")
    (broken / "data.jsonl").write_text(json.dumps({
        "video": "bad.mp4", "messages": [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "q"}]},
                                         {"role": "assistant", "content": "yes"}], "options": ["yes", "no"]}) + "\n")
    with pytest.raises(SystemExit):
        cli(["eval", str(broken / "data.jsonl"), "--output", str(tmp_path / "b.json")])
    assert "bad.mp4" in capsys.readouterr().err


def test_flat_question_records_score_like_the_same_records_with_messages(bundled, data, tmp_path):
    from storm_hf.evaluation.runner import load_eval_records
    from storm_hf.miniature.temporal_qa import write_multiple_choice_split

    model, processor = bundled
    flat = write_multiple_choice_split(tmp_path / "flat", "test", count=10, seed=5)  # the clips of `data`
    record = load_eval_records(flat)[0]
    assert os.path.isabs(record["video"]) and record["messages"][0]["content"][0] == {"type": "video"}
    runs = [run_evaluation(path, model, processor, num_frames=16, scoring="both", limit=5,
                           output=str(tmp_path / f"{name}.json")) for name, path in (("flat", flat), ("nested", data))]
    for key in ("accuracy_letter", "accuracy_loglikelihood", "accuracy_by_task"):
        assert runs[0][key] == runs[1][key]
    assert [e["option_loglikelihoods"] for e in runs[0]["predictions"]] == \
           [e["option_loglikelihoods"] for e in runs[1]["predictions"]]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"video": "a.mp4", "question": "q"}\n')
    with pytest.raises(ValueError, match='line 1 has a "question" but no "answer"'):
        load_eval_records(bad)
    bad.write_text('{"video": "a.mp4"}\n')
    with pytest.raises(ValueError, match='line 1 is not a record with "messages" or a "question"'):
        load_eval_records(bad)


def test_changing_only_the_models_config_is_enough(bundled, data, tmp_path):
    from storm_hf.evaluation import evaluate_strides

    model, processor = bundled
    model.config.temporal_sample_s = 2  # the processor still says 1
    try:
        result = run_evaluation(data, model, processor, num_frames=16, scoring="loglikelihood", limit=2,
                                output=str(tmp_path / "r.json"))
        assert result["visual_tokens_per_sample"] == model.config.num_visual_tokens(16) == 32
        strides = evaluate_strides(model, processor, data, [2], video_root=os.path.dirname(data), num_frames=16)
        assert strides[2].visual_tokens == 32
        assert processor.temporal_sample_s == 1  # its own setting is back
    finally:
        model.config.temporal_sample_s = 1
