"""storm_hf.evaluation: option log-likelihoods (batched single-token and per-option sequences agree), greedy
answers for open questions, and clear errors."""

import pytest
import torch

from storm_hf import StormProcessor
from storm_hf.evaluation import (
    EvaluationResult, chance_accuracy, encode_prompts, evaluate, prompt_messages, reference_answer,
)
from storm_hf.miniature import mini_config, mini_tokenizer, new_model
from storm_hf.miniature.temporal_qa import write_split
from storm_hf.inference import check_agreement
from storm_hf.training import load_video_dataset


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    path = write_split(root, "test", count=7)
    config = mini_config("storm", temporal_pool_k=4)
    model = new_model(config, seed=0).eval()
    processor = StormProcessor.from_config(config, tokenizer=mini_tokenizer())
    records = [load_video_dataset(path)[i] for i in range(7)]
    return model, processor, records, str(root)


def test_option_scores_are_log_probabilities_and_pick_the_best(setup):
    model, processor, records, root = setup
    result = evaluate(model, processor, records, video_root=root, num_frames=16, batch_size=3)
    assert len(result.predictions) == 7 and result.visual_tokens == config_tokens(model)
    for entry, record in zip(result.predictions, records):
        scores = entry["option_loglikelihoods"]
        assert set(scores) == set(record["options"]) and all(s < 0 for s in scores.values())
        assert entry["prediction"] == max(scores, key=scores.get)
        assert entry["correct"] == (entry["prediction"] == record["answer"])
        assert entry["task"] == record["task"] and entry["question"] == record["messages"][0]["content"][1]["text"]
    assert result.accuracy == sum(p["correct"] for p in result.predictions) / 7
    assert set(result.accuracy_by_task) == {r["task"] for r in records}
    # one record alone (no padding) scores the same as inside a left-padded batch
    alone = evaluate(model, processor, records[4:5], video_root=root, num_frames=16)
    for option, score in alone.predictions[0]["option_loglikelihoods"].items():
        assert score == pytest.approx(result.predictions[4]["option_loglikelihoods"][option], abs=1e-4)


def config_tokens(model):
    return model.config.num_visual_tokens(16)


def test_multi_token_options_are_summed_over_their_tokens(setup):
    model, processor, records, root = setup
    record = records[0]
    doubled = dict(record, options=[f"{o} {o}" for o in record["options"]], answer=f"{record['answer']} {record['answer']}")
    single = evaluate(model, processor, [record], video_root=root, num_frames=16).predictions[0]
    double = evaluate(model, processor, [doubled], video_root=root, num_frames=16).predictions[0]
    prompts, features = encode_prompts(model, processor, [record], root, 16)
    with torch.no_grad():
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        for option in record["options"]:
            ids = processor.tokenizer(option, add_special_tokens=False)["input_ids"]
            row = torch.tensor([prompts[0] + ids])
            logits = model(input_ids=row, mm_encoder_outputs={"video": BaseModelOutputWithPooling(
                pooler_output=[features[0]])}).logits[0, -1]  # after the first copy
            second = torch.log_softmax(logits, -1)[ids[0]]
            expected = single["option_loglikelihoods"][option] + float(second)
            assert double["option_loglikelihoods"][f"{option} {option}"] == pytest.approx(expected, abs=1e-4)


def test_open_questions_are_answered_by_greedy_generation(setup):
    model, processor, records, root = setup
    open_record = {k: v for k, v in records[1].items() if k != "options"}
    entry = evaluate(model, processor, [open_record], video_root=root, num_frames=16, max_new_tokens=2).predictions[0]
    assert "option_loglikelihoods" not in entry and isinstance(entry["prediction"], str)
    text_only = {"messages": [{"role": "user", "content": "what colour is the ring ?"},
                              {"role": "assistant", "content": "red"}], "options": ["red", "blue"]}
    assert evaluate(model, processor, [text_only]).predictions[0]["prediction"] in ("red", "blue")


def test_prompt_and_answer_come_from_the_record():
    record = {"messages": [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"},
                           {"role": "user", "content": "q2"}, {"role": "assistant", "content": [{"type": "text", "text": " a2 "}]}]}
    assert [m["role"] for m in prompt_messages(record)] == ["user", "assistant", "user"]
    assert reference_answer(record) == "a2" and reference_answer(dict(record, answer="x")) == "x"
    with pytest.raises(ValueError, match="user turn before its answer"):
        prompt_messages({"messages": [{"role": "assistant", "content": "a"}]})
    assert chance_accuracy([{"options": ["a", "b"]}, {"options": ["a", "b", "c", "d"]}]) == pytest.approx(0.375)
    assert EvaluationResult().accuracy == 0


def test_processor_and_model_must_count_tokens_alike(setup):
    model, processor, records, root = setup
    other = StormProcessor.from_config(mini_config("storm", temporal_pool_k=1), tokenizer=mini_tokenizer())
    with pytest.raises(ValueError, match=r"processor counts visual tokens for \(grid, k, p, s\) = \(4, 1, 1, 1\) but "
                                         r"the model produces \(4, 4, 1, 1\)"):
        check_agreement(model, other)
    with pytest.raises(ValueError, match="tokenizes to nothing"):
        evaluate(model, processor, [dict(records[0], options=["red", ""])], video_root=root, num_frames=16)


def test_several_strides_in_one_pass_equal_one_stride_at_a_time(setup):
    from storm_hf.inference import set_sampling_stride
    from storm_hf.evaluation import evaluate_strides

    model, processor, records, root = setup
    both = evaluate_strides(model, processor, records[:4], [1, 2], video_root=root, num_frames=16)
    assert model.config.temporal_sample_s == processor.temporal_sample_s == 1  # put back
    assert both[1].visual_tokens == 64 and both[2].visual_tokens == 32
    set_sampling_stride(model, processor, 2)
    try:
        alone = evaluate(model, processor, records[:4], video_root=root, num_frames=16)
    finally:
        set_sampling_stride(model, processor, 1)
    for a, b in zip(alone.predictions, both[2].predictions):
        assert a["prediction"] == b["prediction"]
        for option in a["option_loglikelihoods"]:
            assert a["option_loglikelihoods"][option] == pytest.approx(b["option_loglikelihoods"][option], abs=1e-5)
