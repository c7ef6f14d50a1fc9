"""What the web demo's page costs over answering directly, side by side on the bundled model:

    pip install -e ".[demo]"
    python benchmarks/web_demo.py [--repeats 5] [--long-seconds 120]

Arms, interleaved over the repeats, each on the same file (the bundled `direction.mp4` example clip, and a
generated `--long-seconds` video at 8 fps sampled at 4 frames a second within a 64-frame budget):

* `ask`: `storm_hf.inference.ask` on the file (decode, model, 64 new tokens at most), as `storm-hf demo` runs it;
* `page`: every update of `web_demo.answer_updates` for the same request (worker thread, queue, frame strip
  thumbnails, tables), and Gradio's own postprocessing of each update's outputs (what the server does
  before it sends an update: for the frame strip, a WebP file per frame in Gradio's cache).

Printed: median times, the page's overhead as a ratio, when the answer and the frame strip first show, how
many updates a request sends, and what sending the strip with every update (the page before it sent it once)
would cost.
"""

import argparse
import os
import statistics
import tempfile
import threading
import time

import numpy as np


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--long-seconds", type=int, default=120)
    args = parser.parse_args()

    import gradio as gr

    from storm_hf.apps import web_demo
    from storm_hf.inference import ask, load
    from storm_hf.miniature.temporal_qa import clip_rng, make_clip, write_video
    from storm_hf.apps.web_demo import Request, answer_updates, example_clips

    model, processor = load()
    lock = threading.Lock()
    scratch = tempfile.TemporaryDirectory(prefix="storm-web-bench-")  # Gradio's cache and the long video
    cache = os.path.join(scratch.name, "gradio")
    outputs = [gr.Markdown(), gr.Textbox(), gr.Gallery(), gr.Markdown(), gr.Markdown()]
    for block in outputs:
        block.GRADIO_CACHE = cache

    def postprocess(values):
        for block, value in zip(outputs, values):
            if not isinstance(value, type(gr.skip())):
                block.postprocess(value)

    example = example_clips()[0]
    frames = make_clip(clip_rng("test", 5, 0), "direction").frames
    frames = np.concatenate([frames] * (args.long_seconds * 8 // len(frames)))
    long_video = str(write_video(os.path.join(scratch.name, "long.mp4"), frames, fps=8, pix_fmt="yuv420p",
                                 options={"g": "16"}))
    cases = {
        "example clip, 16 frames": (Request(example["video"], example["question"]), {}),
        f"{args.long_seconds} s video, 4 fps (64-frame budget)": (
            Request(long_video, example["question"], "fps", fps=4.0), {"fps": 4.0, "max_frames": 64}),
    }

    for name, (request, sampling) in cases.items():
        times = {"ask": [], "updates": [], "page": []}
        first_answer, first_strip, updates, strip_sends, strip_cost, later = [], [], [], [], [], []
        for repeat in range(args.repeats + 1):  # the first is a warm-up
            arms = ["ask", "updates", "page"]
            arms = arms[repeat % 3:] + arms[:repeat % 3]
            for arm in arms:
                start = time.perf_counter()
                if arm == "ask":
                    ask(model, processor, request.video, request.question, max_new_tokens=64, **sampling)
                elif arm == "updates":
                    list(answer_updates(model, processor, request, lock, 64, 64))
                else:  # as the server runs it: each update postprocessed as it comes
                    values, seen_answer, seen_strip = [], None, None
                    for value in web_demo._page_outputs(answer_updates(model, processor, request, lock, 64, 64),
                                                        gr.skip()):
                        postprocess(value)
                        values.append(value)
                        now = time.perf_counter() - start
                        if seen_answer is None and value[1]:
                            seen_answer = now
                        if seen_strip is None and isinstance(value[2], list) and value[2]:
                            seen_strip = now
                elapsed = time.perf_counter() - start
                if not repeat:
                    continue
                times[arm].append(elapsed)
                if arm == "page":
                    first_answer.append(seen_answer)
                    first_strip.append(seen_strip)
                    updates.append(len(values))
                    sent = [i for i, v in enumerate(values) if isinstance(v[2], list) and v[2]]
                    strip_sends.append(len(sent))
                    later.append(len(values) - 1 - sent[0])
                    t0 = time.perf_counter()  # once more, outside the timed request: one strip's cost
                    outputs[2].postprocess(values[sent[0]][2])
                    strip_cost.append(time.perf_counter() - t0)
        med = {arm: statistics.median(values) for arm, values in times.items()}
        strip_ms = statistics.median(strip_cost) * 1000
        after_strip = statistics.median(later)
        print(f"\n{name} ({args.repeats} repeats, medians)")
        print(f"  ask():                 {med['ask'] * 1000:8.1f} ms")
        print(f"  answer_updates alone:  {med['updates'] * 1000:8.1f} ms  ({med['updates'] / med['ask']:.2f}x ask)")
        print(f"  page, all updates:     {med['page'] * 1000:8.1f} ms  ({med['page'] / med['ask']:.2f}x ask)")
        print(f"  strip shown after      {statistics.median(first_strip) * 1000:8.1f} ms")
        print(f"  first answer text at   {statistics.median(first_answer) * 1000:8.1f} ms")
        print(f"  updates per request:   {statistics.median(updates):8.0f}  (strip sent in {max(strip_sends)})")
        print(f"  one strip's Gradio postprocess: {strip_ms:.1f} ms; sent with every update it would add about "
              f"{strip_ms * after_strip:.0f} ms per request")

    print(f"\n(Gradio wrote {sum(len(files) for _, _, files in os.walk(cache))} files to its cache, now removed)")
    scratch.cleanup()


if __name__ == "__main__":
    main()
