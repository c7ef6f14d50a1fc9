"""torch.compile and torch.export of the bundled STORM, side by side with transformers' LLaVA-OneVision.

    python benchmarks/compile.py                                    # both models: eager, compile, export
    python benchmarks/compile.py --before /tmp/storm_before/src     # and STORM from another checkout's src/
    python benchmarks/compile.py --quick                            # a smoke run in seconds (see below)

Models (random weights do not change these timings, but the bundled model's are real):

* `storm`: the bundled model (`storm_hf.miniature.BUNDLED_MODEL`, loaded with `from_pretrained`): a 2-layer
  SigLIP-style encoder at 48 px / patch 6, a 1-layer bidirectional Mamba temporal encoder (d_inner 128,
  d_state 8), temporal pooling k = 4, a 2-layer Qwen2-style LLM of width 64.
* `llava-onevision`: `transformers.LlavaOnevisionForConditionalGeneration` built by benchmarks/latency.py's
  builder with the bundled model's image encoder and LLM configurations.
* `storm (before)`, with `--before SRC`: the bundled model as the storm_hf found in SRC (put first on
  PYTHONPATH) loads and runs it, e.g. a checkout of the commit before a change (`git worktree add DIR REV`).

Input: one held-out clip of the benchmark (`storm_hf.miniature.temporal_qa`, 16 frames of 48 px) through the bundled
processor and its chat template, as `storm-hf demo` asks a question: `input_ids`, `attention_mask`,
`pixel_values_videos` and `video_num_frames`; `use_cache=False` (a forward, not generation). LLaVA-OneVision
gets the same pixels and prompt with its own number of video tokens (16 frames x 4 x 4 pooled patches + one
newline = 257, against STORM's 64 after k = 4).

Measured, each in a fresh Python process with an empty inductor cache directory of its own (nothing compiled
carries over from another measurement), all under `torch.no_grad()`:

* eager: the first forward, and the steady forward (median of `--repeats` after `--warmup` calls);
* compile: `torch.compile(model)` (`--backend`, inductor by default): the first forward, which compiles; the
  next `--warmup` calls together (transformers' decorators make dynamo recompile once or twice); then the
  steady forward; and the largest |logits - eager logits|;
* export: `torch.export.export(model, kwargs=inputs, strict=False)`, then the exported program's first forward
  and the largest |logits - eager logits|.

A measurement that has not finished after `--timeout` seconds is stopped (its whole process group) and reported
as "> timeout"; a failure is reported with its exception. `--threads N` sets each process's intra-op threads
(default: torch's). `--quick`: the dynamo-only `eager` backend, one repeat, one process per model (dynamo reset
between its measurements) and no `--before`; for a test that the script runs, not for figures.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODELS = ("storm", "llava-onevision")
KINDS = ("eager", "compile", "export")


# -- inside a measuring process ---------------------------------------------------------------------------------


def _latency_module():
    spec = importlib.util.spec_from_file_location("latency", HERE / "latency.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def storm_inputs():
    """(model, inputs): the bundled model and one held-out clip through its processor, as `storm-hf demo` asks."""
    import torch

    from storm_hf import StormForConditionalGeneration, StormProcessor
    from storm_hf.miniature import BUNDLED_MODEL
    from storm_hf.miniature.temporal_qa import TASKS, clip_rng, make_clip

    model = StormForConditionalGeneration.from_pretrained(BUNDLED_MODEL).eval()
    processor = StormProcessor.from_pretrained(BUNDLED_MODEL)
    clip = make_clip(clip_rng("test", 0, 0), TASKS[0])
    conversation = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": clip.question}]}]
    prompt = processor.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    inputs = dict(processor(text=prompt, videos=[clip.frames], return_tensors="pt"))
    inputs = {key: value for key, value in inputs.items() if torch.is_tensor(value)}
    return model, {**inputs, "use_cache": False}


def llava_onevision_inputs(storm_model, storm_batch):
    """(model, inputs): LLaVA-OneVision with the bundled model's encoder and LLM shapes (benchmarks/latency.py's
    builder), given STORM's pixels and prompt with LLaVA-OneVision's number of video tokens."""
    import torch

    latency = _latency_module()
    vision, text = storm_model.config.vision_config, storm_model.config.text_config
    latency.SHAPES["bundled"] = dict(
        vision={k: getattr(vision, k) for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                                 "num_attention_heads", "image_size", "patch_size")},
        text={k: getattr(text, k) for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                             "num_attention_heads", "num_key_value_heads", "vocab_size")},
    )
    model = latency.build_llava_onevision("bundled", torch.float32, "cpu")
    video_token = storm_model.config.video_token_id
    assert model.config.video_token_index == video_token  # both builders put it last in the vocabulary
    frames = storm_batch["pixel_values_videos"].shape[1]
    grid = vision.image_size // vision.patch_size
    tokens = frames * ((grid + 1) // 2) ** 2 + 1  # 2x2 pooling per frame, one newline per video
    ids = storm_batch["input_ids"][0].tolist()
    first, last = ids.index(video_token), len(ids) - ids[::-1].index(video_token)
    input_ids = torch.tensor([ids[:first] + [video_token] * tokens + ids[last:]])
    return model, dict(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                       pixel_values_videos=storm_batch["pixel_values_videos"], use_cache=False)


def _seconds(call):
    start = time.perf_counter()
    result = call()
    return time.perf_counter() - start, result


def _steady(call, warmup, repeats):
    for _ in range(warmup):
        call()
    return statistics.median(_seconds(call)[0] for _ in range(max(1, repeats)))


def measure(model_name, kind, args):
    """One measurement in this process: a dict of seconds (and the largest difference to eager)."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    storm, batch = storm_inputs()
    model, inputs = (storm, batch) if model_name == "storm" else llava_onevision_inputs(storm, batch)
    forward = lambda m: m(**inputs).logits  # noqa: E731
    result = {}
    with torch.no_grad():
        if kind == "eager":
            result["first"], _ = _seconds(lambda: forward(model))
            result["steady"] = _steady(lambda: forward(model), args.warmup, args.repeats)
            return result
        reference = forward(model)  # untimed: the eager logits to compare with
        if kind == "compile":
            compiled = torch.compile(model, backend=args.backend)
            result["first"], logits = _seconds(lambda: forward(compiled))
            result["warmup"], _ = _seconds(lambda: [forward(compiled) for _ in range(args.warmup)])
            result["steady"] = _steady(lambda: forward(compiled), 0, args.repeats)
        else:
            result["export"], program = _seconds(
                lambda: torch.export.export(model, (), kwargs=inputs, strict=False).module())
            result["first"], logits = _seconds(lambda: forward(program))
        result["max_diff"] = (logits - reference).abs().max().item()
    return result


def child(args):
    """`--child MODEL KIND [KIND...]`: measure, print one JSON line per measurement."""
    import torch

    for kind in args.child[1:]:
        torch._dynamo.reset()
        try:
            result = measure(args.child[0], kind, args)
        except Exception as error:  # reported in the table, e.g. an export that does not trace
            result = {"error": f"{type(error).__name__}: {str(error).strip().splitlines()[0][:160]}"}
        print("RESULT " + json.dumps({"model": args.child[0], "kind": kind, **result}), flush=True)


# -- the driver -------------------------------------------------------------------------------------------------


def run_child(label, model_name, kinds, args, src=None):
    """Runs `--child` in a fresh process (own process group, own empty inductor cache). Returns its results,
    labelled; a timeout kills the process group and reports every kind left as timed out."""
    command = [sys.executable, str(Path(__file__).resolve()), "--child", model_name, *kinds,
               "--backend", args.backend, "--repeats", str(args.repeats), "--warmup", str(args.warmup)]
    if args.threads:
        command += ["--threads", str(args.threads)]
    with tempfile.TemporaryDirectory(prefix="storm-compile-bench-") as cache:
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        if src:
            env["PYTHONPATH"] = os.pathsep.join([str(src), *filter(None, [os.environ.get("PYTHONPATH")])])
        process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   start_new_session=True)
        try:
            out, err = process.communicate(timeout=args.timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # the measuring process and inductor's compile workers
            out, err = process.communicate()
    results = [json.loads(line[len("RESULT "):]) for line in out.splitlines() if line.startswith("RESULT ")]
    done = {r["kind"] for r in results}
    if process.returncode != 0 and len(done) < len(kinds):
        reason = {"timeout": args.timeout} if process.returncode == -signal.SIGKILL else {
            "error": f"exit {process.returncode}: {(err.strip().splitlines() or [''])[-1][:160]}"}
        results += [{"model": model_name, "kind": kind, **reason} for kind in kinds if kind not in done]
    for result in results:
        result["label"] = label
        print(f"  {label:18s} {result['kind']:8s} " + ", ".join(
            f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in result.items()
            if k not in ("model", "kind", "label")), flush=True)
    return results


def cell(row, key, scale=1.0, unit="s", first=True):
    """One table cell; a timeout or failure is told in the first cell of its measurement, '-' in the others."""
    if row is None:
        return "-"
    if "timeout" in row or "error" in row:
        if not first:
            return "-"
        return f"> {row['timeout']:.0f} s (stopped)" if "timeout" in row else "fails: " + row["error"].split(":")[0]
    return f"{row[key] * scale:.3g} {unit}" if key in row else "-"


def print_table(results, args):
    by = {(r["label"], r["kind"]): r for r in results}
    labels = list(dict.fromkeys(r["label"] for r in results))
    where = "one process per model, dynamo reset between" if args.quick else "every measurement in a fresh process"
    print(f"\nbackend {args.backend}; seconds unless stated; steady = median of {args.repeats} after {args.warmup} "
          f"calls; {where}\n")
    print("| model | eager first forward | eager steady | compile: first forward | next "
          f"{args.warmup} calls | compiled steady | max diff | export (non-strict) | exported first forward | "
          "max diff |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for label in labels:
        eager, compiled, exported = (by.get((label, kind)) for kind in KINDS)
        diff = lambda row: f"{row['max_diff']:.1e}" if row and "max_diff" in row else "-"  # noqa: E731
        print(f"| {label} | {cell(eager, 'first')} | {cell(eager, 'steady', 1e3, 'ms', False)} | "
              f"{cell(compiled, 'first')} | {cell(compiled, 'warmup', first=False)} | "
              f"{cell(compiled, 'steady', 1e3, 'ms', False)} | {diff(compiled)} | "
              f"{cell(exported, 'export')} | {cell(exported, 'first', first=False)} | {diff(exported)} |")
    print()
    for name, value in ratios(by).items():
        print(f"  {name}: {value}")


def ratios(by):
    """Side-by-side ratios of the compile and export times (strings; '-' where a side is missing)."""

    def ratio(a, b, kind, key):
        ra, rb = by.get((a, kind)), by.get((b, kind))
        if ra is None or rb is None:
            return "-"
        if "timeout" in ra and key in rb:
            return f"> {ra['timeout'] / rb[key]:.1f}x"
        return f"{ra[key] / rb[key]:.2f}x" if key in ra and key in rb else "-"

    return {
        "compile first forward, storm / llava-onevision": ratio("storm", "llava-onevision", "compile", "first"),
        "compile first forward, storm (before) / storm": ratio("storm (before)", "storm", "compile", "first"),
        "export, storm / llava-onevision": ratio("storm", "llava-onevision", "export", "export"),
        "compiled steady / eager steady, storm": _within(by, "storm"),
        "compiled steady / eager steady, llava-onevision": _within(by, "llava-onevision"),
    }


def _within(by, label):
    eager, compiled = by.get((label, "eager")), by.get((label, "compile"))
    if not eager or not compiled or "steady" not in eager or "steady" not in compiled:
        return "-"
    return f"{compiled['steady'] / eager['steady']:.2f}x"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", default="inductor", help="torch.compile backend (default inductor)")
    parser.add_argument("--repeats", type=int, default=5, help="steady forwards timed (median)")
    parser.add_argument("--warmup", type=int, default=3, help="calls before the steady ones")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds one measuring process may take")
    parser.add_argument("--threads", type=int, help="intra-op threads of the measuring processes")
    parser.add_argument("--before", metavar="SRC", help="also measure STORM from this src/ folder (PYTHONPATH)")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    parser.add_argument("--quick", action="store_true", help="eager backend, 1 repeat, one process: a smoke run")
    parser.add_argument("--json", help="write every measurement to this file")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args)
    if args.quick:
        args.backend, args.repeats, args.warmup, args.before = "eager", 1, 1, None

    import torch

    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, intra-op threads {args.threads or 'default'}; backend "
          f"{args.backend}; timeout {args.timeout:.0f} s per process", flush=True)
    results = []
    if args.quick:
        for model_name in args.models:
            results += run_child(model_name, model_name, args.kinds, args)
    else:
        arms = [(name, name, None) for name in args.models]
        if args.before:
            arms.append(("storm (before)", "storm", args.before))
        for kind in args.kinds:  # one kind across the models, then the next: like conditions side by side
            for label, model_name, src in arms:
                results += run_child(label, model_name, [kind], args, src)
    print_table(results, args)
    if args.json:
        Path(args.json).write_text(json.dumps({"args": {k: v for k, v in vars(args).items() if k != "child"},
                                               "results": results}, indent=1))


if __name__ == "__main__":
    main()
