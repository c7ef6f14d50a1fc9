"""StormVideoProcessor: files and arrays to pixel_values_videos, sampling, padding, metadata, errors."""

import numpy as np
import pytest
import torch

from storm_hf import StormVideoProcessor, VideoReadError

from .video_factory import full_decode, make_video


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return make_video(tmp_path_factory.mktemp("vp") / "clip.mp4", num_frames=40, gop=8, bframes=2)


@pytest.fixture(scope="module")
def vfr_clip(tmp_path_factory):
    return make_video(tmp_path_factory.mktemp("vp") / "vfr.mp4", num_frames=30, variable_rate=True)


def small_processor(**kwargs):
    return StormVideoProcessor(size={"height": 32, "width": 32}, **kwargs)


def test_file_frames_are_the_decoded_frames_resized_and_normalised(clip):
    processor = small_processor(num_frames=8)
    out = processor(str(clip), return_metadata=True)
    indices = out["video_metadata"][0].frames_indices
    assert indices == [2, 7, 12, 17, 22, 27, 32, 37]
    full = full_decode(clip)
    expected = torch.from_numpy(np.stack([full[i] for i in indices])).permute(0, 3, 1, 2).float()
    expected = torch.nn.functional.interpolate(expected, size=(32, 32), mode="bilinear", antialias=True)
    expected = (expected / 255 - 0.5) / 0.5
    torch.testing.assert_close(out["pixel_values_videos"][0], expected)
    assert out["video_num_frames"].tolist() == [8]


def test_batch_of_different_lengths_is_padded_with_counts(clip):
    processor = small_processor(num_frames=6)
    arrays = np.random.default_rng(0).integers(0, 255, (4, 20, 30, 3), dtype=np.uint8)
    out = processor([str(clip), arrays, torch.from_numpy(arrays)[:2]])
    assert out["pixel_values_videos"].shape == (3, 6, 3, 32, 32)
    assert out["video_num_frames"].tolist() == [6, 4, 2]  # fewer frames than asked: all of them, once
    assert out["pixel_values_videos"][2, 2:].abs().sum() == 0  # padding


def test_fps_sampling_max_frames_and_exact_timestamps(vfr_clip):
    processor = small_processor()
    out = processor(str(vfr_clip), fps=5, return_metadata=True)
    meta = out["video_metadata"][0]
    stamps = np.asarray(meta.timestamps)
    assert np.all(np.diff(stamps) > 0.1)  # about one frame per 0.2 s on a variable-rate clip
    assert len(stamps) == out["video_num_frames"].item()
    capped = processor(str(vfr_clip), fps=5, max_frames=3)
    assert capped["video_num_frames"].tolist() == [3]
    with pytest.raises(ValueError, match="num_frames or fps"):
        processor(str(vfr_clip), num_frames=4, fps=2)


def test_frame_lists_and_grayscale():
    processor = small_processor(num_frames=2)
    frames = [np.full((10, 12, 3), v, np.uint8) for v in (0, 128, 255)]
    out = processor([frames])
    assert out["pixel_values_videos"].shape == (1, 2, 3, 32, 32)
    gray = processor(np.zeros((3, 8, 8, 1), np.uint8))
    assert gray["pixel_values_videos"].shape == (1, 2, 3, 32, 32)


@pytest.mark.parametrize("bad,pattern", [
    (np.zeros((8, 8, 3), np.uint8)[None, None], "4 dimensions"),
    (np.zeros((2, 8, 8, 5), np.uint8), "channels"),
    (np.zeros((0, 8, 8, 3), np.uint8), "no frames"),
])
def test_bad_arrays_raise(bad, pattern):
    with pytest.raises(VideoReadError, match=pattern):
        small_processor()([bad])


def test_bad_files_raise_naming_the_file(tmp_path):
    (tmp_path / "broken.mp4").write_text("not a video")
    with pytest.raises(VideoReadError, match="broken.mp4"):
        small_processor()(str(tmp_path / "broken.mp4"))
    with pytest.raises(ValueError, match="unknown arguments"):
        small_processor()(np.zeros((2, 8, 8, 3), np.uint8), frames=3)


def test_save_and_load(tmp_path):
    processor = small_processor(num_frames=12, max_frames=10, image_mean=[0.4, 0.5, 0.6])
    processor.save_pretrained(tmp_path)
    loaded = StormVideoProcessor.from_pretrained(tmp_path)
    assert (loaded.num_frames, loaded.max_frames, loaded.size) == (12, 10, {"height": 32, "width": 32})
    assert list(loaded.image_mean) == [0.4, 0.5, 0.6]
    from transformers.models.auto.video_processing_auto import AutoVideoProcessor

    assert isinstance(AutoVideoProcessor.from_pretrained(tmp_path), StormVideoProcessor)


def test_still_images_given_as_videos_are_one_frame_clips(tmp_path, clip):
    """PNG, JPEG (with an EXIF thumbnail, which FFmpeg's JPEG reader trips on) and a rotated JPEG: one
    frame each, Pillow's pixels turned upright; an animated GIF stays a video."""
    import io
    import struct

    from PIL import Image

    from storm_hf import probe_video, read_frames

    from .video_factory import index_frame

    picture = np.repeat(np.repeat(index_frame(5), 4, 0), 4, 1)  # (192, 256, 3)
    Image.fromarray(picture).save(tmp_path / "frame.png")
    thumb, main = io.BytesIO(), io.BytesIO()
    Image.fromarray(picture).resize((64, 48)).save(thumb, "JPEG")
    Image.fromarray(picture).save(main, "JPEG", quality=95)
    payload = b"Exif\0\0II*\0\x08\0\0\0\0\0" + thumb.getvalue()
    app1 = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    (tmp_path / "camera.jpg").write_bytes(main.getvalue()[:2] + app1 + main.getvalue()[2:])
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to show
    Image.fromarray(picture).save(tmp_path / "portrait.jpg", exif=exif, quality=95)
    frames = [Image.fromarray(index_frame(i)) for i in range(5)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=100)

    png, _, index = read_frames(tmp_path / "frame.png", [0])
    assert index.is_image and index.total_frames == 1 and np.array_equal(png[0], picture)
    jpg, _, _ = read_frames(tmp_path / "camera.jpg", [0, 0])
    assert jpg.shape == (2, 192, 256, 3) and np.abs(jpg[0].astype(int) - picture).mean() < 4
    portrait, _, index = read_frames(tmp_path / "portrait.jpg", [0])
    assert portrait.shape == (1, 256, 192, 3) and (index.width, index.height) == (192, 256)
    assert np.abs(portrait[0].astype(int) - np.rot90(picture, -1)).mean() < 4
    assert probe_video(tmp_path / "anim.gif").total_frames == 5 and not probe_video(tmp_path / "anim.gif").is_image

    out = small_processor(num_frames=8)([str(tmp_path / "camera.jpg"), str(clip)], return_metadata=True)
    assert out["video_num_frames"].tolist() == [1, 8]
    meta = out["video_metadata"][0]
    assert meta.video_backend == "pillow" and meta.frames_indices == [0] and meta.timestamps == [0.0]


@pytest.mark.parametrize("setting", [{"num_frames": 2.5}, {"num_frames": 0}, {"num_frames": False},
                                     {"max_frames": 1.5}, {"fps": -1, "num_frames": None}, {"fps": "2", "num_frames": None}])
def test_bad_sampling_settings_name_the_setting_and_value_for_files_and_arrays(clip, setting):
    name, value = next((k, v) for k, v in setting.items() if v is not None)
    for video in (str(clip), np.zeros((6, 8, 8, 3), np.uint8)):
        with pytest.raises(ValueError, match=rf"StormVideoProcessor: {name} must be .*; got {value!r}\.$") as info:
            small_processor()(video, **setting)
        assert not isinstance(info.value, VideoReadError)  # a setting's error, not the file's
