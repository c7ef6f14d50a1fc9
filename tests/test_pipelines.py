"""transformers' pipelines with STORM and a video in the chat messages: "image-text-to-text" and "any-to-any"
(AutoModelForMultimodalLM), from a model object, from a saved checkpoint folder and from remote code without
storm_hf. Their answers are those of `model.generate` through the processor; the bundled model's are the demo
clips' real answers."""

import json
import os
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForMultimodalLM, pipeline
from transformers.utils import is_torchvision_available

from storm_hf import StormForConditionalGeneration, StormProcessor
from storm_hf.miniature import BUNDLED_MODEL
from storm_hf.miniature.tiny import write_clip

from .conftest import tiny_model
from .tokenizer_factory import tiny_tokenizer

DEMO_CLIPS = os.path.join(os.path.dirname(BUNDLED_MODEL), "demo-clips")
TASKS = ("image-text-to-text", "any-to-any")


def chat(video, question):
    return [{"role": "user", "content": [{"type": "video", "path": str(video)}, {"type": "text", "text": question}]}]


def make_pipeline(task, monkeypatch, **kwargs):
    """`pipeline(task, **kwargs)`. transformers' AnyToAnyPipeline refuses to start without torchvision for every
    model that takes images or videos, though nothing in it uses torchvision for STORM (STORM's processor reads
    videos with PyAV). Where torchvision is missing, the refusal is checked to be exactly that one, and then only
    that check is skipped: everything else runs as transformers wrote it."""
    if task == "any-to-any" and not is_torchvision_available():
        with pytest.raises(ImportError, match="AnyToAnyPipeline requires the Torchvision library"):
            pipeline(task, **kwargs)
        import transformers.pipelines.any_to_any as any_to_any

        real = any_to_any.requires_backends

        def without_torchvision(obj, backends):
            backends = [backends] if isinstance(backends, str) else list(backends)
            return real(obj, [backend for backend in backends if backend != "torchvision"])

        monkeypatch.setattr(any_to_any, "requires_backends", without_torchvision)
    return pipeline(task, **kwargs)


def generate_ids(model, processor, messages, max_new_tokens):
    inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                           return_tensors="pt")
    assert inputs["pixel_values_videos"].shape[1] > 1  # the video really is in the input
    with torch.no_grad():
        return model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)[0]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A random-weight tiny STORM saved with its processor (word-level tokenizer), and a clip."""
    folder = tmp_path_factory.mktemp("checkpoint")
    tokenizer = tiny_tokenizer()
    model = tiny_model(video_token_id=tokenizer.convert_tokens_to_ids("<video>"),
                       image_token_id=tokenizer.convert_tokens_to_ids("<image>"))
    model.save_pretrained(folder)
    StormProcessor.from_config(model.config, tokenizer=tokenizer).save_pretrained(folder)
    clip = write_clip(str(folder.parent / "square.mp4"), num_frames=24, size=64, fps=12)
    return folder, model, clip


def test_auto_model_for_multimodal_lm_loads_storm_and_the_auto_map_names_it(saved):
    folder, model, _ = saved
    loaded = AutoModelForMultimodalLM.from_pretrained(folder)
    assert type(loaded) is StormForConditionalGeneration
    torch.testing.assert_close(loaded.lm_head.weight, model.lm_head.weight)
    auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModelForMultimodalLM"] == "modeling_storm.StormForConditionalGeneration"
    assert auto_map["AutoModelForImageTextToText"] == "modeling_storm.StormForConditionalGeneration"


@pytest.mark.parametrize("task", TASKS)
def test_pipeline_from_a_checkpoint_folder_gives_generates_tokens(saved, task, monkeypatch):
    folder, model, clip = saved
    messages = chat(clip, "where does the square move ?")
    expected = generate_ids(model, StormProcessor.from_pretrained(folder), messages, max_new_tokens=6)
    pipe = make_pipeline(task, monkeypatch, model=str(folder))  # loaded by the task's Auto class
    assert type(pipe.model) is StormForConditionalGeneration and isinstance(pipe.processor, StormProcessor)
    out = pipe(text=messages, max_new_tokens=6, return_tensors=True)
    assert out[0]["input_text"] == messages
    assert out[0]["generated_token_ids"].tolist() == expected.tolist()
    assert len(expected) > model.config.num_visual_tokens(16)  # prompt (16 frames' tokens) + answer


@pytest.mark.parametrize("task", TASKS)
def test_bundled_model_answers_the_demo_clips_through_the_pipeline(task, monkeypatch):
    model = StormForConditionalGeneration.from_pretrained(BUNDLED_MODEL).eval()
    processor = StormProcessor.from_pretrained(BUNDLED_MODEL)
    clips = json.load(open(os.path.join(DEMO_CLIPS, "clips.json")))
    expected = []
    for clip in clips:
        messages = chat(os.path.join(DEMO_CLIPS, clip["video"]), clip["question"])
        ids = generate_ids(model, processor, messages, max_new_tokens=4)
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                               return_dict=True)["input_ids"]
        expected.append(processor.decode(ids[len(prompt[0]):], skip_special_tokens=True))
    assert expected == [clip["answer"] for clip in clips]  # the bundled model knows these clips
    pipe = make_pipeline(task, monkeypatch, model=model, processor=processor)
    for clip, answer in zip(clips, expected):
        messages = chat(os.path.join(DEMO_CLIPS, clip["video"]), clip["question"])
        new_text = pipe(text=messages, max_new_tokens=4, return_full_text=False)[0]["generated_text"]
        assert new_text.strip() == answer, clip
    # All the clips in one batch (prompts of different lengths, padded for generation).
    batch = pipe(text=[chat(os.path.join(DEMO_CLIPS, clip["video"]), clip["question"]) for clip in clips],
                 max_new_tokens=4, return_full_text=False, batch_size=len(clips))
    assert [out[0]["generated_text"].strip() for out in batch] == expected
    # Without return_full_text=False: the conversation with the answer appended as the assistant's turn.
    conversation = pipe(text=messages, max_new_tokens=4)[0]["generated_text"]
    assert conversation[:-1] == messages and conversation[-1]["role"] == "assistant"
    assert conversation[-1]["content"].strip() == expected[-1]


REMOTE_PIPELINES = """
import json, sys
sys.modules["storm_hf"] = None  # storm_hf is not importable here
from transformers import AutoModelForMultimodalLM, pipeline
from transformers.utils import is_torchvision_available
import transformers.pipelines.any_to_any as any_to_any
folder, messages = sys.argv[1], json.loads(sys.argv[2])
model = AutoModelForMultimodalLM.from_pretrained(folder, trust_remote_code=True)
assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
if not is_torchvision_available():  # as make_pipeline in tests/test_pipelines.py
    real = any_to_any.requires_backends
    any_to_any.requires_backends = lambda obj, backends: real(obj, [b for b in (
        [backends] if isinstance(backends, str) else backends) if b != "torchvision"])
result = {}
for task in ("image-text-to-text", "any-to-any"):
    pipe = pipeline(task, model=folder, trust_remote_code=True)
    assert type(pipe.model).__module__.startswith("transformers_modules"), type(pipe.model).__module__
    out = pipe(text=messages, max_new_tokens=6, return_tensors=True)
    result[task] = out[0]["generated_token_ids"].tolist()
print(json.dumps(result))
"""


def test_remote_code_pipelines_without_storm_hf(saved, tmp_path):
    folder, model, clip = saved
    messages = chat(clip, "where does the square move ?")
    expected = generate_ids(model, StormProcessor.from_pretrained(folder), messages, max_new_tokens=6).tolist()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run([sys.executable, "-c", REMOTE_PIPELINES, str(folder), json.dumps(messages)],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {task: expected for task in TASKS}
