"""The paper's claim in miniature: temporal pooling with and without a temporal encoder, on questions that
need time (storm_hf.temporal_qa), trained from scratch on this CPU through `storm-hf train`.

    python benchmarks/temporal_qa.py            # the full table: 3 arms x 3 reductions x 3 seeds (see --help)
    python benchmarks/temporal_qa.py --quick    # a smaller table: 1 seed, fewer steps
    python benchmarks/temporal_qa.py --bundle   # train the bundled model (storm_hf.miniature.BUNDLED_MODEL)

Recipe, the same for every arm:
1. Data: benchmark clips (train / validation / test seeds are disjoint) written as H.264 files, and stills
   (single frames with several questions each: shape, colour, left/right, top/bottom) written as PNG files.
2. Image pretraining (shared by all arms, like the paper's pretrained SigLIP and Qwen2): a model without
   temporal encoder trained on the stills (one-frame videos), all parameters.
3. Video training per arm and seed: the pretrained image encoder, projector and LLM, a freshly initialised
   temporal encoder (none for the baseline), the arm's token reduction; `storm-hf train` (stage sft, image
   encoder frozen) on the training clips.
4. Evaluation on the test clips by option log-likelihood (storm_hf.evaluation), at the trained setting and
   with test-time temporal sampling s = 2; accuracy per question type.
5. LLM prefill time per setting, measured side by side in this process (interleaved, medians).

Arms: baseline (no temporal encoder, VILA-style), STORM (bidirectional), STORM forward-only; reductions:
none (k=1), temporal pooling k=4, spatial pooling p=2 (the same 25% token budget as k=4).
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

FULL = dict(train_clips=3072, test_clips=1050, validation_clips=350, stills=8000, base_steps=2000, steps=400,
            seeds=(0, 1, 2), arms=ARM_NAMES, reductions=tuple(REDUCTIONS))
QUICK = dict(train_clips=1024, test_clips=350, validation_clips=70, stills=3000, base_steps=600, steps=150,
             seeds=(0,), arms=ARM_NAMES, reductions=("k=1", "k=4"))
BUNDLE = dict(steps=1600)

NUM_FRAMES = 16
BATCH = 16
LEARNING_RATE = 2e-3


def log(*args):
    print(time.strftime("%H:%M:%S"), *args, flush=True)


# -------------------------------------------------------------------------------------------------
# Data and image pretraining
# -------------------------------------------------------------------------------------------------

def write_data(root, settings):
    """Clips and stills, each split written once (kept between runs of the same settings)."""
    from storm_hf.temporal_qa import write_split, write_stills

    os.makedirs(root, exist_ok=True)
    jobs = [("train", settings["train_clips"]), ("test", settings["test_clips"]),
            ("validation", settings["validation_clips"])]
    done = os.path.join(root, "done.json")
    wanted = {"clips": jobs, "stills": settings["stills"]}
    if os.path.exists(done) and json.load(open(done)) == json.loads(json.dumps(wanted)):
        log(f"data: reusing {root}")
        return
    start = time.perf_counter()
    with ThreadPoolExecutor(2) as pool:  # the encoder releases the GIL
        futures = [pool.submit(write_split, root, split, count) for split, count in jobs]
        write_stills(root, "train", settings["stills"])
        for future in futures:
            future.result()
    json.dump(wanted, open(done, "w"))
    log(f"data: {sum(c for _, c in jobs)} clips and {settings['stills']} stills in {time.perf_counter() - start:.0f} s")


def training_config(model_dir, train_file, data_root, output_dir, steps, seed, batch=BATCH, freeze=None,
                    threads=1):
    return {
        "model": model_dir, "train_file": train_file, "video_root": data_root, "num_frames": NUM_FRAMES,
        "stage": "sft", "freeze": freeze or [], "resume": False,
        "training": {
            "output_dir": output_dir, "max_steps": steps, "per_device_train_batch_size": batch,
            "learning_rate": LEARNING_RATE, "warmup_steps": max(1, steps // 20), "lr_scheduler_type": "cosine",
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
    result = subprocess.run([sys.executable, "-m", "storm_hf.cli", "train", path], env=env, capture_output=True,
                            text=True)
    if result.returncode:
        raise RuntimeError(f"storm-hf train {path} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result.stdout


def pretrain_images(work, settings, threads):
    from storm_hf.miniature import build_initial_checkpoint, mini_config

    out = os.path.join(work, "image-pretrained")
    stamp = os.path.join(work, "image-pretrained.json")
    wanted = {"steps": settings["base_steps"], "stills": settings["stills"]}
    if os.path.exists(os.path.join(out, "model.safetensors")) and os.path.exists(stamp) and \
            json.load(open(stamp)) == wanted:
        log(f"image pretraining: reusing {out}")
        return out
    init = build_initial_checkpoint(os.path.join(work, "image-init"), mini_config("baseline", 1, 1), seed=0,
                                    num_frames=NUM_FRAMES)
    start = time.perf_counter()
    config = training_config(init, os.path.join(work, "data", "stills-train.jsonl"), os.path.join(work, "data"),
                             out, settings["base_steps"], seed=0, batch=2 * BATCH)
    text = run_train(config, os.path.join(work, "image-pretrain.json"), threads)
    log(f"image pretraining: {settings['base_steps']} steps in {time.perf_counter() - start:.0f} s; "
        f"{text.strip().splitlines()[-1][:200]}")
    json.dump(wanted, open(stamp, "w"))
    return out


# -------------------------------------------------------------------------------------------------
# One arm: build from the pretrained image model, train on clips, evaluate
# -------------------------------------------------------------------------------------------------

def build_arm(base, arm, reduction, seed, out):
    """The pretrained image model's weights in the arm's layout; the temporal encoder (if any) fresh."""
    from storm_hf.miniature import build_initial_checkpoint, mini_config

    return build_initial_checkpoint(out, mini_config(arm, **REDUCTIONS[reduction]), seed=seed, num_frames=NUM_FRAMES,
                                    weights_from=base)


def evaluate_run(run_dir, data_root, test_file, strides=(1, 2)):
    from storm_hf.demo import load, set_sampling_stride
    from storm_hf.evaluation import evaluate

    model, processor = load(run_dir)
    out = {}
    for s in strides:
        set_sampling_stride(model, processor, s)
        start = time.perf_counter()
        result = evaluate(model, processor, test_file, video_root=data_root, num_frames=NUM_FRAMES, batch_size=32)
        out[f"s={s}"] = {"accuracy": result.accuracy, "by_task": result.accuracy_by_task,
                         "visual_tokens": result.visual_tokens, "seconds": time.perf_counter() - start,
                         "predictions": [(p["index"], p["prediction"]) for p in result.predictions]}
    return out


def run_job(job):
    """Train and evaluate one (arm, reduction, seed); runs in a worker thread, training in a subprocess."""
    work, base, arm, reduction, seed, steps, threads = (job[k] for k in
                                                        ("work", "base", "arm", "reduction", "seed", "steps", "threads"))
    name = f"{arm}_{reduction.replace('=', '')}_seed{seed}"
    run_dir = os.path.join(work, "runs", name)
    result_file = os.path.join(run_dir, "result.json")
    if os.path.exists(result_file) and json.load(open(result_file)).get("steps") == steps:
        return json.load(open(result_file))  # this run is done (an interrupted table resumes here)
    shutil.rmtree(run_dir, ignore_errors=True)
    init = build_arm(base, arm, reduction, seed, os.path.join(work, "runs", name + "-init"))
    data = os.path.join(work, "data")
    start = time.perf_counter()
    text = run_train(training_config(init, os.path.join(data, "train.jsonl"), data, run_dir, steps, seed,
                                     freeze=["vision_tower"]), os.path.join(work, "runs", name + ".json"), threads)
    train_seconds = time.perf_counter() - start
    torch.set_num_threads(threads)
    evaluation = evaluate_run(run_dir, data, os.path.join(data, "test.jsonl"))
    result = {"arm": arm, "reduction": reduction, "seed": seed, "steps": steps, "train_seconds": train_seconds,
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
    from storm_hf.demo import load, set_sampling_stride
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
    from storm_hf.temporal_qa import TEMPORAL_TASKS

    rows = []
    groups = {}
    for r in results:
        for s in ("s=1", "s=2"):
            groups.setdefault((r["arm"], r["reduction"], s), []).append(r)
    for (arm, reduction, s), runs in groups.items():
        row = {"arm": arm, "reduction": reduction + ("" if s == "s=1" else ", s=2"), "seeds": len(runs),
               "visual_tokens": runs[0][s]["visual_tokens"],
               "prefill_ms": prefill.get(f"{arm} {reduction} {s}", float("nan")) * 1000}
        for task in tasks + ["temporal", "all"]:
            if task == "all":
                values = [run[s]["accuracy"] for run in runs]
            elif task == "temporal":
                values = [np.mean([run[s]["by_task"][t] for t in TEMPORAL_TASKS]) for run in runs]
            else:
                values = [run[s]["by_task"][task] for run in runs]
            row[task] = (float(np.mean(values)), float(np.std(values)))
        rows.append(row)
    order = {a: i for i, a in enumerate(ARM_NAMES)}
    rows.sort(key=lambda r: (r["reduction"].split(",")[0], "s=2" in r["reduction"], order[r["arm"]]))
    return rows


def markdown(rows, tasks):
    head = ["arm", "reduction", "visual tokens", "prefill ms"] + tasks + ["temporal mean", "all"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["arm"], r["reduction"], str(r["visual_tokens"]), f"{r['prefill_ms']:.2f}"]
        for task in tasks + ["temporal", "all"]:
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
    parser.add_argument("--base-steps", type=int, help="image pretraining steps (overrides the mode's)")
    parser.add_argument("--base-only", action="store_true", help="stop after the data and the image pretraining")
    args = parser.parse_args()
    settings = dict(QUICK if args.quick else FULL)
    if args.steps:
        settings["steps"] = BUNDLE["steps"] = args.steps
    if args.base_steps:
        settings["base_steps"] = args.base_steps
    work = args.work or ("/tmp/storm-temporal-qa" + ("-quick" if args.quick else ""))
    cores = os.cpu_count() or 1
    threads = max(1, cores // args.workers)
    started = time.perf_counter()
    write_data(os.path.join(work, "data"), settings)
    base = pretrain_images(work, settings, threads=cores)
    if args.base_only:
        return None
    if args.bundle:
        return bundle(work, base, cores)

    jobs = [{"work": work, "base": base, "arm": arm, "reduction": reduction, "seed": seed,
             "steps": settings["steps"], "threads": threads}
            for seed in settings["seeds"] for reduction in settings["reductions"] for arm in settings["arms"]]
    with ThreadPoolExecutor(args.workers) as pool:
        results = list(pool.map(run_job, jobs))
    torch.set_num_threads(cores)
    data = os.path.join(work, "data")
    settings_to_time = {f"{arm} {reduction} s={s}": (os.path.join(work, "runs", f"{arm}_{reduction.replace('=', '')}_seed0"), s)
                        for reduction in settings["reductions"] for arm in settings["arms"] for s in (1, 2)}
    prefill = prefill_times(settings_to_time, data, os.path.join(data, "test.jsonl"))
    from storm_hf.temporal_qa import TASKS

    rows = summarise(results, prefill, list(TASKS))
    table = markdown(rows, list(TASKS))
    total = time.perf_counter() - started
    output = args.output or os.path.join(work, "results.json")
    json.dump({"settings": {k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()},
               "command": " ".join(["python", "benchmarks/temporal_qa.py"] + sys.argv[1:]), "seconds": total,
               "rows": rows, "runs": results, "prefill_seconds": prefill}, open(output, "w"), indent=1)
    print(table)
    log(f"total {total / 60:.1f} min; results in {output}")


def bundle(work, base, threads):
    """Train the bundled STORM (bidirectional, k=4) with more steps, check it on the validation clips and copy
    the checkpoint into the package (storm_hf.miniature.BUNDLED_MODEL)."""
    from storm_hf.miniature import BUNDLED_MODEL

    steps = BUNDLE["steps"]
    run_dir = os.path.join(work, "bundle")
    init = build_arm(base, "storm", "k=4", 0, os.path.join(work, "bundle-init"))
    data = os.path.join(work, "data")
    start = time.perf_counter()
    text = run_train(training_config(init, os.path.join(data, "train.jsonl"), data, run_dir, steps, 0,
                                     freeze=["vision_tower"]), os.path.join(work, "bundle.json"), threads)
    log(f"bundle: {steps} steps in {time.perf_counter() - start:.0f} s; {text.strip().splitlines()[-1][:200]}")
    evaluation = evaluate_run(run_dir, data, os.path.join(data, "validation.jsonl"))
    for s, result in evaluation.items():
        log(f"bundle, validation, {s}: accuracy {result['accuracy']:.3f}; " +
            ", ".join(f"{t} {a:.2f}" for t, a in result["by_task"].items()))
    shutil.rmtree(BUNDLED_MODEL, ignore_errors=True)
    os.makedirs(BUNDLED_MODEL)
    keep = ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
            "processor_config.json", "chat_template.jinja", "special_tokens_map.json")
    for name in os.listdir(run_dir):
        if name in keep:
            shutil.copy(os.path.join(run_dir, name), os.path.join(BUNDLED_MODEL, name))
    config_path = os.path.join(BUNDLED_MODEL, "config.json")
    config = json.load(open(config_path))
    config.pop("auto_map", None)  # the package's own classes load it; no remote-code copies are bundled
    json.dump(config, open(config_path, "w"), indent=2)
    log(f"bundle: copied to {BUNDLED_MODEL}: {', '.join(sorted(os.listdir(BUNDLED_MODEL)))}")


if __name__ == "__main__":
    main()
