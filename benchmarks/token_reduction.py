"""What token reduction buys end to end: prefill latency per stage at several reduction settings.

    python benchmarks/token_reduction.py [--frames 64] [--repeats 3]

A random-weight STORM small enough for a CPU (SigLIP-like encoder at 224 px / patch 16 -> 7x7 tokens per
frame after the pixel shuffle, a 8-layer Qwen2-like LLM of width 512) answers one prompt about a
`--frames`-frame video. For each setting the script prints the visual tokens, the median time of each
stage (image encoder, projector, temporal encoder + reduction, LLM prefill) and the speed-up of the whole
prefill over no reduction. The paper's claims are for a 7B LLM on a GPU; this shows the same mechanism
at a size that runs here.
"""

import argparse
import statistics
import time

import torch

from storm_hf import StormConfig, StormForConditionalGeneration

SETTINGS = [("none", 1, 1, 1), ("k=2", 2, 1, 1), ("k=4", 4, 1, 1), ("k=4, s=2", 4, 1, 2), ("p=2", 1, 2, 1)]


def build(k, p, s):
    config = StormConfig(
        vision_config=dict(model_type="siglip_vision_model", hidden_size=384, intermediate_size=1536,
                           num_hidden_layers=6, num_attention_heads=6, image_size=224, patch_size=16,
                           vision_use_head=False),
        text_config=dict(model_type="qwen2", hidden_size=512, intermediate_size=2048, num_hidden_layers=8,
                         num_attention_heads=8, num_key_value_heads=2, vocab_size=32000),
        image_token_id=31998, video_token_id=31999, temporal_pool_k=k, spatial_pool_p=p, temporal_sample_s=s,
    )
    torch.manual_seed(0)
    return StormForConditionalGeneration(config).eval()


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    video = torch.randn(args.frames, 3, 224, 224)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.frames} frames; "
          f"median of {args.repeats}")
    print(f"{'setting':10s} {'tokens':>7s} {'encoder':>9s} {'projector':>10s} {'temporal':>9s} {'LLM':>9s} "
          f"{'total':>9s} {'speed-up':>8s}")
    baseline = None
    for name, k, p, s in SETTINGS:
        model = build(k, p, s)
        stages = {"encoder": [], "projector": [], "temporal": [], "llm": []}
        with torch.inference_mode():
            for _ in range(args.repeats + 1):  # the first round warms up
                parts = model.model  # the model's own stages, as get_video_features chains them
                patches, t_enc = timed(lambda: parts.vision_patch_features(video))  # micro-batched, as get_video_features
                tokens, t_proj = timed(lambda: parts.projector(patches))
                frames, per_frame, dim = tokens.shape

                def temporal():
                    encoded = parts.encode_in_time([tokens])[0]  # (frames, N, dim)
                    return parts.reduce_tokens(encoded[None]).reshape(-1, dim)  # (visual tokens, dim)

                features, t_temp = timed(temporal)
                prompt = torch.tensor([[1] + [model.config.video_token_id] * features.shape[0] + [2, 3, 4]])
                embeds = model.get_input_embeddings()(prompt)
                embeds[prompt == model.config.video_token_id] = features
                _, t_llm = timed(lambda: model.model.language_model(inputs_embeds=embeds))
                for key, value in zip(stages, (t_enc, t_proj, t_temp, t_llm)):
                    stages[key].append(value)
        median = {key: statistics.median(values[1:]) for key, values in stages.items()}
        total = sum(median.values())
        baseline = baseline or total
        print(f"{name:10s} {features.shape[0]:7d} {median['encoder'] * 1e3:7.0f}ms {median['projector'] * 1e3:8.1f}ms "
              f"{median['temporal'] * 1e3:7.0f}ms {median['llm'] * 1e3:7.0f}ms {total * 1e3:7.0f}ms "
              f"{baseline / total:7.2f}x")


if __name__ == "__main__":
    main()
