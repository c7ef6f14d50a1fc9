"""The paper's claim in miniature: temporal pooling with and without a temporal encoder, on questions that
need time (storm_hf.miniature.temporal_qa), trained from scratch on this CPU through `storm-hf train`.

    python benchmarks/temporal_qa.py            # the full table: 3 arms x 3 reductions x 3 seeds (see --help),
                                                # ~40 min on 2 cores
    python benchmarks/temporal_qa.py --quick    # a smaller table: 1 seed, fewer steps
    python benchmarks/temporal_qa.py --bundle   # the bundled model (storm_hf.miniature.BUNDLED_MODEL), 2,000 steps,
                                                # and the baseline at k=4 beside it with the same steps

Recipe (all stages through `storm-hf train`, stage sft, from scratch; the image encoder is frozen once it has
been pretrained):
1. Data: benchmark clips (train / validation / test seeds are disjoint) written as H.264 files, and stills
   (single frames with several questions each: shape, colour, left/right, top/bottom) written as PNG files.
2. Image pretraining, shared: a model without temporal encoder learns to see on the stills (one-frame
   videos), all parameters; the stand-in for the paper's pretrained SigLIP and Qwen2.
3. Video pretraining, shared: that model, still without temporal encoder and without token reduction (the
   VILA-style baseline at k = 1), trained on the training clips. The arms are too short (a few hundred steps,
   to fit 27 of them in the time) to learn to read time from scratch; this stage gives every arm the same
   start, and it is the baseline's own design, so it favours the baseline, not STORM.
4. Per arm and seed: that model's weights in the arm's layout, a new temporal encoder (none for the
   baseline) whose output projections start at zero (so every arm starts as the same function), the arm's
   token reduction; trained on the training clips.
5. Evaluation on the test clips by option log-likelihood (storm_hf.evaluation), at the trained setting and
   with test-time temporal sampling s = 2, each video decoded once; accuracy per question type.
6. LLM prefill time per setting, measured side by side in this process (interleaved, medians).

Arms: baseline (no temporal encoder, VILA-style), STORM (bidirectional), STORM forward-only; reductions:
none (k=1), temporal pooling k=4, spatial pooling p=2 (the same 25% token budget as k=4). The STORM arms take
the encoder settings given (--scan-order, --temporal-layers, --dt-min, --dt-max, and --encoder-lr, the new
encoder's own peak learning rate through `part_learning_rates`); by default the measured recipe (RECIPE: 2
layers, alternating raster / time-major, the encoder at 1e-2). The scan order applies to the bidirectional arm
only: the forward-only one stays raster, the order that can stream. --arms, --reductions and --seeds run a part
of the table. Question types: --tasks all
(the default) adds the three within-window types (storm_hf.miniature.temporal_qa.WINDOW_TASKS) to the bundled
model's mix; for every k = 4 run the window-reversal drop (the accuracy lost on those types when the frames
are reversed inside each window of 4, storm_hf.evaluation.temporal.window_order_signal) is measured too: 0 for
the baseline by construction.
Results go to --output (JSON, every prediction of every run) and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REDUCTIONS = {"k=1": {"temporal_pool_k": 1, "spatial_pool_p": 1}, "k=4": {"temporal_pool_k": 4, "spatial_pool_p": 1},
              "p=2": {"temporal_pool_k": 1, "spatial_pool_p": 2}}
ARM_NAMES = ("baseline", "storm", "storm-forward")
# The question types of the data: the bundled model's mix (TASKS), or with the within-window types (ALL_TASKS).
TASK_SETS = {"mix": ("direction", "first_appeared", "flash_count", "stop_or_reverse", "order_in_window", "colour",
                     "shape"),
             "all": ("direction", "first_appeared", "flash_count", "stop_or_reverse", "order_in_window", "colour",
                     "shape", "colour_change", "flash_colours", "pair_in_window")}
WINDOW_SIGNAL_TASKS = ("colour_change", "flash_colours", "pair_in_window", "order_in_window")
WINDOW_SIGNAL_CLIPS = 40  # test clips per within-window type for the window-reversal drop

FULL = dict(train_clips=3072, test_clips=490, validation_clips=350, stills=8000, image_steps=1600, video_steps=900,
            steps=170, seeds=(0, 1, 2), arms=ARM_NAMES, reductions=tuple(REDUCTIONS))
QUICK = dict(train_clips=1024, test_clips=350, validation_clips=70, stills=3000, image_steps=600, video_steps=300,
             steps=100, seeds=(0,), arms=ARM_NAMES, reductions=("k=1", "k=4"))
BUNDLE = dict(steps=2000)

NUM_FRAMES = 16
BATCH = 16
LEARNING_RATE = 2e-3
# The STORM arms' encoder recipe (benchmarks/RESULTS.md, issue 24): two layers, raster then time-major, the new
# encoder at its own peak learning rate (half the rate that diverged). --scan-order raster --temporal-layers 1
# --encoder-lr 2e-3 gives the paper's layer and the shared rate.
RECIPE = {"temporal_scan_order": "alternating", "temporal_num_layers": 2}
ENCODER_LEARNING_RATE = 1e-2


def log(*args):
    print(time.strftime("%H:%M:%S"), *args, flush=True)


# -------------------------------------------------------------------------------------------------
# Data and image pretraining
# -------------------------------------------------------------------------------------------------

def write_data(root, settings):
    """Clips and stills, each split written once (kept between runs of the same settings)."""
    from storm_hf.miniature.temporal_qa import write_split, write_stills

    os.makedirs(root, exist_ok=True)
    jobs = [("train", settings["train_clips"]), ("test", settings["test_clips"]),
            ("validation", settings["validation_clips"])]
    done = os.path.join(root, "done.json")
    tasks = list(settings.get("tasks", TASK_SETS["mix"]))
    wanted = {"clips": jobs, "stills": settings["stills"], "generator": generator_id(), "tasks": tasks}
    if os.path.exists(done) and json.load(open(done)) == json.loads(json.dumps(wanted)):
        log(f"data: reusing {root}")
        return
    start = time.perf_counter()
    with ThreadPoolExecutor(2) as pool:  # the encoder releases the GIL
        futures = [pool.submit(write_split, root, split, count, tasks=tasks) for split, count in jobs]
        write_stills(root, "train", settings["stills"])
        for future in futures:
            future.result()
    json.dump(wanted, open(done, "w"))
    log(f"data: {sum(c for _, c in jobs)} clips and {settings['stills']} stills in {time.perf_counter() - start:.0f} s")


def generator_id() -> str:
    """A digest of the benchmark generator's source: data and models made by another version are not reused."""
    import hashlib

    import storm_hf.miniature.temporal_qa

    return hashlib.sha256(open(storm_hf.miniature.temporal_qa.__file__, "rb").read()).hexdigest()[:16]


def training_config(model_dir, train_file, data_root, output_dir, steps, seed, batch=BATCH, freeze=None,
                    learning_rate=LEARNING_RATE, part_learning_rates=None):
    return {
        "model": model_dir, "train_file": train_file, "video_root": data_root, "num_frames": NUM_FRAMES,
        "stage": "sft", "freeze": freeze or [], "resume": False, "part_learning_rates": part_learning_rates or {},
        "training": {
            "output_dir": output_dir, "max_steps": steps, "per_device_train_batch_size": batch,
            "learning_rate": learning_rate, "warmup_steps": max(1, steps // 20), "lr_scheduler_type": "cosine",
            "weight_decay": 0.01, "max_grad_norm": 1.0, "seed": seed, "data_seed": seed,
            "logging_steps": max(1, steps // 10), "save_strategy": "no", "report_to": [],
            "dataloader_num_workers": 0, "disable_tqdm": True,
        },
    }


def run_train(config, path, threads):
    """`storm-hf train` in a fresh process, with ``threads`` torch threads; returns its log."""
    with open(path, "w") as f:
        json.dump(config, f, indent=1)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               TOKENIZERS_PARALLELISM="false")
    result = subprocess.run([sys.executable, "-m", "storm_hf", "train", path], env=env, capture_output=True,
                            text=True)
    if result.returncode:
        raise RuntimeError(f"storm-hf train {path} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result.stdout


def shared_stage(work, name, init, train_file, steps, batch, wanted, threads):
    """Train ``init`` for ``steps`` into WORK/name (kept between runs with the same ``wanted`` settings)."""
    out = os.path.join(work, name)
    stamp = os.path.join(work, name + ".json")
    if os.path.exists(os.path.join(out, "model.safetensors")) and os.path.exists(stamp) and \
            {k: json.load(open(stamp)).get(k) for k in wanted} == wanted:
        log(f"{name}: reusing {out}")
        return out
    data = os.path.join(work, "data")
    start = time.perf_counter()
    text = run_train(training_config(init, os.path.join(data, train_file), data, out, steps, seed=0, batch=batch,
                                     freeze=["vision_tower"] if name != "image-pretrained" else []),
                     os.path.join(work, name + "-train.json"), threads)
    seconds = time.perf_counter() - start
    json.dump({**wanted, "seconds": seconds, "log": text.strip().splitlines()[-1]}, open(stamp, "w"))
    log(f"{name}: {steps} steps in {seconds:.0f} s; {text.strip().splitlines()[-1][:160]}")
    return out


def pretrain_images(work, settings, threads):
    """Stage 2: a model without temporal encoder trained on the stills; its accuracy on held-out stills."""
    from storm_hf.inference import load
    from storm_hf.evaluation import evaluate
    from storm_hf.miniature import build_initial_checkpoint, mini_config
    from storm_hf.miniature.temporal_qa import write_stills
    from storm_hf.training import load_video_dataset

    init = build_initial_checkpoint(os.path.join(work, "image-init"), mini_config("baseline", 1), seed=0,
                                    num_frames=NUM_FRAMES)
    out = shared_stage(work, "image-pretrained", init, "stills-train.jsonl", settings["image_steps"], 2 * BATCH,
                       {"steps": settings["image_steps"], "stills": settings["stills"], "generator": generator_id()},
                       threads)
    data = os.path.join(work, "data")
    held_out = load_video_dataset(write_stills(data, "validation", 400))
    first_questions = [dict(r, messages=r["messages"][:2]) for r in (held_out[i] for i in range(len(held_out)))]
    model, processor = load(out)
    result = evaluate(model, processor, first_questions, video_root=data, batch_size=64)
    log("image-pretrained: held-out stills accuracy " + f"{result.accuracy:.3f} (" +
        ", ".join(f"{t} {a:.2f}" for t, a in sorted(result.accuracy_by_task.items())) + ")")
    return out, {"accuracy": result.accuracy, "by_task": result.accuracy_by_task}


def pretrain_video(work, settings, image_model, threads):
    """Stage 3: the image model as the VILA-style baseline at k = 1 (no temporal encoder), on the clips."""
    from storm_hf.miniature import build_initial_checkpoint, mini_config

    init = build_initial_checkpoint(os.path.join(work, "video-init"), mini_config("baseline", 1), seed=0,
                                    num_frames=NUM_FRAMES, weights_from=image_model)
    out = shared_stage(work, "video-pretrained", init, "train.jsonl", settings["video_steps"], BATCH,
                       {"steps": settings["video_steps"], "image_steps": settings["image_steps"],
                        "clips": settings["train_clips"], "generator": generator_id(),
                        "tasks": list(settings.get("tasks", TASK_SETS["mix"]))}, threads)
    evaluation = evaluate_run(out, os.path.join(work, "data"), os.path.join(work, "data", "validation.jsonl"),
                              strides=(1,))["s=1"]
    log(f"video-pretrained: validation accuracy {evaluation['accuracy']:.3f} (" +
        ", ".join(f"{t} {a:.2f}" for t, a in evaluation["by_task"].items()) + ")")
    return out, {"accuracy": evaluation["accuracy"], "by_task": evaluation["by_task"]}


# -------------------------------------------------------------------------------------------------
# One arm: build from the pretrained image model, train on clips, evaluate
# -------------------------------------------------------------------------------------------------

def build_arm(base, arm, reduction, seed, out, encoder=None):
    """The pretrained image model's weights in the arm's layout; the temporal encoder (if any) fresh, with the
    ``encoder`` settings (StormConfig fields: scan order, dt range, layers)."""
    from storm_hf.miniature import build_initial_checkpoint, mini_config

    overrides = {} if arm == "baseline" else dict(encoder or {})
    if arm == "storm-forward":  # the forward-only variant exists to stream, which time-major layers cannot
        overrides.pop("temporal_scan_order", None)
    return build_initial_checkpoint(out, mini_config(arm, **REDUCTIONS[reduction], **overrides), seed=seed,
                                    num_frames=NUM_FRAMES, weights_from=base)


def window_signal(run_dir, data_root, test_file):
    """The window-reversal drop of a trained run on the within-window test clips (see
    storm_hf.evaluation.temporal.window_order_signal): accuracy as given and with the frames reversed inside each
    window of k, per type, on at most WINDOW_SIGNAL_CLIPS clips of each."""
    from storm_hf.evaluation.scoring import _question_text
    from storm_hf.evaluation.temporal import window_order_signal
    from storm_hf.inference import load
    from storm_hf.training import load_video_dataset

    model, processor = load(run_dir)
    dataset = load_video_dataset(test_file)
    records = [dataset[i] for i in range(len(dataset))]
    by_task = {}
    for task in WINDOW_SIGNAL_TASKS:
        chosen = [r for r in records if r["task"] == task][:WINDOW_SIGNAL_CLIPS]
        if not chosen:
            continue
        pixels, questions = [], []
        for r in chosen:
            batch = processor.video_processor([os.path.join(data_root, r["video"])], num_frames=NUM_FRAMES,
                                              return_tensors="pt")
            pixels.append(batch["pixel_values_videos"][0])
            questions.append((_question_text(r), r["options"], r["answer"]))
        by_task[task] = window_order_signal(model, processor, pixels, questions)
    return by_task


def evaluate_run(run_dir, data_root, test_file, strides=(1, 2)):
    """Accuracy on ``test_file`` at each test-time sampling stride (each video decoded once)."""
    from storm_hf.inference import load
    from storm_hf.evaluation import evaluate_strides

    model, processor = load(run_dir)
    start = time.perf_counter()
    results = evaluate_strides(model, processor, test_file, strides, video_root=data_root, num_frames=NUM_FRAMES,
                               batch_size=32)
    seconds = time.perf_counter() - start
    return {f"s={s}": {"accuracy": r.accuracy, "by_task": r.accuracy_by_task, "visual_tokens": r.visual_tokens,
                       "seconds": seconds, "predictions": [(p["index"], p["prediction"]) for p in r.predictions]}
            for s, r in results.items()}


def run_job(job):
    """Train and evaluate one (arm, reduction, seed); runs in a worker thread, training in a subprocess."""
    work, base, arm, reduction, seed, steps, threads = (job[k] for k in
                                                        ("work", "base", "arm", "reduction", "seed", "steps", "threads"))
    batch, learning_rate = job.get("batch", BATCH), job.get("learning_rate", LEARNING_RATE)
    name = f"{arm}_{reduction.replace('=', '')}_seed{seed}" + job.get("suffix", "")
    run_dir = os.path.join(work, "runs", name)
    result_file = os.path.join(run_dir, "result.json")
    part_rates = ({"temporal_encoder": job["encoder_learning_rate"]}
                  if job.get("encoder_learning_rate") and arm != "baseline" else {})
    wanted = {"steps": steps, "batch": batch, "base_stamp": json.load(open(base + ".json")),
              "encoder": job.get("encoder") or {}, "part_learning_rates": part_rates}
    if os.path.exists(result_file) and {k: json.load(open(result_file)).get(k) for k in wanted} == wanted:
        return json.load(open(result_file))  # this run is done (an interrupted table resumes here)
    shutil.rmtree(run_dir, ignore_errors=True)
    init = build_arm(base, arm, reduction, seed, os.path.join(work, "runs", name + "-init"), job.get("encoder"))
    data = os.path.join(work, "data")
    start = time.perf_counter()
    text = run_train(training_config(init, os.path.join(data, "train.jsonl"), data, run_dir, steps, seed, batch=batch,
                                     freeze=["vision_tower"], learning_rate=learning_rate,
                                     part_learning_rates=part_rates),
                     os.path.join(work, "runs", name + ".json"), threads)
    train_seconds = time.perf_counter() - start
    torch.set_num_threads(threads)
    evaluation = evaluate_run(run_dir, data, os.path.join(data, "test.jsonl"))
    signal = window_signal(run_dir, data, os.path.join(data, "test.jsonl")) if job.get("window_signal") else {}
    result = {**wanted, "window_signal": signal, "arm": arm, "reduction": reduction, "seed": seed,
              "learning_rate": learning_rate, "train_seconds": train_seconds,
              "train_log": text.strip().splitlines()[-1], **evaluation}
    json.dump(result, open(result_file, "w"))
    shutil.rmtree(init, ignore_errors=True)
    log(f"{name}: trained {train_seconds:.0f} s; accuracy s=1 {evaluation['s=1']['accuracy']:.3f}, "
        f"s=2 {evaluation['s=2']['accuracy']:.3f}")
    return result


# -------------------------------------------------------------------------------------------------
# Prefill time, side by side
# -------------------------------------------------------------------------------------------------

@torch.inference_mode()
def prefill_times(run_dirs: dict, data_root, test_file, repeats=7, clips=8):
    """Median seconds of the LLM prefill (one forward over the prompt with the video's tokens in place) for
    each setting, interleaved so that load on the machine hits all settings alike."""
    from storm_hf.inference import load, set_sampling_stride
    from storm_hf.evaluation import encode_prompts
    from storm_hf.training import load_video_dataset

    dataset = load_video_dataset(test_file)
    records = [dataset[i] for i in range(clips)]
    prepared = {}
    for setting, (run_dir, s) in run_dirs.items():
        model, processor = load(run_dir)
        set_sampling_stride(model, processor, s)
        prompts, features = encode_prompts(model, processor, records, data_root, NUM_FRAMES)
        prepared[setting] = (model, prompts, features)
    times = {setting: [] for setting in prepared}

    def prefill(model, prompts, features):
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        for prompt, feature in zip(prompts, features):
            model(input_ids=torch.tensor([prompt]), logits_to_keep=1,
                  mm_encoder_outputs={"video": BaseModelOutputWithPooling(pooler_output=[feature])})

    for repeat in range(repeats + 1):
        for setting, args in prepared.items():
            start = time.perf_counter()
            prefill(*args)
            if repeat:  # the first round warms up
                times[setting].append((time.perf_counter() - start) / clips)
    return {setting: statistics.median(v) for setting, v in times.items()}


# -------------------------------------------------------------------------------------------------
# Table
# -------------------------------------------------------------------------------------------------

def summarise(results, prefill, tasks):
    from storm_hf.miniature.temporal_qa import TEMPORAL_TASKS

    rows = []
    groups = {}
    for r in results:
        for s in ("s=1", "s=2"):
            groups.setdefault((r["arm"], r["reduction"], s), []).append(r)
    for (arm, reduction, s), runs in groups.items():
        row = {"arm": arm, "reduction": reduction + ("" if s == "s=1" else ", s=2"), "seeds": len(runs),
               "visual_tokens": runs[0][s]["visual_tokens"],
               "prefill_ms": prefill.get(f"{arm} {reduction} {s}", float("nan")) * 1000}
        window = [t for t in WINDOW_SIGNAL_TASKS[:3] if t in tasks]
        for task in tasks + ["temporal", "window", "all"]:
            if task == "all":
                values = [run[s]["accuracy"] for run in runs]
            elif task == "temporal":
                values = [np.mean([run[s]["by_task"][t] for t in TEMPORAL_TASKS]) for run in runs]
            elif task == "window":
                values = [np.mean([run[s]["by_task"][t] for t in window]) if window else float("nan") for run in runs]
            else:
                values = [run[s]["by_task"][task] for run in runs]
            row[task] = (float(np.mean(values)), float(np.std(values)))
        # the accuracy lost on the three local within-window types when frames are reversed inside each window
        drops = [np.mean([run["window_signal"][t]["reversal_drop"] for t in window]) for run in runs
                 if s == "s=1" and window and run.get("window_signal")]
        row["reversal_drop"] = (float(np.mean(drops)), float(np.std(drops))) if drops else None
        rows.append(row)
    order = {a: i for i, a in enumerate(ARM_NAMES)}
    rows.sort(key=lambda r: (r["reduction"].split(",")[0], "s=2" in r["reduction"], order[r["arm"]]))
    return rows


def chance_row(test_file, tasks):
    """Expected accuracy of a uniform guess among each question's options, per task."""
    from storm_hf.miniature.temporal_qa import TEMPORAL_TASKS
    from storm_hf.training import load_video_dataset

    dataset = load_video_dataset(test_file)
    records = [dataset[i] for i in range(len(dataset))]
    per_task = {t: float(np.mean([1 / len(r["options"]) for r in records if r["task"] == t])) for t in tasks}
    per_task["temporal"] = float(np.mean([per_task[t] for t in TEMPORAL_TASKS]))
    window = [t for t in WINDOW_SIGNAL_TASKS[:3] if t in tasks]
    per_task["window"] = float(np.mean([per_task[t] for t in window])) if window else float("nan")
    per_task["all"] = float(np.mean([1 / len(r["options"]) for r in records]))
    return per_task


def markdown(rows, tasks, chance=None):
    head = ["arm", "reduction", "visual tokens", "prefill ms"] + tasks + ["temporal mean", "window mean", "all",
                                                                         "window-reversal drop"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    if chance:
        lines.append("| chance | | | | " + " | ".join(f"{chance[t]:.2f}" for t in tasks + ["temporal", "window", "all"])
                     + " | |")
    for r in rows:
        cells = [r["arm"], r["reduction"], str(r["visual_tokens"]), f"{r['prefill_ms']:.2f}"]
        for task in tasks + ["temporal", "window", "all"] + ["reversal_drop"]:
            if r.get(task) is None:
                cells.append("")
                continue
            mean, spread = r[task]
            cells.append(f"{mean:.2f}" + (f" ±{spread:.2f}" if r["seeds"] > 1 else ""))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 seed, k=1 and k=4 only, fewer steps and clips")
    parser.add_argument("--bundle", action="store_true", help="train the bundled model and copy it into the package")
    parser.add_argument("--work", default=None, help="working folder (default: /tmp/storm-temporal-qa[-quick])")
    parser.add_argument("--output", default=None, help="JSON results (default: WORK/results.json)")
    parser.add_argument("--workers", type=int, default=2, help="runs trained at once (default 2)")
    parser.add_argument("--steps", type=int, help="video training steps per run (overrides the mode's)")
    parser.add_argument("--base-only", action="store_true", help="stop after the data and the shared stages")
    parser.add_argument("--tasks", choices=tuple(TASK_SETS), default="all",
                        help="question types: the bundled model's mix, or all (with the within-window types)")
    parser.add_argument("--scan-order", choices=("raster", "time_major", "alternating"),
                        default=RECIPE["temporal_scan_order"],
                        help=f"temporal_scan_order of the STORM arms (default {RECIPE['temporal_scan_order']}; the "
                        "paper's and the config's is raster)")
    parser.add_argument("--temporal-layers", type=int, default=RECIPE["temporal_num_layers"],
                        help=f"temporal layers of the STORM arms (default {RECIPE['temporal_num_layers']})")
    parser.add_argument("--dt-min", type=float, default=None, help="temporal_dt_min of the STORM arms")
    parser.add_argument("--dt-max", type=float, default=None, help="temporal_dt_max of the STORM arms")
    parser.add_argument("--encoder-lr", type=float, default=ENCODER_LEARNING_RATE,
                        help=f"peak learning rate of the STORM arms' temporal encoder (default {ENCODER_LEARNING_RATE}; "
                        f"the rest trains at {LEARNING_RATE})")
    parser.add_argument("--arms", nargs="+", choices=ARM_NAMES, help="only these arms (default: the mode's)")
    parser.add_argument("--reductions", nargs="+", choices=tuple(REDUCTIONS), help="only these reductions")
    parser.add_argument("--seeds", nargs="+", type=int, help="only these seeds")
    args = parser.parse_args()
    settings = dict(QUICK if args.quick else FULL)
    settings["tasks"] = TASK_SETS[args.tasks]
    encoder = {name: value for name, value in (("temporal_scan_order", args.scan_order),
                                               ("temporal_num_layers", args.temporal_layers),
                                               ("temporal_dt_min", args.dt_min), ("temporal_dt_max", args.dt_max))
               if value is not None}
    if args.steps:
        settings["steps"] = BUNDLE["steps"] = args.steps
    for name in ("arms", "reductions", "seeds"):
        if getattr(args, name):
            settings[name] = tuple(getattr(args, name))
    work = args.work or ("/tmp/storm-temporal-qa" + ("-quick" if args.quick else "") +
                         ("" if args.tasks == "mix" else "-" + args.tasks))
    cores = os.cpu_count() or 1
    threads = max(1, cores // args.workers)
    started = time.perf_counter()
    write_data(os.path.join(work, "data"), settings)
    image_model, image_result = pretrain_images(work, settings, threads=cores)
    base, video_result = pretrain_video(work, settings, image_model, threads=cores)
    if args.base_only:
        return None
    if args.bundle:
        return bundle(work, base, args.workers, threads, encoder, args.encoder_lr)

    jobs = [{"work": work, "base": base, "arm": arm, "reduction": reduction, "seed": seed,
             "steps": settings["steps"], "threads": threads, "encoder": encoder, "encoder_learning_rate": args.encoder_lr,
             "window_signal": REDUCTIONS[reduction]["temporal_pool_k"] > 1}
            for seed in settings["seeds"] for reduction in settings["reductions"] for arm in settings["arms"]]
    with ThreadPoolExecutor(args.workers) as pool:
        results = list(pool.map(run_job, jobs))
    torch.set_num_threads(cores)
    data = os.path.join(work, "data")
    first_seed = settings["seeds"][0]
    settings_to_time = {f"{arm} {reduction} s={s}":
                        (os.path.join(work, "runs", f"{arm}_{reduction.replace('=', '')}_seed{first_seed}"), s)
                        for reduction in settings["reductions"] for arm in settings["arms"] for s in (1, 2)}
    prefill = prefill_times(settings_to_time, data, os.path.join(data, "test.jsonl"))
    tasks = list(settings["tasks"])
    rows = summarise(results, prefill, tasks)
    chance = chance_row(os.path.join(data, "test.jsonl"), tasks)
    table = markdown(rows, tasks, chance)
    total = time.perf_counter() - started
    output = args.output or os.path.join(work, "results.json")
    json.dump({"settings": {k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()}, "encoder": encoder,
               "command": " ".join(["python", "benchmarks/temporal_qa.py"] + sys.argv[1:]), "seconds": total,
               "image_pretrained": image_result, "video_pretrained": video_result,
               "rows": rows, "chance": chance, "runs": results, "prefill_seconds": prefill}, open(output, "w"),
              indent=1)
    print(table)
    log(f"total {total / 60:.1f} min; results in {output}")


def bundle(work, base, workers, threads, encoder=None, encoder_learning_rate=None):
    """Train the bundled STORM (bidirectional, k=4) with more steps than the table's runs, and beside it the
    baseline at k=4 with the same steps (the comparison at this longer budget); evaluate both on the test
    clips and copy the STORM checkpoint into the package (storm_hf.miniature.BUNDLED_MODEL)."""
    from storm_hf.miniature import BUNDLED_MODEL

    steps = BUNDLE["steps"]
    jobs = [{"work": work, "base": base, "arm": arm, "reduction": "k=4", "seed": 0, "steps": steps,
             "threads": threads, "suffix": f"_steps{steps}", "encoder": encoder, "window_signal": True,
             "encoder_learning_rate": encoder_learning_rate}
            for arm in ("storm", "baseline")]
    with ThreadPoolExecutor(workers) as pool:
        results = dict(zip(("storm", "baseline"), pool.map(run_job, jobs)))
    for arm, result in results.items():
        for s in ("s=1", "s=2"):
            log(f"bundle, {arm} k=4 {steps} steps, test, {s}: accuracy {result[s]['accuracy']:.3f}; " +
                ", ".join(f"{t} {a:.2f}" for t, a in result[s]["by_task"].items()))
    run_dir = os.path.join(work, "runs", f"storm_k4_seed0_steps{steps}")
    evaluation = {arm: {s: {k: v for k, v in r[s].items() if k != "predictions"} for s in ("s=1", "s=2")}
                  for arm, r in results.items()}
    # Assembled beside the package folder, then swapped in: an interrupted copy never leaves a half-written
    # bundled model, and only the files this script writes are replaced.
    staging = BUNDLED_MODEL + ".new"
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    keep = ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
            "processor_config.json", "chat_template.jinja", "special_tokens_map.json")
    for name in os.listdir(run_dir):
        if name in keep:
            shutil.copy(os.path.join(run_dir, name), os.path.join(staging, name))
    config_path = os.path.join(staging, "config.json")
    config = json.load(open(config_path))
    config.pop("auto_map", None)  # the package's own classes load it; no remote-code copies are bundled
    json.dump(config, open(config_path, "w"), indent=2)
    json.dump({"command": "python benchmarks/temporal_qa.py --bundle", "steps": steps,
               "train_seconds": results["storm"]["train_seconds"], "train_log": results["storm"]["train_log"],
               "test_accuracy": evaluation}, open(os.path.join(staging, "training_record.json"), "w"), indent=1)
    os.makedirs(BUNDLED_MODEL, exist_ok=True)
    for name in os.listdir(staging):
        os.replace(os.path.join(staging, name), os.path.join(BUNDLED_MODEL, name))
    os.rmdir(staging)
    log(f"bundle: copied to {BUNDLED_MODEL}: {', '.join(sorted(os.listdir(BUNDLED_MODEL)))}")


if __name__ == "__main__":
    main()
