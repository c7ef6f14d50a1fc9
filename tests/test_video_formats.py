"""Exact frames on many containers and codecs, on streams whose seeks do not land where asked, and a hard
bound on the work of a call (the MPEG-2 program-stream hang)."""

import signal
import warnings
from contextlib import contextmanager

import numpy as np
import pytest

import storm_hf.video_io as video_io
from storm_hf.video_io import probe_video, read_frames

from .video_factory import FORMATS, cut_before_keyframe, decode_index, full_decode, make_format_video


@contextmanager
def time_limit(seconds):
    """Fail (instead of hanging the suite) when the block runs longer than `seconds`."""

    def expire(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class Recorder(video_io._Decoder):
    """The reader's decoder, remembering its work counters after each call."""

    calls = []

    def close(self):
        super().close()
        Recorder.calls.append({"packets": self.packets_decoded, "seeks": self.seeks, "missed": self.missed_seeks,
                               "full": self.full_decodes, "stream": self.index.num_packets})


@pytest.fixture
def recorded(monkeypatch):
    Recorder.calls = []
    monkeypatch.setattr(video_io, "_Decoder", Recorder)
    return Recorder.calls


CASES = [(kind, False, False) for kind in FORMATS] + [
    ("mpeg2_ps_open_gop", True, False),  # starts with the leading B-frames of an open GOP
    ("h264_open_gop_mp4", True, False),
    ("mpeg2_ts", True, False),
    ("h264_mkv", False, True),  # variable frame rate
    ("h264_mov", False, True),
]


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    root = tmp_path_factory.mktemp("formats")
    made = {}
    for kind, cut, vfr in CASES:
        suffix = FORMATS[kind][1]
        path = make_format_video(root / f"{kind}{'_vfr' if vfr else ''}{suffix}", kind, num_frames=60,
                                 variable_rate=vfr)
        if cut:
            path = cut_before_keyframe(path, root / f"{kind}_cut{suffix}")
        made[(kind, cut, vfr)] = path
    return made


@pytest.mark.parametrize("workers", [1, 3])
@pytest.mark.parametrize("case", CASES, ids=[f"{k}{'-cut' if c else ''}{'-vfr' if v else ''}" for k, c, v in CASES])
def test_exact_frames_on_every_format(library, case, workers, recorded, monkeypatch):
    """One decoder, and 3 parallel decoders over keyframe ranges (split even for these short files)."""
    monkeypatch.setattr(video_io, "MIN_FRAMES_PER_WORKER", 2)
    path = library[case]
    full = full_decode(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the raw stream warns that it is read from the start
        index = probe_video(path)
        assert index.total_frames == len(full)  # the index numbers frames as a full decode does
        rng = np.random.default_rng(0)
        for indices in [np.arange(len(full)), rng.integers(0, len(full), 7), [len(full) - 1, 0], [len(full) // 2]]:
            with time_limit(20):
                frames, timestamps, _ = read_frames(path, indices, workers=workers)
            for frame, i in zip(frames, indices):
                assert np.array_equal(frame, full[i]), f"frame {i}"
    for call in recorded:  # a hard bound on work: a few times the stream at most
        assert call["packets"] <= video_io.WORK_BOUND_FACTOR * call["stream"] + video_io.WORK_BOUND_EXTRA


def test_cut_open_gop_stream_numbers_frames_like_a_full_decode(library):
    path = library[("mpeg2_ps_open_gop", True, False)]
    full = full_decode(path)
    assert decode_index(full[0]) == 12  # the two leading B-frames of the cut GOP do not decode
    frames, _, _ = read_frames(path, [0, 1])
    assert [decode_index(f) for f in frames] == [12, 13]


@pytest.mark.parametrize("closed", [False, True])
def test_mpeg2_program_stream_does_not_hang(tmp_path, closed, recorded):
    """The reported hang: MPEG-2 in an MPEG program stream, 190 packets / 7.6 s, frame 100. The demuxer
    reports timestamps one frame off after a seek; the reader must still give exact frames, quickly."""
    kind = "mpeg2_ps_closed_gop" if closed else "mpeg2_ps_open_gop"
    path = make_format_video(tmp_path / "clip.mpg", kind, num_frames=190, fps=25)
    full = full_decode(path)
    for indices in ([100], [5, 50, 100, 150, 189], list(range(0, 190, 7)), [189, 0, 100, 100]):
        with time_limit(10):
            frames, _, index = read_frames(path, indices)
        assert index.total_frames == 190
        assert all(np.array_equal(f, full[i]) for f, i in zip(frames, indices))
    assert all(call["packets"] <= 2 * 190 for call in recorded)  # no more than twice the stream's packets


def wild_seek(offsets):
    """A stand-in for the demuxer's seek that lands elsewhere: `offsets` cycles through keyframe shifts
    (positive: later than asked, past the target; 'end': past the last frame; 'start': the first packet)."""
    state = {"n": 0}
    real_seek = video_io._seek

    def seek(container, stream, pts):
        shift = offsets[state["n"] % len(offsets)]
        state["n"] += 1
        if shift == "start":
            return real_seek(container, stream, -(1 << 62))
        if shift == "end":
            return real_seek(container, stream, 1 << 62)
        return real_seek(container, stream, pts + shift)

    return seek


@pytest.mark.parametrize("offsets", [[2000], ["end"], ["start"], [2000, 0, "end", -2000], [-2000, "end", "end", "end"]],
                         ids=["late", "past-the-end", "at-the-start", "mixed", "early-then-never"])
def test_seeks_that_land_elsewhere_still_give_exact_frames(tmp_path, monkeypatch, offsets, recorded):
    path = make_format_video(tmp_path / "clip.mkv", "h264_mkv", num_frames=120)  # pts in ms, 40 ms per frame
    full = full_decode(path)
    monkeypatch.setattr(video_io, "_seek", wild_seek(offsets))
    for indices in ([100], [3, 30, 61, 90, 119], [119, 0, 64]):
        with time_limit(10):
            frames, _, _ = read_frames(path, indices)
        assert all(np.array_equal(f, full[i]) for f, i in zip(frames, indices))
    for call in recorded:
        assert call["packets"] <= video_io.WORK_BOUND_FACTOR * call["stream"] + video_io.WORK_BOUND_EXTRA
        assert call["seeks"] <= 3 * 5  # at most 1 + MAX_EARLIER_SEEKS seeks per wanted frame


def test_a_container_that_cannot_seek_is_decoded_from_the_start(tmp_path, monkeypatch, recorded):
    import av

    path = make_format_video(tmp_path / "clip.mp4", "h264_open_gop_mp4", num_frames=60)
    full = full_decode(path)

    def refuse(container, stream, pts):
        raise av.error.PermissionError(1, "seek refused")

    monkeypatch.setattr(video_io, "_seek", refuse)
    frames, _, _ = read_frames(path, [50, 10])
    assert np.array_equal(frames[0], full[50]) and np.array_equal(frames[1], full[10])
    assert recorded[-1]["full"] == 1 and recorded[-1]["packets"] <= 60 + video_io.WORK_BOUND_EXTRA


def test_work_bound_falls_back_to_one_full_decode_then_stops_with_a_clear_error(tmp_path, monkeypatch, recorded):
    path = make_format_video(tmp_path / "clip.mkv", "h264_mkv", num_frames=60)
    full = full_decode(path)
    monkeypatch.setattr(video_io, "WORK_BOUND_FACTOR", 0)
    monkeypatch.setattr(video_io, "WORK_BOUND_EXTRA", 3)
    frames, _, _ = read_frames(path, [59, 20])  # the seek budget runs out: one decode from the start is allowed
    assert np.array_equal(frames[0], full[59]) and np.array_equal(frames[1], full[20])
    assert recorded[-1]["full"] == 1
    monkeypatch.setattr(Recorder, "allow_one_full_decode", lambda self: None)
    with pytest.raises(video_io.VideoReadError, match=r"clip.mkv: gave up after decoding \d+ packets"):
        read_frames(path, [59])
