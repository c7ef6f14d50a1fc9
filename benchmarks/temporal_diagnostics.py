"""Does a checkpoint's temporal encoder carry time through pooling? Cross-frame reach and the window-order signal.

    python benchmarks/temporal_diagnostics.py [--model PATH_OR_HUB_ID] [--clips 40] [--seed 11]

For the model (the bundled one by default) the script prints:

* the cross-frame reach of every temporal layer and direction (`storm_hf.evaluation.temporal.cross_frame_reach`):
  the norm of d(mixer output at frame u) / d(layer input at frame u + d) for d = -4 .. 4, on held-out clips;
* per within-window question type (`storm_hf.miniature.temporal_qa`: the three local ones and order_in_window),
  the option accuracy on held-out clips as they are and with the frames reversed inside each window of k, the
  drop, and how much the reversal changes the pooled tokens (`window_order_signal`). A model without a temporal
  encoder sees the same pooled tokens both ways: its drop is 0 by construction.
"""

import argparse
import time

import torch

from storm_hf.evaluation.temporal import cross_frame_reach, window_order_signal
from storm_hf.inference import load
from storm_hf.miniature.temporal_qa import WINDOW_TASKS, clip_rng, make_clip

TASKS = (*WINDOW_TASKS, "order_in_window")


def clips_of(processor, task, count, seed):
    pixels, questions = [], []
    for i in range(count):
        clip = make_clip(clip_rng("test", seed, i), task)
        batch = processor.video_processor([clip.frames], do_sample_frames=False, return_tensors="pt")
        pixels.append(batch["pixel_values_videos"][0])
        questions.append((clip.question, clip.options, clip.answer))
    return pixels, questions


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="checkpoint folder or Hub id (default: the bundled model)")
    parser.add_argument("--clips", type=int, default=40, help="held-out clips per question type (default 40)")
    parser.add_argument("--seed", type=int, default=11, help="which held-out clips (test split seed)")
    parser.add_argument("--max-distance", type=int, default=4)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    model, processor = load(args.model)
    c = model.config
    print(f"model: {args.model or 'the bundled model'}; temporal layers {c.temporal_num_layers}, "
          f"bidirectional {c.temporal_bidirectional}, scan order {c.temporal_scan_order}, k={c.temporal_pool_k}")
    start = time.perf_counter()
    pixels, _ = clips_of(processor, TASKS[0], 3, args.seed)
    reach = {}
    for clip in pixels:
        for key, values in cross_frame_reach(model, clip, args.max_distance, probes=2).items():
            reach.setdefault(key, []).append(values)
    distances = range(-args.max_distance, args.max_distance + 1)
    print("\ncross-frame reach (mean over 3 clips): |d out[u] / d in[u + d]|")
    print(f"{'layer':>5s} {'direction':>9s} " + " ".join(f"{d:>+8d}" for d in distances))
    for (layer, direction), runs in sorted(reach.items()):
        mean = torch.tensor(runs).mean(0)
        print(f"{layer:5d} {direction:>9s} " + " ".join(f"{v:8.2e}" for v in mean.tolist()))
    print(f"\nwindow-order signal ({args.clips} held-out clips per type, test split seed {args.seed}):")
    print(f"{'question type':16s} {'accuracy':>8s} {'reversed':>8s} {'drop':>6s} {'pooled change':>13s}")
    for task in TASKS:
        pixels, questions = clips_of(processor, task, args.clips, args.seed)
        signal = window_order_signal(model, processor, pixels, questions)
        print(f"{task:16s} {signal['accuracy']:8.3f} {signal['accuracy_window_reversed']:8.3f} "
              f"{signal['reversal_drop']:+6.3f} {signal['pooled_change']:13.4f}")
    print(f"\n({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
