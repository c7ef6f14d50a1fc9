"""The fast probe: can a temporal encoder carry order through k = 4 pooling, without the LLM in the way?

    python benchmarks/temporal_probe.py [--quick] [--train 3000] [--test 600] [--steps 500] [--seeds 0]

The bundled model's image encoder and projector (frozen) turn generated clips of the miniature benchmark
(`storm_hf.miniature.temporal_qa`, frames given as arrays, no video coding) into projector tokens. Per arm, a
fresh temporal encoder (the model's own `StormTemporalEncoder`, initialised as the model initialises it; none for
the baseline), the model's token reduction at k, and a small classifier (a per-token LayerNorm + Linear + GELU,
then one Linear over all pooled tokens) are trained together to name the colour that comes first, on the four
within-window question types. Every clip's event lies inside one aligned window of 4 frames, so the baseline's
pooled window is the same for both orders: at k = 4 it can only guess between the two colours shown (0.5).

Arms: the baseline at k = 1 (order visible) and k = 4; STORM at k = 4 with the paper's raster scan, the
time-major scan, one layer of each ("alternating"), and the forward-only raster encoder. Accuracy on the test
clips, mean ± std over --seeds. Figures in benchmarks/RESULTS.md.

    python benchmarks/temporal_probe.py --frozen-from RUN_DIR

asks instead whether a trained checkpoint's own temporal encoder wrote the order into its pooled tokens: its image
encoder, projector, temporal encoder and reduction, all frozen, and only the classifier trained; beside it the
same without the temporal encoder (the projector tokens pooled directly). If the classifier reads the order and
the checkpoint's LLM does not answer from it, the LLM stage is where the order is lost.
"""

import argparse
import statistics
import time

import torch
import torch.nn as nn

from storm_hf import StormForConditionalGeneration
from storm_hf.inference import load
from storm_hf.miniature.temporal_qa import COLOURS, WINDOW_TASKS, clip_rng, make_clip
from storm_hf.modeling_storm import reduce_visual_tokens

TASKS = (*WINDOW_TASKS, "order_in_window")
# name: (k, temporal-encoder settings; None: no encoder)
ARMS = {
    "baseline k=1": (1, None),
    "baseline k=4": (4, None),
    "STORM raster": (4, {"temporal_num_layers": 1, "temporal_bidirectional": True, "temporal_scan_order": "raster"}),
    "STORM time-major": (4, {"temporal_num_layers": 1, "temporal_bidirectional": True,
                             "temporal_scan_order": "time_major"}),
    "STORM alternating x2": (4, {"temporal_num_layers": 2, "temporal_bidirectional": True,
                                 "temporal_scan_order": "alternating"}),
    "forward-only raster": (4, {"temporal_num_layers": 1, "temporal_bidirectional": False,
                                "temporal_scan_order": "raster"}),
}


@torch.no_grad()
def projector_tokens(model, processor, task, split, count, batch=64):
    """(clips, frames, tokens, dim) projector tokens of ``count`` generated clips, and the answer colours' indices."""
    colours = list(COLOURS)
    tokens, labels = [], []
    for start in range(0, count, batch):
        clips = [make_clip(clip_rng(split, 0, i), task) for i in range(start, min(start + batch, count))]
        pixels = processor.video_processor([c.frames for c in clips], do_sample_frames=False,
                                           return_tensors="pt")["pixel_values_videos"]  # (b, T, 3, H, W)
        b, frames = pixels.shape[:2]
        parts = model.model
        out = parts.projector(parts.vision_patch_features(pixels.flatten(0, 1)))  # (b * T, N, dim)
        tokens.append(out.view(b, frames, *out.shape[1:]))
        labels += [colours.index(c.answer) for c in clips]
    return torch.cat(tokens), torch.tensor(labels)


class Probe(nn.Module):
    def __init__(self, config, k, settings, frames, tokens, dim, seed):
        super().__init__()
        torch.manual_seed(seed)
        self.k, self.grid = k, config.grid_size
        self.encoder = None
        if settings is not None:  # a fresh encoder, initialised as the model initialises it
            fresh = config.to_dict()
            fresh.update(settings)
            self.encoder = StormForConditionalGeneration(type(config).from_dict(fresh)).model.temporal_encoder
        pooled_frames = -(-frames // k)
        self.token_head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 64), nn.GELU())
        self.classifier = nn.Linear(pooled_frames * tokens * 64, len(COLOURS))

    def forward(self, x):  # (batch, frames, tokens, dim)
        b, frames, tokens, dim = x.shape
        if self.encoder is not None:
            x = self.encoder(x.reshape(b, frames * tokens, dim), tokens).view(b, frames, tokens, dim)
        pooled = reduce_visual_tokens(x, self.grid, self.k, 1, 1)  # (batch, frames / k, tokens, dim)
        return self.classifier(self.token_head(pooled).flatten(1))


def run_arm(config, k, settings, train, test, steps, batch, lr, seed):
    (x, y), (x_test, y_test) = train, test
    probe = Probe(config, k, settings, *x.shape[1:], seed)
    optimizer = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=0.01)
    generator = torch.Generator().manual_seed(seed)
    probe.train()
    for _ in range(steps):
        rows = torch.randint(0, len(x), (batch,), generator=generator)
        loss = nn.functional.cross_entropy(probe(x[rows]), y[rows])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    probe.eval()
    with torch.no_grad():
        predictions = torch.cat([probe(x_test[i : i + 256]).argmax(-1) for i in range(0, len(x_test), 256)])
    return float((predictions == y_test).float().mean())


@torch.no_grad()
def frozen_features(model, tokens, with_encoder):
    """The checkpoint's pooled tokens (clips, frames / k, tokens, dim) of projector ``tokens``, with or without its
    own temporal encoder."""
    inner, out = model.model, []
    for start in range(0, len(tokens), 64):
        group = tokens[start : start + 64]
        if with_encoder:
            group = torch.stack(inner.encode_in_time(list(group)))
        out.append(inner.reduce_tokens(group))
    return torch.cat(out)


def run_frozen(args):
    """--frozen-from: train only the classifier on a checkpoint's frozen pooled tokens, with and without its
    temporal encoder."""
    model, processor = load(args.frozen_from)
    model.requires_grad_(False)
    print(f"checkpoint {args.frozen_from}: k={model.config.temporal_pool_k}, scan order "
          f"{model.config.temporal_scan_order}, {model.config.temporal_num_layers} temporal layers; "
          f"{args.train} / {args.test} clips, {args.steps} steps (classifier only)")
    print(f"{'question type':16s} {'its encoder':>12s} {'no encoder':>12s}")
    results = {}
    for task in args.tasks:
        train, test = (projector_tokens(model, processor, task, split, n)
                       for split, n in (("train", args.train), ("test", args.test)))
        cells = []
        for with_encoder in (True, False):
            pooled = [(frozen_features(model, x, with_encoder), y) for x, y in (train, test)]
            # k = 1 on already pooled tokens: the probe's classifier alone
            score = run_arm(model.config, 1, None, *pooled, args.steps, args.batch, args.lr, args.seeds[0])
            results[(task, with_encoder)] = score
            cells.append(f"{score:.3f}")
        print(f"{task:16s} {cells[0]:>12s} {cells[1]:>12s}", flush=True)
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smoke run (seconds): 64 / 32 clips, 10 steps, one type")
    parser.add_argument("--train", type=int, default=3000, help="training clips per question type")
    parser.add_argument("--test", type=int, default=600, help="test clips per question type")
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--frozen-from", help="a trained checkpoint: probe its own frozen encoder (see above)")
    args = parser.parse_args(argv)
    if args.quick:
        args.train, args.test, args.steps, args.tasks = 64, 32, 10, args.tasks[:1]
    torch.manual_seed(0)
    if args.frozen_from:
        return run_frozen(args)
    model, processor = load()  # the bundled model: its image encoder and projector, frozen
    model.requires_grad_(False)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.train} training / {args.test} test "
          f"clips per type, {args.steps} steps of {args.batch}, lr {args.lr}, seeds {args.seeds}")
    print(f"{'question type':16s} " + " ".join(f"{arm:>22s}" for arm in args.arms))
    results = {}
    for task in args.tasks:
        start = time.perf_counter()
        train = projector_tokens(model, processor, task, "train", args.train)
        test = projector_tokens(model, processor, task, "test", args.test)
        cells = []
        for arm in args.arms:
            k, settings = ARMS[arm]
            scores = [run_arm(model.config, k, settings, train, test, args.steps, args.batch, args.lr, seed)
                      for seed in args.seeds]
            results[(task, arm)] = scores
            spread = f" ± {statistics.stdev(scores):.3f}" if len(scores) > 1 else ""
            cells.append(f"{statistics.mean(scores):.3f}{spread}")
        print(f"{task:16s} " + " ".join(f"{cell:>22s}" for cell in cells) +
              f"   ({time.perf_counter() - start:.0f} s)", flush=True)
    return results


if __name__ == "__main__":
    main()
