# Copyright 2026 The storm_hf authors. Licensed under the Apache License, Version 2.0.
"""A procedural, seeded video-QA benchmark whose answers need time, in miniature.

Short clips (16 frames of 48 x 48 px by default) of coloured shapes on a noisy background, each with one
question from a closed answer set. Question types:

* ``direction``: which way does the {colour} {shape} move (left, right, up, down)?
* ``first_appeared``: which appears first, the {a} or the {b}? (the colour of the first)
* ``flash_count``: how many times does the {colour} {shape} flash (one, two, three)?
* ``stop_or_reverse``: does the {colour} {shape} keep moving, stop or reverse (continue, stop, reverse)?
* ``order_in_window``: which flashes first, the {a} or the {b}? Both flash for one frame each, one after the
  other, inside the same aligned window of `WINDOW` (4) frames: averaging each window of frames before the
  LLM (temporal pooling k = 4 without a temporal encoder) gives the same pooled frame for both orders, so
  only a model that mixes information across frames before pooling can answer.
* Within-window questions, each with its whole event inside one aligned window of `WINDOW` frames, so that
  the window's average is the same for both orders (and nothing is shown outside the window); unlike
  ``order_in_window`` the time information is local in space (one place), or lasts two frames:

  * ``colour_change``: which colour appears first on the {shape}, {a} or {b}? One object shows {a} for two
    frames, then {b} for two frames, at one place.
  * ``flash_colours``: which colour flashes first on the {shape}, {a} or {b}? One object flashes twice, one frame
    in each colour, at one place.
  * ``pair_in_window``: which appears first, the {a} or the {b}? Two objects at different places, two frames
    each, one after the other.

  They are not in `TASKS` (the mix the bundled model was trained on) but in `WINDOW_TASKS`; `ALL_TASKS` is both.
* ``colour`` and ``shape`` (static controls): what colour is the {shape}? / what shape is the {colour} one?
  One frame answers them.

Every clip has distractor shapes (static or drifting) and pixel noise, so no single pixel gives the answer.
Clips are generated from ``numpy.random.default_rng([split_code, seed, index])``: the splits (train,
validation, test) never share a generator, and the same arguments give the same clips, byte for byte.

`write_split` writes clips as H.264 files and a JSONL of records in `storm_hf.training`'s format (plus the
question type, the answer and the options), so the same data goes through the real collator and processor::

    from storm_hf.miniature.temporal_qa import write_split
    path = write_split("data", "train", count=512)      # data/train.jsonl, data/train/000000.mp4, ...
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import numpy as np

COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (50, 80, 230), "yellow": (230, 210, 40),
           "white": (235, 235, 235)}
SHAPES = ("square", "ring", "cross")
TASKS = ("direction", "first_appeared", "flash_count", "stop_or_reverse", "order_in_window", "colour", "shape")
TEMPORAL_TASKS = TASKS[:5]
# Order inside one aligned window, with the time information local in space or lasting two frames (see above).
WINDOW_TASKS = ("colour_change", "flash_colours", "pair_in_window")
ALL_TASKS = TASKS + WINDOW_TASKS
ANSWERS = {
    "direction": ("left", "right", "up", "down"),
    "first_appeared": tuple(COLOURS),
    "flash_count": ("one", "two", "three"),
    "stop_or_reverse": ("continue", "stop", "reverse"),
    "order_in_window": tuple(COLOURS),
    "colour": tuple(COLOURS),
    "shape": SHAPES,
    "colour_change": tuple(COLOURS),
    "flash_colours": tuple(COLOURS),
    "pair_in_window": tuple(COLOURS),
}
SPLITS = {"train": 1, "validation": 2, "test": 3}
WINDOW = 4  # frames averaged by temporal pooling k = 4: order_in_window hides its order inside one window
# Side of a shape in pixels at 48 px. 14 px squares, rings and crosses are told apart by the miniature models
# trained here (about 0.65 after 1000 image-pretraining steps); 10 px squares and filled discs were not (chance
# after 2000 steps), which left the static controls unanswerable for every arm.
OBJECT = 14


@dataclass
class Clip:
    """One generated example: frames (frames, size, size, 3) uint8, the question, its answer and options."""

    frames: np.ndarray
    task: str
    question: str
    answer: str
    options: tuple = ()
    meta: dict = field(default_factory=dict)


def _shape_mask(shape: str, side: int) -> np.ndarray:
    y, x = np.mgrid[:side, :side] - (side - 1) / 2
    if shape == "square":
        return np.ones((side, side), bool)
    if shape == "ring":  # a hollow circle, a quarter of the side thick
        radius = np.sqrt(x**2 + y**2)
        return (radius <= side / 2) & (radius >= side / 4)
    return (np.abs(x) <= side / 6) | (np.abs(y) <= side / 6)  # cross


class _Canvas:
    """Frames of a clip: a noisy background plus shapes drawn at given frames and positions. Distractors are
    painted first (``behind=True``), so they never hide what a question is about."""

    def __init__(self, rng, num_frames, size):
        self.rng, self.num_frames, self.size = rng, num_frames, size
        base = rng.integers(20, 60, size=3)
        self.frames = np.clip(base + rng.normal(0, 12, (num_frames, size, size, 3)), 0, 255)
        self._front = []  # shapes painted over the distractors, in result()

    def draw(self, t, shape, colour, y, x, behind=False):
        if not behind:
            self._front.append((t, shape, colour, y, x))
            return
        side = OBJECT * self.size // 48
        y0, x0 = int(round(y)), int(round(x))
        y0, x0 = min(max(y0, 0), self.size - side), min(max(x0, 0), self.size - side)
        mask = _shape_mask(shape, side)
        self.frames[t, y0 : y0 + side, x0 : x0 + side][mask] = COLOURS[colour]

    def free_position(self, margin=0, away_from=()):
        """A random top-left corner; with ``away_from``, one whose shape does not overlap those (at most 20
        draws, then the last one)."""
        side = OBJECT * self.size // 48
        for _ in range(20):
            y, x = self.rng.uniform(margin, self.size - side - margin, size=2)
            if all(abs(y - y2) >= side or abs(x - x2) >= side for y2, x2 in away_from):
                break
        return np.array([y, x])

    def result(self) -> np.ndarray:
        for shape in self._front:
            self.draw(*shape, behind=True)
        self._front = []
        return self.frames.round().astype(np.uint8)


def _pick(rng, items, count):
    return [items[i] for i in rng.choice(len(items), size=count, replace=False)]


def _add_distractors(canvas, rng, used_colours, count, avoid_shape=None):
    """Static or slowly drifting shapes whose colours differ from those the question is about (and, for the
    colour question, whose shape differs too)."""
    free = [c for c in COLOURS if c not in used_colours]
    shapes = [s for s in SHAPES if s != avoid_shape]
    for _ in range(count):
        colour, shape = free[rng.integers(len(free))], shapes[rng.integers(len(shapes))]
        (y, x), (dy, dx) = canvas.free_position(), rng.uniform(-0.4, 0.4, size=2)
        for t in range(canvas.num_frames):
            canvas.draw(t, shape, colour, y + dy * t, x + dx * t, behind=True)


def make_clip(rng: np.random.Generator, task: str, num_frames: int = 16, size: int = 48) -> Clip:
    """One clip of question type ``task`` (see the module docstring), drawn with ``rng``."""
    if task not in ALL_TASKS:
        raise ValueError(f"make_clip: unknown task {task!r}; choose one of {', '.join(ALL_TASKS)}.")
    if num_frames < 2 * WINDOW:
        raise ValueError(f"make_clip: clips need at least {2 * WINDOW} frames, got {num_frames}.")
    canvas = _Canvas(rng, num_frames, size)
    colour, other = _pick(rng, list(COLOURS), 2)
    shape = SHAPES[rng.integers(len(SHAPES))]
    side = OBJECT * size // 48
    span = size - side
    meta = {}
    if task == "direction":
        answer = ANSWERS[task][rng.integers(4)]
        start, along = rng.uniform(0, span * 0.15), rng.uniform(0, span)
        step = (span * 0.85 - start) / (num_frames - 1)
        for t in range(num_frames):
            pos = start + step * t
            y, x = {"right": (along, pos), "left": (along, span - pos), "down": (pos, along), "up": (span - pos, along)}[answer]
            canvas.draw(t, shape, colour, y, x)
        question = f"which way does the {colour} {shape} move ?"
    elif task in ("colour_change", "flash_colours"):  # one object, one place, two colours inside one window
        first, second = (colour, other) if rng.random() < 0.5 else (other, colour)
        window = int(rng.integers(0, num_frames // WINDOW)) * WINDOW
        if task == "colour_change":  # two frames each
            shown = {window: first, window + 1: first, window + 2: second, window + 3: second}
        else:  # one frame each, in order, anywhere inside the window
            t_first = window + int(rng.integers(0, WINDOW - 1))
            shown = {t_first: first, int(rng.integers(t_first + 1, window + WINDOW)): second}
        y, x = canvas.free_position()
        for t, c in shown.items():
            canvas.draw(t, shape, c, y, x)
        verb = "appears" if task == "colour_change" else "flashes"
        question = f"which colour {verb} first on the {shape} , {colour} or {other} ?"
        answer = first
        meta.update(shown={int(t): c for t, c in shown.items()}, options=(colour, other))
    elif task == "pair_in_window":  # two objects at two places, two frames each, inside one window
        first, second = (colour, other) if rng.random() < 0.5 else (other, colour)
        shapes = {first: shape, second: SHAPES[rng.integers(len(SHAPES))]}
        for _ in range(20):  # exchangeable places, as for first_appeared
            one, two = canvas.free_position(), canvas.free_position()
            if abs(one[0] - two[0]) >= side or abs(one[1] - two[1]) >= side:
                break
        window = int(rng.integers(0, num_frames // WINDOW)) * WINDOW
        for t, c, (y, x) in ((window, first, one), (window + 1, first, one), (window + 2, second, two),
                             (window + 3, second, two)):
            canvas.draw(t, shapes[c], c, y, x)
        question = f"which appears first , the {colour} {shapes[colour]} or the {other} {shapes[other]} ?"
        answer = first
        meta.update(window=window, options=(colour, other))
    elif task in ("first_appeared", "order_in_window"):
        first, second = (colour, other) if rng.random() < 0.5 else (other, colour)
        shapes = {first: shape, second: SHAPES[rng.integers(len(SHAPES))]}
        # Both corners drawn together until they do not overlap (at most 20 pairs): exchangeable, so where an
        # object is says nothing about whether it came first (drawing the second away from the first did:
        # "the one farther from the centre came second" was right 56% of the time).
        for _ in range(20):
            one, two = canvas.free_position(), canvas.free_position()
            if abs(one[0] - two[0]) >= side or abs(one[1] - two[1]) >= side:
                break
        positions = {first: one, second: two}
        if task == "first_appeared":  # each stays once it has appeared
            t_first = int(rng.integers(1, num_frames // 2))
            t_second = int(rng.integers(t_first + 2, num_frames - 1))
            for c, t0 in ((first, t_first), (second, t_second)):
                for t in range(t0, num_frames):
                    canvas.draw(t, shapes[c], c, *positions[c])
            meta["appear"] = {first: t_first, second: t_second}
        else:  # one frame each, consecutive, inside one aligned window
            window = int(rng.integers(0, num_frames // WINDOW))
            t_first = window * WINDOW + int(rng.integers(0, WINDOW - 1))
            t_second = int(rng.integers(t_first + 1, window * WINDOW + WINDOW))
            canvas.draw(t_first, shapes[first], first, *positions[first])
            canvas.draw(t_second, shapes[second], second, *positions[second])
            meta["flash"] = {first: t_first, second: t_second}
        question = (f"which appears first , the {colour} {shapes[colour]} or the {other} {shapes[other]} ?"
                    if task == "first_appeared" else
                    f"which flashes first , the {colour} {shapes[colour]} or the {other} {shapes[other]} ?")
        answer = first
        meta["options"] = (colour, other)
    elif task == "flash_count":
        count = int(rng.integers(1, 4))
        slots = np.sort(rng.choice(np.arange(1, num_frames - 1, 3), size=count, replace=False))
        y, x = canvas.free_position()
        for t0 in slots:
            for t in (t0, t0 + 1):  # a flash lasts two frames
                canvas.draw(int(t), shape, colour, y, x)
        answer = ANSWERS[task][count - 1]
        question = f"how many times does the {colour} {shape} flash ?"
        meta["flashes"] = slots.tolist()
    elif task == "stop_or_reverse":
        answer = ANSWERS[task][rng.integers(3)]
        along = rng.uniform(0, span)
        turn = int(rng.integers(num_frames // 3, 2 * num_frames // 3))
        step = span * 0.8 / (num_frames - 1)  # continue ends near the far side; reverse comes back before 0
        pos = rng.uniform(0, span * 0.1)
        for t in range(num_frames):
            canvas.draw(t, shape, colour, along, pos)
            if t < turn or answer == "continue":
                pos += step
            elif answer == "reverse":
                pos -= step
        question = f"does the {colour} {shape} continue , stop or reverse ?"
        meta["turn"] = turn
    else:  # static controls: one frame answers them
        y, x = canvas.free_position()
        for t in range(num_frames):
            canvas.draw(t, shape, colour, y, x)
        if task == "colour":
            answer, question = colour, f"what colour is the {shape} ?"
        else:
            answer, question = shape, f"what shape is the {colour} one ?"
    used = {colour} if task in ("direction", "flash_count", "stop_or_reverse", "colour", "shape") else {colour, other}
    _add_distractors(canvas, rng, used, count=int(rng.integers(1, 3)), avoid_shape=shape if task == "colour" else None)
    options = meta.pop("options", ANSWERS[task])
    return Clip(canvas.result(), task, question, answer, tuple(options), meta)


def clip_rng(split: str, seed: int, index: int) -> np.random.Generator:
    """The generator of clip ``index`` of ``split``: splits never share one."""
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}; choose one of {', '.join(SPLITS)}.")
    return np.random.default_rng([SPLITS[split], seed, index])


def generate(split: str, count: int, seed: int = 0, tasks=TASKS, num_frames: int = 16, size: int = 48):
    """``count`` clips of ``split``, question types in turn (balanced)."""
    return [make_clip(clip_rng(split, seed, i), tasks[i % len(tasks)], num_frames, size) for i in range(count)]


def write_video(path, frames: np.ndarray, fps: int = 8, pix_fmt: str = "yuv444p", options: dict | None = None):
    """(frames, H, W, 3) uint8 as an H.264 .mp4. By default crf 12 in full chroma, one GOP, no B-frames, so
    that colours and one-frame flashes survive; ``options`` (x264's, e.g. ``{}`` for its defaults) replaces
    that."""
    import av

    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], pix_fmt
        stream.options = {"crf": "12", "g": str(len(frames)), "bf": "0"} if options is None else dict(options)
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def record(clip: Clip, video: str) -> dict:
    """A record in `storm_hf.training`'s JSONL format, with the question type, answer and options."""
    return {
        "video": video,
        "messages": [
            {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": clip.question}]},
            {"role": "assistant", "content": clip.answer},
        ],
        "task": clip.task, "answer": clip.answer, "options": list(clip.options),
    }


def write_split(root, split: str, count: int, seed: int = 0, tasks=TASKS, num_frames: int = 16,
                size: int = 48) -> str:
    """Write ``count`` clips of ``split`` under ``root/split/`` and their records to ``root/split.jsonl``
    (video paths relative to ``root``). Returns the JSONL path."""
    os.makedirs(os.path.join(root, split), exist_ok=True)
    lines = []
    for i, clip in enumerate(generate(split, count, seed, tasks, num_frames, size)):
        video = f"{split}/{i:06d}.mp4"
        write_video(os.path.join(root, video), clip.frames)
        lines.append(json.dumps(record(clip, video)))
    path = os.path.join(root, f"{split}.jsonl")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return path


def write_multiple_choice_split(root, split: str, count: int, seed: int = 0, tasks=TASKS, num_frames: int = 16,
                                size: int = 48) -> str:
    """`write_split`'s clips as flat multiple-choice records (``video`` as an absolute path, ``question``,
    ``options``, ``answer``, ``task``) in ``root/split_mc.jsonl``, the form evaluation sets come in (and what
    lmms-eval's JSON loader reads: no nested messages). Returns the JSONL path."""
    root = os.path.abspath(root)
    os.makedirs(os.path.join(root, split), exist_ok=True)
    lines = []
    for i, clip in enumerate(generate(split, count, seed, tasks, num_frames, size)):
        video = os.path.join(root, split, f"{i:06d}.mp4")
        write_video(video, clip.frames)
        lines.append(json.dumps({"video": video, "question": clip.question, "options": list(clip.options),
                                 "answer": clip.answer, "task": clip.task}))
    path = os.path.join(root, f"{split}_mc.jsonl")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return path


# ----------------------------------------------------------------------------------------------------
# Stills: single frames with several questions each (the image pretraining of the miniature models)
# ----------------------------------------------------------------------------------------------------

STILL_TASKS = ("still_shape", "still_colour", "still_horizontal", "still_vertical")


@dataclass
class Still:
    """One frame (size, size, 3) uint8 with 2-3 shapes and every question it answers:
    [(task, question, answer, options)]."""

    image: np.ndarray
    questions: list


def make_still(rng: np.random.Generator, size: int = 48) -> Still:
    """A frame drawn like the clips (noisy background, 2-3 shapes of distinct colours that do not overlap) and its
    questions: the shape
    of each object, the colour of each object whose shape is unique, and whether each object clearly off the
    centre lies left / right and top / bottom. One frame answers all of them: no time involved."""
    canvas = _Canvas(rng, 1, size)
    side = OBJECT * size // 48
    boxes = []  # top-left corners of objects that do not overlap
    for _ in range(int(rng.integers(2, 4))):
        y, x = canvas.free_position(away_from=boxes)
        if all(abs(y - y2) >= side or abs(x - x2) >= side for y2, x2 in boxes):
            boxes.append((y, x))  # a crowded frame gets fewer objects
    colours = _pick(rng, list(COLOURS), len(boxes))
    shapes = [SHAPES[i] for i in rng.integers(0, len(SHAPES), len(boxes))]
    questions = []
    for colour, shape, (y, x) in zip(colours, shapes, boxes):
        canvas.draw(0, shape, colour, y, x)
        centre_x, centre_y = x + side / 2 - size / 2, y + side / 2 - size / 2
        questions.append(("still_shape", f"what shape is the {colour} one ?", shape, SHAPES))
        if shapes.count(shape) == 1:
            questions.append(("still_colour", f"what colour is the {shape} ?", colour, tuple(COLOURS)))
        if abs(centre_x) > side / 2:
            questions.append(("still_horizontal", f"is the {colour} {shape} on the left or right ?",
                              "left" if centre_x < 0 else "right", ("left", "right")))
        if abs(centre_y) > side / 2:
            questions.append(("still_vertical", f"is the {colour} {shape} at the top or bottom ?",
                              "top" if centre_y < 0 else "bottom", ("top", "bottom")))
    order = rng.permutation(len(questions))
    return Still(canvas.result()[0], [questions[i] for i in order])


def still_record(still: Still, image: str) -> dict:
    """A multi-turn training record: the image with the first question, then one turn per further question
    (every answer is trained on); ``task``/``answer``/``options`` describe the first question."""
    messages = []
    for number, (_, question, answer, _) in enumerate(still.questions):
        content = ([{"type": "video"}] if number == 0 else []) + [{"type": "text", "text": question}]
        messages += [{"role": "user", "content": content}, {"role": "assistant", "content": answer}]
    task, _, answer, options = still.questions[0]
    return {"video": image, "messages": messages, "task": task, "answer": answer, "options": list(options)}


def write_stills(root, split: str, count: int, seed: int = 0, size: int = 48) -> str:
    """Write ``count`` stills of ``split`` as PNG files under ``root/stills-{split}/`` and their multi-turn
    records to ``root/stills-{split}.jsonl`` (read back as one-frame videos). Returns the JSONL path."""
    from PIL import Image

    folder = f"stills-{split}"
    os.makedirs(os.path.join(root, folder), exist_ok=True)
    lines = []
    for i in range(count):
        still = make_still(np.random.default_rng([SPLITS[split], seed, i, 1]), size)
        image = f"{folder}/{i:06d}.png"
        Image.fromarray(still.image).save(os.path.join(root, image))
        lines.append(json.dumps(still_record(still, image)))
    path = os.path.join(root, f"stills-{split}.jsonl")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return path


def vocabulary() -> list[str]:
    """Every word the questions and answers use, stills included (for a word-level tokenizer)."""
    words = {"which", "way", "does", "the", "move", "?", "appears", "first", ",", "or", "flashes", "how", "many",
             "times", "flash", "continue", "stop", "reverse", "what", "colour", "is", "shape", "one", "on", "at",
             "top", "bottom", "left", "right"}
    words |= set(COLOURS) | set(SHAPES) | {w for answers in ANSWERS.values() for w in answers}
    return sorted(words)


__all__ = ["Clip", "make_clip", "generate", "write_split", "write_multiple_choice_split", "write_video", "record", "vocabulary", "clip_rng",
           "Still", "make_still", "still_record", "write_stills", "STILL_TASKS",
           "TASKS", "TEMPORAL_TASKS", "WINDOW_TASKS", "ALL_TASKS", "ANSWERS", "COLOURS", "SHAPES", "SPLITS", "WINDOW"]
