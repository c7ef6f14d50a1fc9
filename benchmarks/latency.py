"""Model latency and memory side by side: STORM at several reduction settings, STORM's baseline without the
temporal encoder, and transformers' LLaVA-OneVision with the same image encoder and LLM shapes.

    python benchmarks/latency.py [--shapes small] [--frames 32 64] [--repeats 3] [--new-tokens 32] [--json out.json]
    python benchmarks/latency.py --shapes paper --device cuda --dtype bfloat16 --frames 128 256 512   # on a GPU

Every arm gets the same random video tensor and a prompt of one BOS token, the video's tokens and 16 text
tokens; weights are random (time and memory do not depend on them). Arms:

* `storm none`, `storm k=4`, `storm s=2`, `storm k=4 s=2`, `storm p=2`: one STORM model whose reduction
  settings (`temporal_pool_k`, `temporal_sample_s`, `spatial_pool_p`) change between arms;
* `baseline`: STORM's layout with `temporal_num_layers=0` (no temporal encoder) and no reduction;
* `llava-onevision`: `transformers.LlavaOnevisionForConditionalGeneration` with the same image encoder and
  LLM configurations, through its own `get_video_features` (its projector, 2x2 bilinear pooling per frame and
  one newline token per video).

Stages timed per arm: the image encoder, what follows it up to the LLM (projector + temporal encoder +
reduction for STORM; projector + pooling for LLaVA-OneVision), the LLM prefill up to the first token's
logits, then greedy decoding of `--new-tokens` tokens with the KV cache (the per-token time is their mean).
Time to first token (TTFT) = image encoder + after-encoder stage + prefill; end to end = TTFT + all decode
steps.

The image encoder is the same module class with the same configuration and the same input in every STORM
arm, and takes most of the time on a CPU; it runs once per repeat (`vision_patch_features`, micro-batched
as the model runs it) and its median counts in every STORM arm. LLaVA-OneVision's `get_video_features`
(encoder included, as transformers runs it: one batch, all hidden states kept) is timed whole, once per
repeat. Repeats are interleaved (every arm once per repeat, in an order rotated each repeat); the table
shows medians. Peak memory: the highest growth of the process's resident memory (sampled every 2 ms) over
an arm's stages, or of `torch.cuda.max_memory_allocated` on a GPU; for a STORM arm the larger of the image
encoder's peak and the peak of the arm's later stages (which start from the encoder's output).
"""

import argparse
import json
import os
import statistics
import threading
import time

import torch

from storm_hf import StormConfig, StormForConditionalGeneration

SHAPES = {
    # test size: runs in seconds
    "tiny": dict(
        vision=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=64,
                    patch_size=8),
        text=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=1024),
    ),
    # SigLIP-base-like at 448 px / patch 14 (1024 patches, 256 tokens per frame) + Qwen2-0.5B-like
    "small": dict(
        vision=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                    image_size=448, patch_size=14),
        text=dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                  num_key_value_heads=2, vocab_size=151936),
    ),
    # the paper's: SigLIP-So400m at 448 px / patch 14 + Qwen2-7B
    "paper": dict(
        vision=dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
                    image_size=448, patch_size=14),
        text=dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                  num_key_value_heads=4, vocab_size=152064),
    ),
}
STORM_ARMS = {  # name: (temporal_pool_k, spatial_pool_p, temporal_sample_s)
    "storm none": (1, 1, 1), "storm k=4": (4, 1, 1), "storm s=2": (1, 1, 2), "storm k=4 s=2": (4, 1, 2),
    "storm p=2": (1, 2, 1),
}
ARMS = list(STORM_ARMS) + ["baseline", "llava-onevision"]
TEXT_TOKENS = 16


def vision_config(shapes):
    return dict(model_type="siglip_vision_model", vision_use_head=False, **SHAPES[shapes]["vision"])


def text_config(shapes):
    return dict(model_type="qwen2", **SHAPES[shapes]["text"])


def build_storm(shapes, temporal_layers, dtype, device):
    vocab = SHAPES[shapes]["text"]["vocab_size"]
    config = StormConfig(vision_config=vision_config(shapes), text_config=text_config(shapes),
                         image_token_id=vocab - 2, video_token_id=vocab - 1, temporal_num_layers=temporal_layers,
                         temporal_pool_k=1)
    torch.manual_seed(0)
    return StormForConditionalGeneration(config).to(device=device, dtype=dtype).eval()


def build_llava_onevision(shapes, dtype, device):
    from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration

    vocab = SHAPES[shapes]["text"]["vocab_size"]
    config = LlavaOnevisionConfig(vision_config=vision_config(shapes), text_config=text_config(shapes),
                                  image_token_index=vocab - 2, video_token_index=vocab - 1,
                                  vision_feature_layer=-1, vision_feature_select_strategy="full")
    torch.manual_seed(0)
    return LlavaOnevisionForConditionalGeneration(config).to(device=device, dtype=dtype).eval()


class PeakMemory:
    """Peak growth (MB) of resident memory (CPU, sampled by a thread) or of allocated CUDA memory, over a block."""

    def __init__(self, device):
        self.device, self.peak_mb = torch.device(device), 0.0

    @staticmethod
    def _rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
            return self
        self.start = self.highest = self._rss()
        self.running = True

        def sample():
            while self.running:
                self.highest = max(self.highest, self._rss())
                time.sleep(0.002)

        self.thread = threading.Thread(target=sample, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak_mb = (torch.cuda.max_memory_allocated() - self.start) / 2**20
            return
        self.highest = max(self.highest, self._rss())
        self.running = False
        self.thread.join()
        self.peak_mb = (self.highest - self.start) / 2**20


def clock(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()


def prompt_embeds(model, features, video_token_id, device):
    """(1, 1 + visual + TEXT_TOKENS, dim): BOS, the video's tokens, the question's tokens."""
    text_ids = torch.arange(10, 10 + TEXT_TOKENS, device=device)
    ids = torch.cat([torch.tensor([1], device=device), torch.full((features.shape[0],), video_token_id, device=device),
                     text_ids])[None]
    embeds = model.get_input_embeddings()(ids)
    embeds[ids == video_token_id] = features.to(embeds.dtype)
    return embeds


def prefill_and_decode(language_model, lm_head, embeds, new_tokens, device):
    """Prefill, first token (greedy), then ``new_tokens`` decode steps with the KV cache.
    Returns (prefill seconds, mean seconds per decode step)."""
    start = clock(device)
    out = language_model(inputs_embeds=embeds, use_cache=True)
    token = lm_head(out.last_hidden_state[:, -1]).argmax(-1, keepdim=True)  # (1, 1)
    prefill = clock(device) - start
    cache = out.cache if hasattr(out, "cache") else out.past_key_values
    embedding = language_model.get_input_embeddings()
    start = clock(device)
    for _ in range(new_tokens):
        out = language_model(inputs_embeds=embedding(token), cache=cache, use_cache=True)
        cache = out.cache if hasattr(out, "cache") else out.past_key_values
        token = lm_head(out.last_hidden_state[:, -1]).argmax(-1, keepdim=True)
    decode = (clock(device) - start) / max(new_tokens, 1)
    return prefill, decode


def run_storm_arm(model, arm, patches, new_tokens, device):
    """The stages after the image encoder for one STORM arm (``patches``: (frames, patches, vision_dim))."""
    config, parts = model.config, model.model
    if arm != "baseline":
        config.temporal_pool_k, config.spatial_pool_p, config.temporal_sample_s = STORM_ARMS[arm]
    with PeakMemory(device) as memory:
        start = clock(device)
        tokens = parts.projector(patches)  # (frames, N, dim)
        encoded = parts.encode_in_time([tokens])[0]  # (frames, N, dim); the identity without temporal layers
        features = parts.reduce_tokens(encoded[None])[0].flatten(0, 1)  # (visual tokens, dim)
        after_encoder = clock(device) - start
        embeds = prompt_embeds(model, features, config.video_token_id, device)
        prefill, decode = prefill_and_decode(parts.language_model, model.lm_head, embeds, new_tokens, device)
    return dict(after_encoder=after_encoder, prefill=prefill, decode_per_token=decode, visual_tokens=features.shape[0],
                peak_mb=memory.peak_mb)


def run_llava_onevision(model, video, new_tokens, device):
    with PeakMemory(device) as memory:
        start = clock(device)
        outputs = model.model.get_video_features(pixel_values_videos=video[None], return_dict=True)
        features = outputs.pooler_output[0]  # (frames * tokens + 1 newline, dim)
        features_seconds = clock(device) - start
        del outputs
        embeds = prompt_embeds(model, features, model.config.video_token_index, device)
        prefill, decode = prefill_and_decode(model.model.language_model, model.lm_head, embeds, new_tokens, device)
    return dict(encoder_and_after=features_seconds, prefill=prefill, decode_per_token=decode,
                visual_tokens=features.shape[0], peak_mb=memory.peak_mb)


def measure(args, frames, models):
    storm, baseline, llava = models
    size = SHAPES[args.shapes]["vision"]["image_size"]
    torch.manual_seed(1)
    video = torch.randn(frames, 3, size, size, device=args.device, dtype=args.torch_dtype)  # (frames, 3, H, W)
    arms = [arm for arm in ARMS if arm in args.arms]
    runs = {arm: [] for arm in arms}
    encoder_runs = []
    for repeat in range(args.repeats + args.warmup):
        order = arms[repeat % len(arms):] + arms[:repeat % len(arms)]  # rotated: no arm always goes first
        with PeakMemory(args.device) as memory:
            start = clock(args.device)
            patches = storm.model.vision_patch_features(video)  # (frames, patches, vision_dim)
            seconds = clock(args.device) - start
        encoder = dict(seconds=seconds, peak_mb=memory.peak_mb)  # peak_mb is set when the block ends
        print(f"  {frames} frames, repeat {repeat + 1 - args.warmup}, image encoder (storm_hf, shared by the STORM "
              f"arms): seconds {encoder['seconds']:.3f}, peak_mb {encoder['peak_mb']:.1f}", flush=True)
        for arm in order:
            if arm == "llava-onevision":
                result = run_llava_onevision(llava, video, args.new_tokens, args.device)
            else:
                result = run_storm_arm(baseline if arm == "baseline" else storm, arm, patches, args.new_tokens,
                                       args.device)
            if repeat >= args.warmup:
                runs[arm].append(result)
            print(f"  {frames} frames, repeat {repeat + 1 - args.warmup}{' (warm-up)' if repeat < args.warmup else ''}"
                  f", {arm}: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                                           for k, v in result.items()), flush=True)
        if repeat >= args.warmup:
            encoder_runs.append(encoder)
        del patches
    encoder_seconds = statistics.median(r["seconds"] for r in encoder_runs)
    encoder_peak = max(r["peak_mb"] for r in encoder_runs)
    table = {}
    for arm in arms:
        median = {key: statistics.median(r[key] for r in runs[arm])
                  for key in runs[arm][0] if key not in ("visual_tokens", "peak_mb")}
        row = dict(visual_tokens=runs[arm][0]["visual_tokens"], peak_mb=max(r["peak_mb"] for r in runs[arm]), **median)
        if arm == "llava-onevision":
            row["ttft"] = row["encoder_and_after"] + row["prefill"]
        else:
            row["encoder"] = encoder_seconds
            row["peak_mb"] = max(row["peak_mb"], encoder_peak)
            row["ttft"] = encoder_seconds + row["after_encoder"] + row["prefill"]
        row["end_to_end"] = row["ttft"] + args.new_tokens * row["decode_per_token"]
        row["repeats"] = runs[arm]
        table[arm] = row
    return dict(frames=frames, encoder_repeats=encoder_runs, arms=table)


def ratios(table):
    """The targets of issue 12, as ratios (None where an arm was not run)."""
    arms = table["arms"]

    def ratio(a, b, key):
        return arms[a][key] / arms[b][key] if a in arms and b in arms else None

    temporal_share = None
    if "storm none" in arms and "baseline" in arms:
        # the temporal encoder's time: STORM's after-encoder stage minus the baseline's (projector only)
        temporal = arms["storm none"]["after_encoder"] - arms["baseline"]["after_encoder"]
        temporal_share = temporal / arms["storm none"]["end_to_end"]
    return {
        "ttft storm none / storm k=4 s=2 (target >= 3)": ratio("storm none", "storm k=4 s=2", "ttft"),
        "ttft llava-onevision / storm k=4 s=2 (target >= 2.5)": ratio("llava-onevision", "storm k=4 s=2", "ttft"),
        "decode per token storm none / storm k=4 s=2 (target >= 1.5)":
            ratio("storm none", "storm k=4 s=2", "decode_per_token"),
        "decode per token llava-onevision / storm k=4 s=2 (target >= 1.5)":
            ratio("llava-onevision", "storm k=4 s=2", "decode_per_token"),
        "ttft baseline / storm none": ratio("baseline", "storm none", "ttft"),
        "temporal encoder share of unreduced end to end (target <= 0.05)": temporal_share,
    }


def print_table(table, new_tokens):
    arms = table["arms"]
    reference = arms.get("storm none") or next(iter(arms.values()))
    print(f"\n{table['frames']} frames (medians; seconds; MB)")
    print("| arm | visual tokens | image encoder | after encoder | LLM prefill | TTFT | decode / token | "
          f"end to end ({new_tokens} tokens) | peak MB | TTFT vs storm none |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for arm, row in arms.items():
        if arm == "llava-onevision":
            encoder, after = "(in next)", f"{row['encoder_and_after']:.2f} (with encoder)"
        else:
            encoder, after = f"{row['encoder']:.2f}", f"{row['after_encoder']:.3f}"
        print(f"| {arm} | {row['visual_tokens']} | {encoder} | {after} | {row['prefill']:.2f} | {row['ttft']:.2f} | "
              f"{row['decode_per_token'] * 1e3:.1f} ms | {row['end_to_end']:.2f} | {row['peak_mb']:.0f} | "
              f"{reference['ttft'] / row['ttft']:.2f}x |")
    for name, value in ratios(table).items():
        print(f"  {name}: {'-' if value is None else f'{value:.3f}'}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", choices=list(SHAPES), default="small")
    parser.add_argument("--frames", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1,
                        help="rounds run first and not counted (at min(frames, 8) frames, before the first count)")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--arms", nargs="+", default=ARMS, choices=ARMS)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--json", help="write every measurement and the ratios to this file")
    args = parser.parse_args()
    args.torch_dtype = getattr(torch, args.dtype)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.device}, {args.dtype}; shapes "
          f"{args.shapes}; {args.repeats} repeats after {args.warmup} warm-up; {args.new_tokens} new tokens")
    with torch.inference_mode():
        storm = build_storm(args.shapes, 1, args.torch_dtype, args.device)
        baseline = build_storm(args.shapes, 0, args.torch_dtype, args.device) if "baseline" in args.arms else None
        llava = (build_llava_onevision(args.shapes, args.torch_dtype, args.device)
                 if "llava-onevision" in args.arms else None)
        if args.warmup:  # code paths, allocator and thread pools warmed up on a short video
            measure(argparse.Namespace(**{**vars(args), "repeats": args.warmup, "warmup": 0}),
                    min(8, min(args.frames)), (storm, baseline, llava))
        args.warmup = 0
        results = []
        for frames in args.frames:
            table = measure(args, frames, (storm, baseline, llava))
            print_table(table, args.new_tokens)
            table["ratios"] = ratios(table)
            results.append(table)
            if args.json:  # after every frame count: a long run stopped later keeps what it measured
                with open(args.json, "w") as f:
                    json.dump(dict(shapes=args.shapes, device=args.device, dtype=args.dtype,
                                   threads=torch.get_num_threads(), torch=torch.__version__,
                                   new_tokens=args.new_tokens, results=results), f, indent=1)
                print(f"wrote {args.json}", flush=True)


if __name__ == "__main__":
    main()
