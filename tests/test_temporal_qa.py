"""The procedural temporal video-QA benchmark: seeded, balanced, disjoint splits, answers that need time
where they should, and records that go through the real reader, collator and processor."""

import hashlib

import numpy as np
import pytest

from storm_hf.miniature.temporal_qa import (
    ALL_TASKS, ANSWERS, COLOURS, TASKS, WINDOW, WINDOW_TASKS, clip_rng, generate, make_clip, vocabulary, write_split,
)


def digest(clip):
    return hashlib.sha256(clip.frames.tobytes()).hexdigest()


def test_same_arguments_same_clips_and_disjoint_splits():
    assert [digest(c) for c in generate("train", 14)] == [digest(c) for c in generate("train", 14)]
    train = {digest(c) for c in generate("train", 70)}
    for split in ("validation", "test"):
        assert not train & {digest(c) for c in generate(split, 70)}
    assert {digest(c) for c in generate("train", 14, seed=1)}.isdisjoint(train)


def test_question_types_are_balanced_and_answers_from_a_closed_set():
    clips = generate("train", 7 * 60)
    for task in TASKS:
        of_task = [c for c in clips if c.task == task]
        assert len(of_task) == 60
        assert all(c.answer in c.options and set(c.options) <= set(ANSWERS[task]) for c in of_task)
        counts = np.array([sum(c.answer == a for c in of_task) for a in set(c.answer for c in of_task)])
        assert len(counts) >= 2 and counts.max() <= 3 * counts.min() + 5  # no answer dominates


def colour_mask(frames, colour):
    return (np.abs(frames.astype(int) - COLOURS[colour]).sum(-1) < 40)


@pytest.mark.parametrize("task", WINDOW_TASKS)
def test_within_window_tasks_hide_their_order_in_one_window_and_are_balanced(task):
    """Both colours show only inside one aligned window, the answer's colour first; the window's mean frame is
    the same for both orders (reversing the window shows the other answer); answers and positions balanced."""
    firsts = []
    for i in range(40):
        clip = make_clip(clip_rng("train", 3, i), task)
        assert clip.answer in clip.options and len(clip.options) == 2 and set(clip.question.split()) <= set(vocabulary())
        other = next(c for c in clip.options if c != clip.answer)
        shown = {c: [k for k, frame in enumerate(clip.frames) if colour_mask(frame, c).sum() > 10] for c in clip.options}
        frames = shown[clip.answer] + shown[other]
        assert len({k // WINDOW for k in frames}) == 1, (task, shown)  # one aligned window, nothing outside it
        assert max(shown[clip.answer]) < min(shown[other])  # the answer's colour comes first
        assert len(shown[clip.answer]) == len(shown[other]) == (1 if task == "flash_colours" else 2)
        start = frames[0] // WINDOW * WINDOW
        window = clip.frames[start : start + WINDOW]
        assert np.allclose(window.mean(0), window[::-1].mean(0)) and not np.array_equal(window, window[::-1])
        firsts.append(clip.answer == clip.options[0])  # the options name the colours in the question's order
    assert 10 <= sum(firsts) <= 30


def test_all_tasks_generate_and_the_old_mix_is_unchanged():
    assert ALL_TASKS == TASKS + WINDOW_TASKS and not set(TASKS) & set(WINDOW_TASKS)
    # the clips of the bundled model's mix are byte for byte those of before the window tasks were added
    frames = b"".join(c.frames.tobytes() for c in generate("test", 14, seed=7))
    assert hashlib.sha256(frames).hexdigest()[:16] == "d2b7627381b70e14"
    assert [c.task for c in generate("train", 10, tasks=ALL_TASKS)] == list(ALL_TASKS)


def test_direction_answers_follow_the_object():
    for i in range(20):
        clip = make_clip(clip_rng("test", 0, i), "direction")
        colour = clip.question.split()[4]
        ys, xs = zip(*[np.argwhere(colour_mask(f, colour)).mean(0) for f in clip.frames[[0, -1]]])
        moved = {"right": xs[1] - xs[0], "left": xs[0] - xs[1], "down": ys[1] - ys[0], "up": ys[0] - ys[1]}
        assert max(moved, key=moved.get) == clip.answer


def test_order_inside_one_pooling_window_is_invisible_after_averaging():
    """Both flashes fall in one aligned window of WINDOW frames: the window's mean frame holds both, so an
    average over the window cannot tell the order; a static frame answers the control questions."""
    for i in range(30):
        clip = make_clip(clip_rng("test", 0, i), "order_in_window")
        (first, t1), (second, t2) = sorted(clip.meta["flash"].items(), key=lambda item: item[1])
        assert first == clip.answer and t1 < t2 and t1 // WINDOW == t2 // WINDOW
        window = clip.frames[t1 // WINDOW * WINDOW : t1 // WINDOW * WINDOW + WINDOW]
        swapped = window.copy()
        swapped[[t1 % WINDOW, t2 % WINDOW]] = swapped[[t2 % WINDOW, t1 % WINDOW]]
        assert np.array_equal(window.mean(0), swapped.mean(0)) and not np.array_equal(window, swapped)
        for colour, t in ((first, t1), (second, t2)):  # each shows in its one frame and nowhere else
            shown = [k for k, frame in enumerate(clip.frames) if colour_mask(frame, colour).sum() > 10]
            assert shown == [t]
    for task in ("colour", "shape"):
        clip = make_clip(clip_rng("test", 0, 99), task)
        colour = clip.answer if task == "colour" else clip.question.split()[-3]
        assert colour_mask(clip.frames[0], colour).sum() > 20  # the first frame already answers it


def test_written_split_reads_back_through_the_collator(tmp_path):
    from storm_hf import StormConfig, StormProcessor, read_frames
    from storm_hf.miniature.tiny import word_tokenizer
    from storm_hf.training import StormDataCollator, load_video_dataset

    path = write_split(tmp_path, "validation", count=7)
    dataset = load_video_dataset(path)
    assert len(dataset) == 7 and [r["task"] for r in dataset] == list(TASKS)
    clips = generate("validation", 7)
    frames, _, index = read_frames(tmp_path / dataset[0]["video"], range(16))
    assert index.total_frames == 16 and np.abs(frames.astype(int) - clips[0].frames).mean() < 3
    processor = StormProcessor.from_config(StormConfig.from_preset("tiny"), tokenizer=word_tokenizer(vocabulary()))
    batch = StormDataCollator(processor, video_root=str(tmp_path), num_frames=16)([dataset[i] for i in range(3)])
    assert batch["pixel_values_videos"].shape[:2] == (3, 16)
    unknown = processor.tokenizer.unk_token_id
    assert unknown not in batch["input_ids"][batch["attention_mask"].bool()].tolist()  # every word is known
    answers = [processor.tokenizer.decode([t for t in row if t != -100]).split()[0] for row in batch["labels"].tolist()]
    assert answers == [r["answer"] for r in (dataset[0], dataset[1], dataset[2])]


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="unknown task"):
        make_clip(clip_rng("train", 0, 0), "juggling")
    with pytest.raises(ValueError, match="Unknown split"):
        clip_rng("dev", 0, 0)
    with pytest.raises(ValueError, match="at least 8 frames"):
        make_clip(clip_rng("train", 0, 0), "direction", num_frames=4)


def test_stills_answer_every_question_from_one_frame(tmp_path):
    from storm_hf.miniature.temporal_qa import STILL_TASKS, make_still, still_record, write_stills

    rng = np.random.default_rng(0)
    stills = [make_still(rng) for _ in range(60)]
    assert {task for s in stills for task, *_ in s.questions} == set(STILL_TASKS)
    for still in stills:
        for task, question, answer, options in still.questions:
            assert answer in options
            if task == "still_shape":  # the named colour is in the frame
                assert colour_mask(still.image, question.split()[4]).sum() > 20
            if task == "still_horizontal":
                colour = question.split()[2]
                x = np.argwhere(colour_mask(still.image, colour))[:, 1].mean()
                assert (x < 24) == (answer == "left")
    record = still_record(stills[0], "a.png")
    assert sum(m["role"] == "assistant" for m in record["messages"]) == len(stills[0].questions)
    assert record["messages"][0]["content"][0] == {"type": "video"}
    assert all(not any(c.get("type") == "video" for c in m["content"]) for m in record["messages"][2::2])

    from storm_hf import StormProcessor
    from storm_hf.miniature import mini_config, mini_tokenizer
    from storm_hf.training import StormDataCollator, load_video_dataset

    path = write_stills(tmp_path, "train", count=3)
    dataset = load_video_dataset(path)
    processor = StormProcessor.from_config(mini_config("baseline", 1), tokenizer=mini_tokenizer())
    batch = StormDataCollator(processor, video_root=str(tmp_path), num_frames=16)([dataset[i] for i in range(3)])
    assert batch["pixel_values_videos"].shape[:2] == (3, 1)  # a PNG is a one-frame video
    labelled = [[t for t in row if t != -100] for row in batch["labels"].tolist()]
    for row, record in zip(labelled, (dataset[i] for i in range(3))):
        answers = processor.tokenizer.decode(row).split(" <|im_end|>")[:-1]
        assert [a.strip() for a in answers] == [m["content"] for m in record["messages"][1::2]]


def test_where_the_two_objects_are_says_nothing_about_which_came_first():
    """The two objects of first_appeared / order_in_window are placed exchangeably: a heuristic reading their
    places (the one farther from the centre came second) is at chance."""
    for task in ("first_appeared", "order_in_window"):
        farther_second = []
        for i in range(600):
            clip = make_clip(clip_rng("train", 0, i), task)
            times = clip.meta["appear" if task == "first_appeared" else "flash"]
            (first, t1), (second, t2) = sorted(times.items(), key=lambda item: item[1])
            offset = [np.abs(np.argwhere(colour_mask(clip.frames[-1 if task == "first_appeared" else t], c)).mean(0)
                             - 24).sum() for c, t in ((first, t1), (second, t2))]
            farther_second.append(offset[1] > offset[0])
        assert abs(np.mean(farther_second) - 0.5) < 0.05, task
