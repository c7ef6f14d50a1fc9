"""Checkpoints: safetensors + remote code that loads where storm_hf is not importable; no unpickling."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from storm_hf import StormConfig, StormForConditionalGeneration, StormModel, StormProcessor

from .conftest import tiny_model, video_prompt
from .tokenizer_factory import tiny_tokenizer


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("checkpoint")
    tokenizer = tiny_tokenizer()
    model = tiny_model(video_token_id=tokenizer.convert_tokens_to_ids("<video>"),
                       image_token_id=tokenizer.convert_tokens_to_ids("<image>"))
    model.save_pretrained(folder)
    StormProcessor.from_config(model.config, tokenizer=tokenizer).save_pretrained(folder)
    return folder, model


def test_folder_holds_safetensors_remote_code_and_auto_map(saved):
    folder, _ = saved
    files = set(os.listdir(folder))
    assert {"model.safetensors", "config.json", "configuration_storm.py", "modeling_storm.py", "selective_scan.py",
            "processing_storm.py", "video_processing_storm.py", "video_io.py", "processor_config.json",
            "tokenizer.json", "chat_template.jinja"} <= files
    assert not any(f.endswith((".bin", ".pt", ".pth")) for f in files)
    auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
    assert auto_map == {"AutoConfig": "configuration_storm.StormConfig", "AutoModel": "modeling_storm.StormModel",
                        "AutoModelForImageTextToText": "modeling_storm.StormForConditionalGeneration"}
    assert "AutoProcessor" in json.loads((folder / "processor_config.json").read_text())["auto_map"]


REMOTE_LOAD = """
import sys
sys.modules["storm_hf"] = None  # storm_hf is not importable here
import numpy as np, torch
from transformers import AutoModel, AutoModelForImageTextToText, AutoProcessor
folder = sys.argv[1]
model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True).eval()
processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
base = AutoModel.from_pretrained(folder, trust_remote_code=True)
assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
video = np.random.default_rng(0).integers(0, 255, (6, 40, 40, 3), dtype=np.uint8)
inputs = processor(text="<video> what happens ?", videos=[video], return_tensors="pt")
with torch.no_grad():
    logits = model(**inputs).logits
np.save(sys.argv[2], logits.numpy())
print(type(base).__name__, type(processor).__name__, type(processor.video_processor).__name__)
"""


def test_remote_code_loads_without_storm_hf_and_gives_identical_outputs(saved, tmp_path):
    folder, model = saved
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run([sys.executable, "-c", REMOTE_LOAD, str(folder), str(tmp_path / "logits.npy")],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "StormModel StormProcessor StormVideoProcessor" in result.stdout
    processor = StormProcessor.from_pretrained(folder)
    video = np.random.default_rng(0).integers(0, 255, (6, 40, 40, 3), dtype=np.uint8)
    inputs = processor(text="<video> what happens ?", videos=[video], return_tensors="pt")
    with torch.no_grad():
        expected = model(**inputs).logits.numpy()
    np.testing.assert_allclose(np.load(tmp_path / "logits.npy"), expected, rtol=1e-5, atol=1e-5)


def test_pickle_only_checkpoint_is_refused(tmp_path):
    model = tiny_model()
    model.config.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"only pickle weight files \(pytorch_model.bin\)"):
        StormForConditionalGeneration.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="safetensors only"):
        model.save_pretrained(tmp_path / "out", safe_serialization=False)


def test_truncated_weights_raise_naming_the_file(saved, tmp_path):
    folder, _ = saved
    for name in os.listdir(folder):
        (tmp_path / name).write_bytes((folder / name).read_bytes())
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(Exception, match="model.safetensors|safetensors|deserializ"):
        StormForConditionalGeneration.from_pretrained(tmp_path)


def test_sharded_save_round_trip(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path, max_shard_size="100KB")
    shards = [f for f in os.listdir(tmp_path) if f.endswith(".safetensors")]
    assert len(shards) > 1 and "model.safetensors.index.json" in os.listdir(tmp_path)
    loaded = StormForConditionalGeneration.from_pretrained(tmp_path)
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        torch.testing.assert_close(a, b, msg=name)
    assert isinstance(StormModel.from_pretrained(tmp_path), StormModel)
