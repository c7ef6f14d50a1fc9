"""Peak memory of the visual path against the number of frames, with the image encoder run in frame
micro-batches (`StormConfig.vision_frames_per_batch`) and in one batch.

    python benchmarks/vision_memory.py [--frames 32 64 128 256] [--one-batch-up-to 64]

The `small` shapes (random weights): a SigLIP-base-like image encoder at 448 px / patch 14 (1024 patches per
frame, 12 layers, width 768), the pixel shuffle to 256 tokens per frame, a projector to a Qwen2-0.5B-like
width (896) and one bidirectional temporal layer, then k = 4. Each (frames, setting) runs in a fresh process:
it builds the model, then measures the growth of its peak resident memory (ru_maxrss) from there over making
the fp32 video tensor and one `get_video_features` call under inference mode. The video tensor itself is
2.4 MB per frame. Then the temporal encoder and the reduction alone, from random projected tokens (256 per
frame, width 896): the part of the slope that is theirs. Prints one line per run and a table; memory is what
this process holds; the seconds are for orientation only.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch


def small_config(frames_per_batch):
    from storm_hf import StormConfig

    return StormConfig(
        vision_config=dict(model_type="siglip_vision_model", hidden_size=768, intermediate_size=3072,
                           num_hidden_layers=12, num_attention_heads=12, image_size=448, patch_size=14,
                           vision_use_head=False),
        text_config=dict(model_type="qwen2", hidden_size=896, intermediate_size=4864, num_hidden_layers=1,
                         num_attention_heads=14, num_key_value_heads=2, vocab_size=1024),
        image_token_id=1022, video_token_id=1023, temporal_pool_k=4, vision_frames_per_batch=frames_per_batch,
    )


def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def child(frames, frames_per_batch, part="visual path"):
    from storm_hf import StormModel

    torch.manual_seed(0)
    model = StormModel(small_config(frames_per_batch)).eval()  # the LLM is not run: one layer is enough here
    before = peak_mb()
    start = time.perf_counter()
    with torch.inference_mode():
        if part == "visual path":
            video = torch.randn(1, frames, 3, 448, 448)  # (batch, frames, 3, H, W)
            features = model.get_video_features(video).pooler_output[0]
        else:  # the temporal encoder and the reduction alone, from projected tokens
            tokens = torch.randn(frames, model.config.tokens_per_frame, model.config.text_config.hidden_size)
            features = model.reduce_tokens(model.encode_in_time([tokens])[0][None])[0].flatten(0, 1)
    print(json.dumps({"part": part, "frames": frames, "frames_per_batch": frames_per_batch,
                      "seconds": time.perf_counter() - start, "peak_growth_mb": peak_mb() - before,
                      "visual_tokens": features.shape[0]}))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, nargs="+", default=[32, 64, 128, 256])
    parser.add_argument("--frames-per-batch", type=int, default=16, help="the micro-batch setting measured")
    parser.add_argument("--one-batch-up-to", type=int, default=64,
                        help="also measure all frames in one batch (vision_frames_per_batch=None) up to this many")
    parser.add_argument("--temporal-only", action="store_true",
                        help="measure only the temporal encoder + reduction from random projected tokens (fast)")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        frames, per_batch = int(args.child[0]), None if args.child[1] == "None" else int(args.child[1])
        return child(frames, per_batch, args.child[2])
    runs = [(f, None, "temporal encoder + reduction") for f in args.frames]
    if not args.temporal_only:
        runs = [(f, args.frames_per_batch, "visual path") for f in args.frames] + \
               [(f, None, "visual path") for f in args.frames if f <= args.one_batch_up_to] + runs
    print(f"torch {torch.__version__}, {os.cpu_count()} cores")
    results = []
    for frames, per_batch, part in runs:
        out = subprocess.run([sys.executable, __file__, "--child", str(frames), str(per_batch), part],
                             capture_output=True, text=True)
        if out.returncode:
            print(f"{part}, {frames} frames, vision_frames_per_batch={per_batch}: failed\n{out.stderr[-2000:]}")
            continue
        result = json.loads(out.stdout.strip().splitlines()[-1])
        results.append(result)
        print(json.dumps(result), flush=True)
    print("| part | frames | vision_frames_per_batch | peak growth MB | MB per frame | seconds |")
    print("|---|---|---|---|---|---|")
    for r in results:
        per_batch = r["frames_per_batch"] if r["part"] == "visual path" else "-"
        print(f"| {r['part']} | {r['frames']} | {per_batch} | {r['peak_growth_mb']:.0f} | "
              f"{r['peak_growth_mb'] / r['frames']:.1f} | {r['seconds']:.1f} |")


if __name__ == "__main__":
    main()
