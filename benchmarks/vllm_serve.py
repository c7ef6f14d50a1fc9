"""Video questions through vLLM's Transformers backend against `model.generate()`, same machine, same run.

    python benchmarks/vllm_serve.py [--model FOLDER] [--clips 32] [--repeats 3] [--device cpu|cuda]

Needs vLLM (on a CPU: the environment of `bash .ci/vllm_job`; on a GPU the official `pip install vllm`). The model
is saved with its remote code into a temporary folder (default: the bundled model), vLLM's engine is started on
it (its start time is reported), and the same held-out benchmark clips are answered greedily (8 new tokens at
most) three ways, interleaved over --repeats rounds (vLLM's prefix and multimodal caches off, so that no round
is answered from an earlier one): vLLM with all clips in one `generate` call, `generate()` one
clip at a time, and `generate()` on the whole batch (left-padded). Prints clips per second (median over rounds),
the ratios, and whether the three give the same tokens.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch

NEW_TOKENS = 8


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a STORM checkpoint folder or Hub id (default: the bundled model)")
    parser.add_argument("--clips", type=int, default=32, help="benchmark clips per round (default 32)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds (default 3)")
    parser.add_argument("--device", default="cpu", help="where generate() runs (default cpu)")
    args = parser.parse_args()

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; by default vLLM's CPU backend takes most memory
    from vllm import LLM, SamplingParams

    from storm_hf.inference import load, video_question_prompt
    from storm_hf.miniature.temporal_qa import ALL_TASKS, clip_rng, make_clip

    model, processor = load(args.model)
    model.to(args.device)
    clips = [make_clip(clip_rng("test", 3, i), ALL_TASKS[i % len(ALL_TASKS)]) for i in range(args.clips)]
    prompts = [video_question_prompt(processor, c.question) for c in clips]
    metadata = [{"fps": 8.0, "total_num_frames": len(c.frames), "frames_indices": list(range(len(c.frames)))}
                for c in clips]
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
        start = time.perf_counter()
        # No prefix cache and no multimodal cache: every round recomputes, as generate() does (the rounds repeat
        # the same clips, which vLLM would otherwise answer from its caches).
        llm = LLM(model=folder, model_impl="transformers", trust_remote_code=True, enforce_eager=True,
                  dtype="float32", max_model_len=1024, limit_mm_per_prompt={"video": 1}, seed=0,
                  enable_prefix_caching=False, mm_processor_cache_gb=0)
        engine_start = time.perf_counter() - start
        requests = [{"prompt": p, "multi_modal_data": {"video": (c.frames, m)}}
                    for p, c, m in zip(prompts, clips, metadata)]
        params = SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0)

        def through_vllm():
            return [list(o.outputs[0].token_ids) for o in llm.generate(requests, params, use_tqdm=False)]

        @torch.no_grad()
        def one_by_one():
            out = []
            for p, c in zip(prompts, clips):
                inputs = processor(text=p, videos=[c.frames], return_tensors="pt").to(args.device)
                ids = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)
                out.append(ids[0, inputs["input_ids"].shape[1]:].tolist())
            return out

        @torch.no_grad()
        def batched():
            inputs = processor(text=prompts, videos=[c.frames for c in clips], return_tensors="pt").to(args.device)
            ids = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)
            pad = processor.tokenizer.pad_token_id
            return [[t for t in row if t != pad] for row in ids[:, inputs["input_ids"].shape[1]:].tolist()]

        ways = {"vLLM, one batch": through_vllm, "generate(), one by one": one_by_one,
                "generate(), one batch": batched}
        seconds = {name: [] for name in ways}
        tokens = {}
        for name, run in ways.items():  # warm-up
            tokens[name] = run()
        for _ in range(args.repeats):
            for name, run in ways.items():
                start = time.perf_counter()
                run()
                seconds[name].append(time.perf_counter() - start)

    eos = set(model.generation_config.eos_token_id if isinstance(model.generation_config.eos_token_id, list)
              else [model.generation_config.eos_token_id])
    strip = lambda rows: [[t for t in row if t not in eos] for row in rows]  # noqa: E731
    same = strip(tokens["vLLM, one batch"]) == strip(tokens["generate(), one by one"]) == \
        strip(tokens["generate(), one batch"])
    print(f"vLLM engine start: {engine_start:.1f} s")
    base = statistics.median(seconds["generate(), one by one"])
    for name, values in seconds.items():
        median = statistics.median(values)
        print(f"{name:24s} {args.clips / median:8.1f} clips/s  ({median * 1000:.0f} ms for {args.clips}; "
              f"{base / median:.2f}x one by one)")
    print(f"same tokens all three ways: {same}")


if __name__ == "__main__":
    main()
