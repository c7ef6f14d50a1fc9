"""The README's main job: build the tiny STORM preset with random weights, run a generated video through
it, and print the visual tokens before and after reduction and the time spent in each stage.

    python examples/run_tiny_demo.py [--frames 32] [--k 4] [--p 1] [--s 1]

No network, no Hub: the video is a synthetic moving square and the weights are random.
"""

import argparse
import statistics
import time

import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling

from storm_hf import StormConfig, StormForConditionalGeneration


def moving_square_video(num_frames: int, size: int) -> torch.Tensor:
    """(frames, 3, size, size) in [-1, 1]: a bright square sliding left to right over a dark background."""
    video = torch.full((num_frames, 3, size, size), -1.0)
    side = max(2, size // 4)
    for t in range(num_frames):
        x = round(t * (size - side) / max(1, num_frames - 1))
        video[t, :, size // 2 - side // 2 : size // 2 + side // 2, x : x + side] = 1.0
    return video


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--k", type=int, default=4, help="temporal pooling size")
    parser.add_argument("--p", type=int, default=1, help="spatial pooling size")
    parser.add_argument("--s", type=int, default=1, help="test-time temporal sampling stride")
    parser.add_argument("--new-tokens", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5, help="timed runs (after one warm-up)")
    args = parser.parse_args()

    torch.manual_seed(0)
    config = StormConfig.from_preset("tiny", temporal_pool_k=args.k, spatial_pool_p=args.p, temporal_sample_s=args.s)
    model = StormForConditionalGeneration(config).eval()
    size = config.vision_config.image_size
    video = moving_square_video(args.frames, size)  # (frames, 3, H, W)

    def run_stages():
        """One pass through the pipeline; returns (seconds per stage, features, reduced, output ids)."""
        seconds = {}
        stages = model.model  # the model's own stages, as get_video_features chains them
        start = time.perf_counter()
        patches = stages.select_patch_features(stages.run_vision_tower(video))  # (frames, patches, vision_dim)
        seconds["vision tower"] = time.perf_counter() - start

        start = time.perf_counter()
        tokens = stages.projector(patches)  # (frames, tokens_per_frame, dim)
        seconds["projector"] = time.perf_counter() - start

        start = time.perf_counter()
        frames, per_frame, dim = tokens.shape
        encoded = stages.encode_in_time([tokens])[0]  # (frames, tokens_per_frame, dim)
        reduced = stages.reduce_tokens(encoded[None])  # (1, T', N', dim)
        seconds["temporal encoder + reduction"] = time.perf_counter() - start

        features = reduced.reshape(-1, dim)  # (visual tokens, dim): what the placeholders receive
        prompt = [1, 2] + [config.video_token_id] * features.shape[0] + [3, 4, 5]
        start = time.perf_counter()
        output = model.generate(
            input_ids=torch.tensor([prompt]),
            mm_encoder_outputs={"video": BaseModelOutputWithPooling(pooler_output=[features])},
            max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False,
        )
        seconds["LLM (prefill + decode)"] = time.perf_counter() - start
        return seconds, per_frame, reduced, features, output[0, len(prompt):]

    with torch.inference_mode():
        run_stages()  # warm-up: first calls allocate and pick kernels
        passes = [run_stages() for _ in range(args.repeats)]
    per_frame, reduced, features, answer = passes[-1][1:]
    timings = {stage: statistics.median(p[0][stage] for p in passes) for stage in passes[0][0]}

    print(f"STORM tiny preset, random weights; video: {args.frames} frames of {size}x{size} px")
    print(f"reduction: temporal pool k={args.k}, spatial pool p={args.p}, test-time sampling s={args.s}")
    print(f"visual tokens before reduction: {args.frames * per_frame} ({args.frames} frames x {per_frame})")
    print(f"visual tokens after reduction:  {features.shape[0]} ({reduced.shape[1]} frames x {reduced.shape[2]})"
          f"  -> {args.frames * per_frame / features.shape[0]:.1f}x fewer;"
          f" config.num_visual_tokens({args.frames}) = {config.num_visual_tokens(args.frames)}")
    print(f"time per stage (median of {args.repeats} runs after a warm-up; {args.new_tokens} new tokens):")
    for stage, seconds in timings.items():
        print(f"  {stage:30s} {seconds * 1000:8.1f} ms")
    print(f"generated token ids: {answer.tolist()}")


if __name__ == "__main__":
    main()
