"""Exact frame reading with seeking, sampling, and clear errors on bad files."""

import io
import os
import re
import time
import warnings

import numpy as np
import pytest

from storm_hf.video_io import VideoReadError, probe_video, read_frames, sample_frame_indices

from .url_server import serving, unused_port
from .video_factory import decode_index, full_decode, make_audio_only, make_video


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    return {
        "bframes": make_video(root / "bframes.mp4", num_frames=100, gop=12, bframes=2),
        "no_bframes": make_video(root / "plain.mp4", num_frames=50, gop=10, bframes=0),
        "vfr": make_video(root / "vfr.mp4", num_frames=45, gop=9, variable_rate=True),
        "intra": make_video(root / "intra.mp4", num_frames=20, gop=1, bframes=0),
    }


@pytest.mark.parametrize("kind", ["bframes", "no_bframes", "vfr", "intra"])
def test_frames_equal_a_full_decode_at_any_indices(videos, kind):
    full = full_decode(videos[kind])
    assert [decode_index(f) for f in full] == list(range(len(full)))  # the factory's frames are in order
    rng = np.random.default_rng(0)
    for indices in [np.arange(len(full)), rng.integers(0, len(full), 15), np.array([len(full) - 1, 0, 5, 5, 2])]:
        frames, timestamps, index = read_frames(videos[kind], indices)
        assert frames.shape == (len(indices), 48, 64, 3) and frames.dtype == np.uint8
        for frame, i in zip(frames, indices):
            assert np.array_equal(frame, full[i])  # pixel-identical, unsorted and repeated indices included
        np.testing.assert_allclose(timestamps, index.timestamps[indices])


def test_index_fps_and_variable_rate_timestamps(videos):
    index = probe_video(videos["bframes"])
    assert index.total_frames == 100 and abs(index.fps - 24) < 1e-6 and len(index.keyframe_pts) >= 8
    vfr = probe_video(videos["vfr"])
    gaps = np.round(np.diff(vfr.timestamps), 3)
    assert gaps[:6].tolist() == [0.07, 0.03, 0.03, 0.07, 0.03, 0.03]


def test_sources_path_bytes_and_file_object(videos):
    data = open(videos["no_bframes"], "rb").read()
    by_path, _, _ = read_frames(videos["no_bframes"], [3, 40])
    by_bytes, _, _ = read_frames(data, [3, 40])
    by_file, _, _ = read_frames(io.BytesIO(data), [3, 40])
    assert np.array_equal(by_path, by_bytes) and np.array_equal(by_path, by_file)


def test_sample_frame_indices():
    timestamps = np.arange(100) / 10.0  # 10 fps, 10 s
    assert sample_frame_indices(timestamps, num_frames=4).tolist() == [12, 37, 62, 87]
    assert sample_frame_indices(timestamps, num_frames=500).tolist() == list(range(100))  # every frame once
    assert sample_frame_indices(timestamps, fps=1).tolist() == list(range(0, 100, 10))
    assert sample_frame_indices(timestamps, fps=1, max_frames=5).tolist() == [10, 30, 50, 70, 90]  # centres
    assert len(sample_frame_indices(timestamps)) == 100
    vfr = np.array([0.0, 0.07, 0.1, 0.13, 0.2, 0.23, 0.26])
    assert sample_frame_indices(vfr, fps=10).tolist() == [0, 2, 4]
    with pytest.raises(ValueError):
        sample_frame_indices(timestamps, num_frames=2, fps=1)


def test_out_of_range_indices(videos):
    with pytest.raises(VideoReadError, match=r"bframes.mp4: frame indices must be in 0..99"):
        read_frames(videos["bframes"], [100])


def expect_error(source, pattern):
    start = time.perf_counter()
    with pytest.raises(VideoReadError, match=pattern) as info:
        read_frames(source, [0])
    assert time.perf_counter() - start < 2.0
    assert isinstance(info.value, ValueError)


def test_bad_files_raise_clear_errors(tmp_path, videos):
    expect_error(tmp_path / "missing.mp4", r"missing.mp4: no such file")
    (tmp_path / "empty.mp4").write_bytes(b"")
    expect_error(tmp_path / "empty.mp4", r"empty.mp4: the file is empty")
    (tmp_path / "notes.mp4").write_text("this is not a video\n" * 20)
    expect_error(tmp_path / "notes.mp4", r"notes.mp4: not a readable video container")
    data = open(videos["bframes"], "rb").read()
    (tmp_path / "truncated.mp4").write_bytes(data[: len(data) // 3])
    expect_error(tmp_path / "truncated.mp4", r"truncated.mp4: ")
    make_audio_only(tmp_path / "audio.m4a")
    expect_error(tmp_path / "audio.m4a", r"audio.m4a: the file has no video stream \(streams: audio\)")
    expect_error(b"", r"the video bytes are empty")


def test_corrupt_packet_in_the_middle_is_skipped_with_a_warning(tmp_path, videos):
    data = bytearray(open(videos["no_bframes"], "rb").read())
    index = probe_video(videos["no_bframes"])
    # Overwrite bytes in the middle of the media data (after the first quarter of the file).
    start = len(data) // 2
    data[start : start + 400] = bytes(400)
    path = tmp_path / "corrupt.mp4"
    path.write_bytes(bytes(data))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        frames, _, _ = read_frames(path, np.arange(index.total_frames))
    assert frames.shape[0] == index.total_frames  # every requested frame is answered
    assert any(re.search(r"corrupt.mp4: skipped \d+ video packet", str(w.message)) for w in caught)
    good, _, _ = read_frames(path, [0, 1])
    assert [decode_index(f) for f in good] == [0, 1]


def test_video_stream_without_frames(tmp_path):
    import av

    path = tmp_path / "no_frames.mp4"
    container = av.open(str(path), mode="w")
    stream = container.add_stream("libx264", rate=24)
    stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
    container.close()
    expect_error(path, r"no_frames.mp4: ")


def test_errors_do_not_leak_file_handles(tmp_path, videos):
    import os

    (tmp_path / "bad.mp4").write_text("not a video")
    data = open(videos["bframes"], "rb").read()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])

    def open_files():
        return len(os.listdir(f"/proc/{os.getpid()}/fd"))

    read_frames(videos["bframes"], [0])
    before = open_files()
    for _ in range(5):
        for source in (tmp_path / "bad.mp4", tmp_path / "cut.mp4", tmp_path / "none.mp4"):
            with pytest.raises(VideoReadError):
                read_frames(source, [0, 90])
        read_frames(videos["bframes"], [3, 50])
    assert open_files() == before


def test_progress_bar_on_request_and_off_when_not_a_terminal(videos, monkeypatch, capsys):
    import storm_hf.video_io as video_io

    monkeypatch.setattr(video_io, "PROGRESS_DELAY", 0)  # show at once instead of after a second
    read_frames(videos["bframes"], [5, 50, 90], progress=True)
    assert "decoding bframes.mp4" in capsys.readouterr().err
    read_frames(videos["bframes"], [5, 50, 90])  # progress=None: stderr is not a terminal under pytest
    read_frames(videos["bframes"], [5, 50, 90], progress=False)
    assert "decoding" not in capsys.readouterr().err
    monkeypatch.setattr(video_io.sys.stderr, "isatty", lambda: True, raising=False)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # transformers' switch turns it off too
    try:
        read_frames(videos["bframes"], [5, 50, 90])
        assert "decoding" not in capsys.readouterr().err
    finally:
        hf_logging.enable_progress_bar()
    read_frames(videos["bframes"], [5, 50, 90])
    assert "decoding bframes.mp4" in capsys.readouterr().err


@pytest.mark.parametrize("workers", [1, 3])
def test_progress_callback_counts_every_frame_once_in_order(videos, workers):
    calls = []
    wanted = list(range(0, 100, 3))  # repeats and order do not count twice: 34 distinct frames
    frames, _, _ = read_frames(videos["bframes"], wanted + [3, 0], progress=lambda done, total: calls.append((done, total)),
                               workers=workers)
    assert calls[0] == (0, 34) and calls[-1] == (34, 34) and len(calls) == 35
    assert [done for done, _ in calls] == list(range(35))
    np.testing.assert_array_equal(frames[:34], read_frames(videos["bframes"], wanted, progress=False)[0])


def test_split_at_keyframes_cuts_only_between_groups_of_pictures_into_balanced_parts(videos):
    import storm_hf.video_io as video_io

    index = probe_video(videos["bframes"])  # 100 frames, a keyframe every 12
    keyframe_frames = np.searchsorted(index.frame_pts, index.keyframe_pts)
    wanted = list(range(0, 100, 3))
    parts = video_io._split_at_keyframes(index, wanted, 3)
    assert len(parts) == 3 and sum(parts, []) == wanted  # contiguous, in order, nothing lost or repeated
    for left, right in zip(parts, parts[1:]):  # a keyframe lies between the parts: no group decoded twice
        assert np.any((keyframe_frames > left[-1]) & (keyframe_frames <= right[0]))
    assert max(map(len, parts)) - min(map(len, parts)) <= 5  # about equal work (frames spread evenly)
    assert video_io._split_at_keyframes(index, [5, 6, 7], 4) == [[5, 6, 7]]  # one group: nothing to split
    assert video_io._split_at_keyframes(index, wanted, 1) == [wanted]


@pytest.mark.parametrize("workers", [None, 1, 2, 5])
def test_parallel_decoders_give_the_same_frames_from_paths_and_bytes(videos, workers, monkeypatch):
    import storm_hf.video_io as video_io

    monkeypatch.setattr(video_io, "MIN_FRAMES_PER_WORKER", 2)  # split even this short video
    full = full_decode(videos["bframes"])
    indices = [99, 0, 13, 13, 50, 61, 62, 87, 24]
    data = open(videos["bframes"], "rb").read()
    for source in (videos["bframes"], data, io.BytesIO(data)):
        frames, _, _ = read_frames(source, indices, workers=workers)
        assert all(np.array_equal(f, full[i]) for f, i in zip(frames, indices))


def test_a_failing_decoder_stops_the_call_with_its_error(videos, monkeypatch):
    import storm_hf.video_io as video_io

    monkeypatch.setattr(video_io, "MIN_FRAMES_PER_WORKER", 2)
    real = video_io._read_by_seeking
    started = []

    def failing(decoder, index, wanted, deliver):
        started.append(decoder.stop)
        if 90 in wanted:
            raise VideoReadError(f"{decoder.name}: frame 90 could not be decoded (test).")
        return real(decoder, index, wanted, deliver)

    monkeypatch.setattr(video_io, "_read_by_seeking", failing)
    with pytest.raises(VideoReadError, match="frame 90 could not be decoded"):
        read_frames(videos["bframes"], [1, 30, 60, 90], workers=4)
    assert len(started) > 1 and all(stop is started[0] and stop.is_set() for stop in started)


@pytest.mark.parametrize("workers", [0, -1, 1.5, True, "2"])
def test_workers_must_be_a_positive_integer(videos, workers):
    with pytest.raises(ValueError, match="workers must be a positive integer or None"):
        read_frames(videos["bframes"], [0], workers=workers)


@pytest.mark.parametrize("num_frames", [2.5, 0, -3, True, "8", float("nan")])
def test_a_bad_frame_count_is_named_not_taken_for_a_file_error(num_frames):
    timestamps = np.arange(48) / 24.0
    with pytest.raises(ValueError, match=r"num_frames must be a whole number of frames, at least 1; got ") as info:
        sample_frame_indices(timestamps, num_frames=num_frames)
    assert repr(num_frames) in str(info.value) and not isinstance(info.value, VideoReadError)
    with pytest.raises(ValueError, match=r"max_frames must be a whole number of frames, at least 1; got 1.5"):
        sample_frame_indices(timestamps, fps=2, max_frames=1.5)
    assert sample_frame_indices(timestamps, num_frames=np.int64(4)).tolist() == \
        sample_frame_indices(timestamps, num_frames=4.0).tolist() == [6, 18, 30, 42]  # whole numbers in any type


@pytest.mark.parametrize("fps", [0, -1.0, float("inf"), float("nan"), True, "2"])
def test_a_bad_fps_is_named(fps):
    with pytest.raises(ValueError, match=r"fps must be a number of frames a second above 0; got "):
        sample_frame_indices(np.arange(48) / 24.0, fps=fps)


@pytest.fixture
def no_proxy(monkeypatch):
    """Requests to the tests' local server go straight to it, whatever proxy the environment names."""
    for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)


def test_an_http_url_reads_the_same_frames_once_downloaded_by_every_worker(videos, no_proxy, monkeypatch, tmp_path):
    import tempfile

    import storm_hf.video_io as video_io

    monkeypatch.setattr(video_io, "MIN_FRAMES_PER_WORKER", 2)  # split even this short video
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the downloads go, to see them removed
    parallel_sources = []
    real = video_io._read_parts_in_parallel

    def spy(source, *args):
        parallel_sources.append(source)
        return real(source, *args)

    monkeypatch.setattr(video_io, "_read_parts_in_parallel", spy)
    indices = [99, 0, 13, 13, 50, 87]
    local, local_stamps, _ = read_frames(videos["bframes"], indices, workers=1)
    with serving({"/clips/bframes.mp4": open(videos["bframes"], "rb").read()}) as base:
        url = base + "/clips/bframes.mp4"
        assert probe_video(url).total_frames == 100
        for workers in (1, 3):
            frames, stamps, index = read_frames(url, indices, workers=workers)
            assert np.array_equal(frames, local) and np.array_equal(stamps, local_stamps)
        with video_io.local_source(url) as downloaded:  # one download for a probe and a read
            assert str(downloaded) == url and os.path.isfile(downloaded)
            frames, _, _ = read_frames(downloaded, indices, index=probe_video(downloaded), workers=3)
            assert np.array_equal(frames, local)
        assert not os.path.exists(downloaded)
    # the parallel workers read the downloaded file (named by its URL), each opening it itself
    assert len(parallel_sources) == 2 and all(str(source) == url for source in parallel_sources)
    assert os.listdir(tmp_path) == []  # every download removed


def test_a_file_url_is_the_local_path_percent_decoded(tmp_path):
    path = make_video(tmp_path / "my clip #1.mp4", num_frames=10, gop=5)
    url = path.as_uri()
    assert "my%20clip%20%231.mp4" in url
    assert probe_video(url).total_frames == 10
    frames, _, _ = read_frames(url, [7, 2])
    assert [decode_index(f) for f in frames] == [7, 2]
    missing = (tmp_path / "gone.mp4").as_uri()
    expect_error(missing, re.escape(missing) + ": no such file")
    expect_error("file://fileserver/share/clip.mp4", "a file:// URL must name a file on this machine")


def test_http_failures_name_the_url_and_the_reason_promptly(videos, no_proxy, monkeypatch, tmp_path):
    import tempfile

    import storm_hf.video_io as video_io

    monkeypatch.setattr(video_io, "URL_TIMEOUT", 0.5)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    refused = f"http://127.0.0.1:{unused_port()}/clip.mp4"
    expect_error(refused, re.escape(refused) + r": cannot be downloaded \(Connection refused\)")
    with serving({"/clip.mp4": open(videos["bframes"], "rb").read()}) as base:
        expect_error(base + "/missing.mp4", re.escape(base) + r"/missing.mp4: the server answered 404 Not Found")
        expect_error(base + "/cut/clip.mp4", r"/cut/clip.mp4: the download stopped after (\d+) of \d+ bytes \(the "
                     r"server closed the connection\)")
        expect_error(base + "/stall/clip.mp4", r"/stall/clip.mp4: the download stopped after 0 bytes \(no answer "
                     r"from the server within 0.5 s\)")
    assert os.listdir(tmp_path) == []  # no partial download left behind


@pytest.mark.parametrize("url", ["ftp://example.com/clip.mp4", "s3://bucket/clip.mp4", "rtsp://camera/stream",
                                 "data:video/mp4;base64,AAAA"])
def test_other_url_schemes_are_refused_with_the_supported_ones(url):
    scheme = url.split(":")[0]
    expect_error(url, re.escape(f"{url}: {scheme}: URLs are not supported") + r".*give a local path, or an "
                 r"http://, https:// or file:// URL")
    with pytest.raises(VideoReadError, match="URLs are not supported"):
        probe_video(url)
