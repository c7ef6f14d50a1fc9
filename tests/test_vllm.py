"""Serving with vLLM's Transformers modeling backend (`model_impl="transformers"`, `trust_remote_code`): greedy
tokens and their log-probabilities from `vllm.LLM` against `model.generate()`, for the bundled model and a
second layout (forward-only, k = 2, p = 2). Runs where vLLM is installed: `bash .ci/vllm_job` (its own venv;
not part of the default test command, which skips this module)."""

import math
import os

import pytest
import torch

# vLLM's CPU backend otherwise reserves most of the machine's memory for its KV cache, per engine (21 GB of 24 here)
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
vllm = pytest.importorskip("vllm", reason="needs vLLM (bash .ci/vllm_job builds an environment with it)")

from storm_hf import StormForConditionalGeneration, StormProcessor  # noqa: E402
from storm_hf.inference import video_question_prompt  # noqa: E402
from storm_hf.miniature import BUNDLED_MODEL, build_initial_checkpoint, mini_config  # noqa: E402
from storm_hf.miniature.temporal_qa import ALL_TASKS, clip_rng, make_clip  # noqa: E402

# Largest difference allowed between vLLM's and generate()'s log-probability of a generated token (fp32 on a CPU;
# vLLM swaps every Linear / norm / attention for its own kernels). Measured with vllm-cpu 0.32.0: 6.6e-7 for the
# bundled model (10 clips), 1.4e-6 for the forward-only layout (benchmarks/RESULTS.md).
LOGPROB_TOLERANCE = 1e-4
NEW_TOKENS = 4


def clips(count, seed=0):
    return [make_clip(clip_rng("test", seed, i), ALL_TASKS[i % len(ALL_TASKS)]) for i in range(count)]


def video_item(frames, fps=8.0):
    """A clip as vLLM takes it when the processor samples frames: (frames, metadata)."""
    total = len(frames)
    return frames, {"fps": fps, "total_num_frames": total, "frames_indices": list(range(total)),
                    "duration": total / fps, "video_backend": "array"}


def reference(model, processor, prompt, **media):
    """Greedy tokens and their log-probabilities from generate(), for ``prompt`` with ``videos=`` / ``images=``."""
    inputs = processor(text=prompt, return_tensors="pt", **media)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False, output_scores=True,
                             return_dict_in_generate=True)
    tokens = out.sequences[0, inputs["input_ids"].shape[1]:].tolist()
    logprobs = [float(torch.log_softmax(score[0].float(), -1)[token]) for score, token in zip(out.scores, tokens)]
    return tokens, logprobs


def engine(folder):
    return vllm.LLM(model=str(folder), model_impl="transformers", trust_remote_code=True, enforce_eager=True,
                    dtype="float32", max_model_len=1024, limit_mm_per_prompt={"video": 1, "image": 1}, seed=0)


def served(llm, processor, items):
    """vLLM's greedy tokens and their log-probabilities, all prompts in one batch."""
    requests = [{"prompt": video_question_prompt(processor, clip.question),
                 "multi_modal_data": {"video": video_item(clip.frames)}}
                for clip in items]
    outputs = llm.generate(requests, vllm.SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0, logprobs=0))
    result = []
    for output in outputs:
        completion = output.outputs[0]
        tokens = list(completion.token_ids)
        logprobs = [step[token].logprob for step, token in zip(completion.logprobs, tokens)]
        result.append((tokens, logprobs))
    return result


def compare(model, processor, llm, items):
    worst = 0.0
    for clip, (tokens, logprobs) in zip(items, served(llm, processor, items)):
        prompt = video_question_prompt(processor, clip.question)
        expected_tokens, expected_logprobs = reference(model, processor, prompt, videos=[clip.frames])
        # generate() stops at the end-of-turn token; vLLM too (same generation config): same length
        assert tokens == expected_tokens, (clip.task, clip.question, tokens, expected_tokens)
        for got, want in zip(logprobs, expected_logprobs):
            assert math.isfinite(got)
            worst = max(worst, abs(got - want))
    print(f"largest log-probability difference over {len(items)} clips: {worst:.2e}")
    assert worst <= LOGPROB_TOLERANCE
    return worst


@pytest.fixture(scope="module")
def bundled(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vllm") / "bundled"
    model = StormForConditionalGeneration.from_pretrained(BUNDLED_MODEL).eval()
    processor = StormProcessor.from_pretrained(BUNDLED_MODEL)
    model.save_pretrained(folder)  # with the remote code and its auto_map
    processor.save_pretrained(folder)
    return model, processor, engine(folder)


def test_bundled_model_greedy_tokens_and_logprobs_equal_generate(bundled):
    model, processor, llm = bundled
    compare(model, processor, llm, clips(10))  # one clip per question type, all in one batch


def test_bundled_model_answers_are_right_through_vllm(bundled):
    model, processor, llm = bundled
    items = [make_clip(clip_rng("test", 7, i), "colour_change") for i in range(8)]
    answers = [processor.decode(tokens, skip_special_tokens=True).strip()
               for tokens, _ in served(llm, processor, items)]
    assert sum(a == c.answer for a, c in zip(answers, items)) >= 7, answers


def test_images_are_served_as_one_frame_clips_as_generate_answers_them(bundled):
    from PIL import Image

    model, processor, llm = bundled
    items = [make_clip(clip_rng("test", 5, i), task) for i, task in enumerate(("shape", "colour") * 3)]
    frames = [clip.frames[len(clip.frames) // 2] for clip in items]  # one still per clip
    prompts = [processor.apply_chat_template([{"role": "user", "content": [{"type": "image"},
                                                                           {"type": "text", "text": c.question}]}],
                                             add_generation_prompt=True, tokenize=False) for c in items]
    outputs = llm.generate([{"prompt": p, "multi_modal_data": {"image": Image.fromarray(f)}}
                            for p, f in zip(prompts, frames)],
                           vllm.SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0, logprobs=0))
    for prompt, frame, output in zip(prompts, frames, outputs):
        tokens, logprobs = reference(model, processor, prompt, images=[frame])
        completion = output.outputs[0]
        assert list(completion.token_ids) == tokens
        for step, token, want in zip(completion.logprobs, tokens, logprobs):
            assert abs(step[token].logprob - want) <= LOGPROB_TOLERANCE


def test_a_forward_only_layout_with_spatial_pooling_equals_generate(tmp_path):
    config = mini_config("storm-forward", temporal_pool_k=2, spatial_pool_p=2)
    folder = build_initial_checkpoint(tmp_path / "forward", config, seed=3)
    model = StormForConditionalGeneration.from_pretrained(folder).eval()
    processor = StormProcessor.from_pretrained(folder)
    model.save_pretrained(folder)  # the remote code beside the weights
    llm = engine(folder)
    try:
        compare(model, processor, llm, clips(4, seed=1))
    finally:
        del llm


def test_the_token_reduction_is_the_saved_folders_and_other_ways_of_setting_it_are_refused(bundled, tmp_path, capfd):
    # k / p / s per deployment: a folder saved after set_token_reduction (the forward-only test above serves one).
    # In mm_processor_kwargs, the engine's or a request's, a reduction other than the folder's is refused by the
    # processor; through hf_overrides alone the model's features would not fit the placeholders, and the model
    # stops with an error naming the reduction instead of answering from misplaced tokens.
    model, processor, llm = bundled
    folder = tmp_path / "bundled"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    with pytest.raises(Exception, match="temporal_pool_k=2 in the call"):
        vllm.LLM(model=str(folder), model_impl="transformers", trust_remote_code=True, enforce_eager=True,
                 dtype="float32", max_model_len=1024, mm_processor_kwargs={"temporal_pool_k": 2})
    clip = clips(1)[0]
    request = {"prompt": video_question_prompt(processor, clip.question),
               "multi_modal_data": {"video": video_item(clip.frames)}}
    with pytest.raises(ValueError):
        llm.generate([{**request, "mm_processor_kwargs": {"spatial_pool_p": 2}}], vllm.SamplingParams(max_tokens=2))
    assert served(llm, processor, [clip]) == served(llm, processor, [clip])  # still serving

    overridden = vllm.LLM(model=str(folder), model_impl="transformers", trust_remote_code=True, enforce_eager=True,
                          dtype="float32", max_model_len=1024, hf_overrides={"temporal_pool_k": 2})
    try:
        with pytest.raises(Exception) as raised:
            overridden.generate([request], vllm.SamplingParams(max_tokens=2))
    finally:
        del overridden
    captured = capfd.readouterr()  # vLLM's engine process logs the worker's error (to stdout or stderr)
    assert "EngineCore" in repr(raised.value) or "Engine" in type(raised.value).__name__
    assert "placeholder tokens but the model produces" in captured.err + captured.out


def _ask_server(port, model, video_url, question, **extra):
    import json
    import urllib.error
    import urllib.request

    body = {"model": model, "max_tokens": 4, "temperature": 0, **extra,
            "messages": [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": video_url}},
                                                       {"type": "text", "text": question}]}]}
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.load(response)["choices"][0]["message"]["content"].strip()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_the_openai_server_answers_a_video_request_and_survives_bad_ones(bundled, tmp_path):
    # `vllm serve FOLDER` (here its module, as vllm-cpu installs no `vllm` distribution metadata for the console
    # script) on 127.0.0.1, a local video through --allowed-local-media-path.
    import shutil
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    from storm_hf.apps.web_demo import example_clips
    from storm_hf.inference import ask
    from storm_hf.miniature.tiny import write_clip

    model, processor, _ = bundled
    folder = tmp_path / "served"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    clip = next(c for c in example_clips() if c["task"] == "colour_change")
    video = shutil.copy(clip["video"], tmp_path / "clip.mp4")
    (tmp_path / "broken.mp4").write_bytes(b"not a video at all")
    long_video = write_clip(tmp_path / "long.mp4", num_frames=400, size=48)  # 400 frames: 1,600 visual tokens
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(folder), "--trust-remote-code",
         "--model-impl", "transformers", "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",
         "--enforce-eager", "--max-model-len", "1024", "--allowed-local-media-path", str(tmp_path),
         "--trust-request-mm-kwargs"],  # lets a request choose its frames (mm_processor_kwargs, as below)
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while True:
            assert server.poll() is None, "the server exited"
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5)
                break
            except OSError:
                assert time.monotonic() < deadline, "the server did not start in 300 s"
                time.sleep(2)
        offline = ask(model, processor, str(video), clip["question"]).answer
        assert _ask_server(port, str(folder), f"file://{video}", clip["question"]) == (200, offline)
        assert offline == clip["answer"]
        status, text = _ask_server(port, str(folder), f"file://{tmp_path / 'missing.mp4'}", clip["question"])
        assert status >= 400 and "No such file" in text
        status, text = _ask_server(port, str(folder), f"file://{tmp_path / 'broken.mp4'}", clip["question"])
        assert status == 400 and "video" in text.lower()
        # too many frames for the context: every frame of a long file, unsampled
        status, text = _ask_server(port, str(folder), f"file://{long_video}", clip["question"],
                                   media_io_kwargs={"video": {"num_frames": -1}},
                                   mm_processor_kwargs={"do_sample_frames": False})
        assert status == 400 and "maximum" in text.lower(), (status, text)
        # another token reduction than the folder's
        status, text = _ask_server(port, str(folder), f"file://{video}", clip["question"],
                                   mm_processor_kwargs={"temporal_pool_k": 2})
        assert status == 400 and "temporal_pool_k" in text, (status, text)
        assert _ask_server(port, str(folder), f"file://{video}", clip["question"]) == (200, offline)  # still serving
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
