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
            "checkpointing_storm.py",
            "processing_storm.py", "video_processing_storm.py", "video_io.py", "processor_config.json",
            "tokenizer.json", "chat_template.jinja"} <= files
    assert not any(f.endswith((".bin", ".pt", ".pth")) for f in files)
    auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
    assert auto_map == {"AutoConfig": "configuration_storm.StormConfig", "AutoModel": "modeling_storm.StormModel",
                        "AutoModelForImageTextToText": "modeling_storm.StormForConditionalGeneration",
                        "AutoModelForMultimodalLM": "modeling_storm.StormForConditionalGeneration"}
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
    with pytest.raises(ValueError, match=rf"{tmp_path}: a safetensors weight file is unreadable or truncated"):
        StormForConditionalGeneration.from_pretrained(tmp_path)


def test_missing_shard_and_wrong_shapes(tmp_path):
    model = tiny_model(temporal_d_state=8)
    model.save_pretrained(tmp_path / "sharded", max_shard_size="100KB")
    index = json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())
    missing = sorted(set(index["weight_map"].values()))[1]
    os.remove(tmp_path / "sharded" / missing)
    with pytest.raises(FileNotFoundError, match=missing):
        StormForConditionalGeneration.from_pretrained(tmp_path / "sharded")
    model.save_pretrained(tmp_path / "shapes")
    config = json.loads((tmp_path / "shapes" / "config.json").read_text())
    config["temporal_d_state"] = 4
    (tmp_path / "shapes" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="do not have the shapes its config.json describes"):
        StormForConditionalGeneration.from_pretrained(tmp_path / "shapes")


def test_interrupted_save_leaves_the_old_checkpoint_whole(tmp_path, monkeypatch):
    import safetensors.torch

    old = tiny_model()
    old.save_pretrained(tmp_path, max_shard_size="100KB")
    (tmp_path / "notes.txt").write_text("kept")
    before = {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)}
    new = tiny_model()
    with torch.no_grad():
        for parameter in new.parameters():
            parameter.add_(1.0)
    real_save_file, calls = safetensors.torch.save_file, []

    def failing_save_file(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # die in the middle of writing the shards
            raise KeyboardInterrupt
        return real_save_file(*args, **kwargs)

    monkeypatch.setattr(safetensors.torch, "save_file", failing_save_file)
    import transformers.modeling_utils as modeling_utils

    monkeypatch.setattr(modeling_utils, "safe_save_file", failing_save_file, raising=False)
    with pytest.raises(KeyboardInterrupt):
        new.save_pretrained(tmp_path, max_shard_size="100KB")
    assert calls, "the save never reached the weight files"
    assert {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)} == before
    assert not [p for p in os.listdir(tmp_path.parent) if ".saving-" in p]
    monkeypatch.undo()
    new.save_pretrained(tmp_path, max_shard_size="100KB")
    assert (tmp_path / "notes.txt").read_text() == "kept"
    loaded = StormForConditionalGeneration.from_pretrained(tmp_path)
    torch.testing.assert_close(loaded.lm_head.weight, new.lm_head.weight)


def test_saving_over_a_folder_keeps_everything_it_does_not_replace(tmp_path):
    """Subfolders (training checkpoints), other weight files (a LoRA adapter) and other files stay; the old
    model weights go, including shards a smaller save no longer has."""
    folder = tmp_path / "out"
    tiny_model().save_pretrained(folder, max_shard_size="100KB")
    old_shards = {p.name for p in folder.glob("model-*.safetensors")}
    assert len(old_shards) > 1
    (folder / "checkpoint-3").mkdir()
    (folder / "checkpoint-3" / "optimizer.pt").write_bytes(b"state")
    (folder / "runs" / "logs").mkdir(parents=True)
    (folder / "runs" / "logs" / "events").write_text("log")
    (folder / "adapter_model.safetensors").write_bytes(b"adapter")
    (folder / "pytorch_model.bin").write_bytes(b"stale pickle")
    (folder / "README.md").write_text("card")
    new = tiny_model()
    with torch.no_grad():
        new.lm_head.weight.add_(1.0)
    new.save_pretrained(folder)  # one file this time
    names = set(os.listdir(folder))
    assert (folder / "checkpoint-3" / "optimizer.pt").read_bytes() == b"state"
    assert (folder / "runs" / "logs" / "events").read_text() == "log"
    assert (folder / "adapter_model.safetensors").read_bytes() == b"adapter"
    assert (folder / "README.md").read_text() == "card"
    assert "model.safetensors" in names and not names & old_shards and "model.safetensors.index.json" not in names
    assert "pytorch_model.bin" not in names  # old weights of the model it replaces
    assert not [p for p in os.listdir(tmp_path) if ".saving-" in p or ".previous-" in p]
    torch.testing.assert_close(StormForConditionalGeneration.from_pretrained(folder).lm_head.weight, new.lm_head.weight)


def test_a_save_that_fails_after_moving_entries_puts_them_back(tmp_path, monkeypatch):
    folder = tmp_path / "out"
    tiny_model().save_pretrained(folder)
    (folder / "checkpoint-3").mkdir()
    (folder / "checkpoint-3" / "state.json").write_text("{}")
    before = sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))
    real_rename, calls = os.rename, []

    def rename(src, dst):
        calls.append((src, dst))
        if str(src) == str(folder):  # the swap itself fails
            raise OSError("disk went away")
        return real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(OSError, match="disk went away"):
        tiny_model().save_pretrained(folder)
    monkeypatch.undo()
    assert any("checkpoint-3" in str(src) for src, _ in calls)  # it had been moved aside
    assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) == before
    assert not [p for p in os.listdir(tmp_path) if ".saving-" in p]


def test_saves_keep_the_models_own_parameter_names(tmp_path):
    """Whatever renamings the load recorded: DeepSpeed ZeRO-3's loader records every one transformers knows for the
    model, the legacy ones included, and transformers' save reverted them (model.language_model.model.*,
    model.vision_tower.vision_model.*). The recorded list comes back after the save."""
    from safetensors import safe_open
    from transformers.conversion_mapping import get_model_conversion_mapping

    model = tiny_model()
    names = set(model.state_dict())
    recorded = get_model_conversion_mapping(model, add_legacy=True)
    model._weight_conversions = recorded  # as DeepSpeed ZeRO-3's from_pretrained leaves it
    model.save_pretrained(tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        assert set(f.keys()) == names
    assert model._weight_conversions is recorded


def test_sharded_save_round_trip(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path, max_shard_size="100KB")
    shards = [f for f in os.listdir(tmp_path) if f.endswith(".safetensors")]
    assert len(shards) > 1 and "model.safetensors.index.json" in os.listdir(tmp_path)
    loaded = StormForConditionalGeneration.from_pretrained(tmp_path)
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        torch.testing.assert_close(a, b, msg=name)
    assert isinstance(StormModel.from_pretrained(tmp_path), StormModel)


OFFLINE_PULL = """
import sys
import storm_hf
from transformers import AutoModelForImageTextToText, AutoProcessor
model = AutoModelForImageTextToText.from_pretrained("storm-org/storm-tiny")
processor = AutoProcessor.from_pretrained("storm-org/storm-tiny")
print(type(model).__name__, type(processor).__name__)
try:
    AutoModelForImageTextToText.from_pretrained("storm-org/not-there")
except OSError as error:
    print("missing:", type(error).__name__, str(error).splitlines()[0])
"""


def test_offline_pull_from_a_populated_cache(saved, tmp_path):
    folder, _ = saved
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--storm-org--storm-tiny"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name in os.listdir(folder):
        (snapshot / name).write_bytes((folder / name).read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub"),
           "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run([sys.executable, "-c", OFFLINE_PULL], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "StormForConditionalGeneration StormProcessor" in result.stdout
    # The Hub's own error (an OSError saying the files are neither reachable nor cached), not one of ours.
    assert "missing: OSError" in result.stdout and "cached files" in result.stdout


def test_push_to_hub_uploads_the_saved_files_and_a_model_card(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from transformers.utils import hub

    uploaded = {}

    class FakeApi:
        def create_repo(self, repo_id, **kwargs):
            return SimpleNamespace(repo_id=repo_id)

    monkeypatch.setattr(hub, "hf_api", lambda: FakeApi())
    model = tiny_model()

    def record(folder, repo_id, **kwargs):
        uploaded["files"] = sorted(os.listdir(folder))
        uploaded["card"] = open(os.path.join(folder, "README.md")).read()
        uploaded["repo"] = repo_id
        return "https://example.invalid/commit"

    monkeypatch.setattr(model, "_upload_modified_files", record)
    model.push_to_hub("storm-org/storm-tiny", base_models=["google/siglip-so400m-patch14-384", "Qwen/Qwen2-7B"])
    model.save_pretrained(tmp_path / "local")
    assert uploaded["repo"] == "storm-org/storm-tiny"
    assert uploaded["files"] == sorted(os.listdir(tmp_path / "local") + ["README.md"])
    card = uploaded["card"]
    for expected in ("library_name: transformers", "pipeline_tag: image-text-to-text",
                     "- google/siglip-so400m-patch14-384", "- Qwen/Qwen2-7B", "| temporal pooling k | 4 |",
                     'AutoModelForImageTextToText.from_pretrained("storm-org/storm-tiny", trust_remote_code=True)'):
        assert expected in card, expected
