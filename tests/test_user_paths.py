"""The paths transformers users take first, where a model can go silently wrong: PEFT LoRA on every Linear,
accelerate offloading the temporal encoder to disk, batched generation with the processor's defaults,
placeholders that come without pixels, and the configs' output flags in the feature getters."""

import json
import os

import pytest
import torch

from storm_hf import StormConfig, StormForConditionalGeneration, StormMambaMixer, StormProcessor
from storm_hf import modeling_storm

from .conftest import tiny_config, tiny_model, video_prompt


def video_inputs(config, frames=4, seed=1):
    torch.manual_seed(seed)
    return {"input_ids": video_prompt(config, [frames]), "pixel_values_videos": torch.randn(1, frames, 3, 32, 32)}


# -- every part of the mixer is called as a module -----------------------------------------------------------


def test_all_linear_lora_trains_every_adapter_and_merges_to_the_same_model():
    from peft import LoraConfig, get_peft_model

    model = tiny_model()
    inputs = video_inputs(model.config)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    wrapped = {name.split("base_model.model.")[-1] for name, m in peft_model.named_modules() if hasattr(m, "lora_A")}
    for part in ("in_proj", "x_proj", "dt_proj", "out_proj"):  # dt_proj was read by .weight: its adapter was dead
        assert f"model.temporal_encoder.layers.1.backward_mixer.{part}" in wrapped
    peft_model.train()
    peft_model(**inputs, labels=inputs["input_ids"]).loss.backward()
    adapters = {n: p for n, p in peft_model.named_parameters() if "lora_" in n}
    assert len(adapters) == 2 * len(wrapped)
    dead = [n for n, p in adapters.items() if p.grad is None or p.grad.abs().max() == 0]
    assert not dead, f"adapters without a gradient: {dead}"
    peft_model.eval()
    with torch.no_grad():
        with_adapters = peft_model(**inputs).logits
        merged = peft_model.merge_and_unload()
        assert all(type(m.dt_proj) is torch.nn.Linear for m in merged.modules() if isinstance(m, StormMambaMixer))
        torch.testing.assert_close(merged(**inputs).logits, with_adapters, rtol=1e-4, atol=1e-4)


def test_the_fused_kernel_runs_only_on_plain_parts(monkeypatch):
    """mamba_ssm's fused kernel reads the weights itself: a wrapped, hooked or offloaded part must be called."""
    from accelerate.hooks import ModelHook, add_hook_to_module
    from peft import LoraConfig, get_peft_model

    monkeypatch.setattr(modeling_storm, "fused_mixer_available", lambda hidden_states: True)
    x = torch.randn(1, 4, 16)
    mixer = StormMambaMixer(d_model=16, d_state=4)
    assert mixer.runs_fused(x)
    add_hook_to_module(mixer.x_proj, ModelHook())
    assert not mixer.runs_fused(x)

    class Holder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.mixer = StormMambaMixer(d_model=16, d_state=4)

    lora = get_peft_model(Holder(), LoraConfig(r=2, target_modules=["dt_proj"]))
    assert not lora.base_model.model.mixer.runs_fused(x)


@pytest.fixture(scope="module")
def saved_tiny(tmp_path_factory):
    def save(**overrides):
        folder = tmp_path_factory.mktemp("tiny")
        torch.manual_seed(0)
        model = StormForConditionalGeneration(tiny_config(**overrides)).eval()
        model.save_pretrained(folder)
        return model, folder
    return save


@pytest.mark.parametrize("layout", [{}, dict(temporal_share_projections=True, temporal_inference_chunk_tokens=7),
                                    dict(temporal_bidirectional=False, temporal_inference_chunk_tokens=7)])
def test_temporal_encoder_offloaded_to_disk_generates_what_the_model_in_memory_does(saved_tiny, tmp_path, layout):
    model, folder = saved_tiny(**layout)
    inputs = video_inputs(model.config)
    expected = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    device_map = {"model.vision_tower": "cpu", "model.projector": "cpu", "model.temporal_encoder": "disk",
                  "model.language_model": "cpu", "lm_head": "cpu"}
    offloaded = StormForConditionalGeneration.from_pretrained(folder, device_map=device_map,
                                                              offload_folder=str(tmp_path / "offload")).eval()
    mixer = offloaded.model.temporal_encoder.layers[0].forward_mixer
    assert mixer.A_log.is_meta and mixer.dt_proj.weight.is_meta  # really on disk, loaded per call
    assert offloaded.generate(**inputs, max_new_tokens=6, do_sample=False).tolist() == expected.tolist()


def test_a_memory_limit_offloads_and_generates_the_same(saved_tiny, tmp_path):
    model, folder = saved_tiny()
    inputs = video_inputs(model.config)
    expected = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    limited = StormForConditionalGeneration.from_pretrained(folder, device_map="auto", max_memory={"cpu": "300KB"},
                                                            offload_folder=str(tmp_path / "offload")).eval()
    assert "disk" in set(limited.hf_device_map.values())
    assert limited.generate(**inputs, max_new_tokens=6, do_sample=False).tolist() == expected.tolist()


# -- batched generation ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bundled():
    from storm_hf.miniature import BUNDLED_MODEL

    model = StormForConditionalGeneration.from_pretrained(BUNDLED_MODEL).eval()
    processor = StormProcessor.from_pretrained(BUNDLED_MODEL)
    clips_dir = os.path.join(os.path.dirname(BUNDLED_MODEL), "demo-clips")
    with open(os.path.join(clips_dir, "clips.json")) as f:
        clips = json.load(f)
    return model, processor, clips_dir, clips


def prompt(processor, question):
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}]
    return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def test_batched_generation_with_the_processors_defaults_equals_one_by_one(bundled):
    model, processor, clips_dir, clips = bundled
    assert processor.tokenizer.padding_side == "left"
    chosen = clips[:3]
    texts = [prompt(processor, clip["question"]) for clip in chosen]
    videos = [os.path.join(clips_dir, clip["video"]) for clip in chosen]
    assert len({len(processor.tokenizer(t).input_ids) for t in texts}) > 1  # prompts of different lengths: padding
    one_by_one = []
    for text, video in zip(texts, videos):
        inputs = processor(text=text, videos=[video], num_frames=16, return_tensors="pt")
        out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
        one_by_one.append(processor.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
    batch = processor(text=texts, videos=videos, num_frames=16, return_tensors="pt")
    out = model.generate(**batch, max_new_tokens=4, do_sample=False)
    batched = processor.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    assert batched == one_by_one
    assert all(answer.strip() for answer in batched)  # right padding gave ['', '', ''] here

    right = processor(text=texts, videos=videos, num_frames=16, return_tensors="pt", padding_side="right")
    with pytest.warns(UserWarning, match=r"end in padding .* padded on the right.*padding_side='left'"):
        model.generate(**right, max_new_tokens=4)


def test_a_saved_right_padding_choice_is_kept_and_training_pads_right(tmp_path, bundled):
    from storm_hf.training import StormDataCollator

    _, processor, clips_dir, clips = bundled
    processor.save_pretrained(tmp_path / "default")
    assert json.loads((tmp_path / "default" / "tokenizer_config.json").read_text())["padding_side"] == "left"
    reloaded = StormProcessor.from_pretrained(tmp_path / "default")
    reloaded.tokenizer.padding_side = "right"
    reloaded.save_pretrained(tmp_path / "right")
    assert StormProcessor.from_pretrained(tmp_path / "right").tokenizer.padding_side == "right"
    records = [{"video": clip["video"], "messages": [
        {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": clip["question"]}]},
        {"role": "assistant", "content": "yes" if i else "it moves to the left now"}]} for i, clip in enumerate(clips[:2])]
    batch = StormDataCollator(processor, video_root=clips_dir, num_frames=4)(records)
    assert batch["attention_mask"][:, 0].all() and not batch["attention_mask"][:, -1].all()  # padded on the right


# -- placeholders without pixels -------------------------------------------------------------------------------


def test_placeholders_without_pixels_are_refused_by_forward_and_generate():
    model = tiny_model()
    inputs = video_inputs(model.config)
    n = int((inputs["input_ids"] == model.config.video_token_id).sum())
    with pytest.raises(ValueError, match=rf"{n} video placeholder tokens \(id {model.config.video_token_id}\) but no "
                                         r"pixel_values_videos"):
        model(input_ids=inputs["input_ids"])
    with pytest.raises(ValueError, match="but no pixel_values_videos"):
        model.generate(input_ids=inputs["input_ids"], max_new_tokens=2)
    image_ids = torch.tensor([[1, model.config.image_token_id, 2]])
    with pytest.raises(ValueError, match="1 image placeholder tokens .* but no pixel_values"):
        model(input_ids=image_ids)
    with torch.no_grad():  # a decoding step may emit the placeholder id like any other token
        prefill = model(**inputs, use_cache=True)
        step = model(input_ids=torch.tensor([[model.config.video_token_id]]), cache=prefill.cache)
        assert torch.isfinite(step.logits).all()
        model(input_ids=torch.tensor([[1, 2, 3]]))  # text only: fine


# -- the configs' output flags -------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["composite", "vision"])
def test_feature_getters_follow_the_configs_output_flags(where):
    model = tiny_model(attn_implementation="eager")
    target = model.config if where == "composite" else model.config.vision_config
    target.output_hidden_states = True
    target.output_attentions = True
    layers = model.config.vision_config.num_hidden_layers
    with torch.no_grad():
        for out in (model.get_video_features(torch.randn(2, 4, 3, 32, 32)),
                    model.get_image_features(torch.randn(2, 3, 32, 32))):
            assert len(out.hidden_states) == layers + 1 and len(out.attentions) == layers
        off = model.get_video_features(torch.randn(1, 4, 3, 32, 32), output_hidden_states=False, output_attentions=False)
        assert off.hidden_states is None and off.attentions is None  # the call's own setting wins


def test_a_storm_assistant_drafts_from_the_text_and_greedy_output_is_unchanged():
    """transformers gives an assistant model no pixels: a STORM assistant drafts from the text (as other VLM
    assistants do) instead of refusing its placeholders; the main model verifies every token with the video."""
    model, assistant = tiny_model(), StormForConditionalGeneration(tiny_config()).eval()
    inputs = video_inputs(model.config)
    greedy = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    assisted = model.generate(**inputs, max_new_tokens=6, do_sample=False, assistant_model=assistant)
    assert assisted.tolist() == greedy.tolist()
    with pytest.raises(ValueError, match="but no pixel_values_videos"):  # only for that call
        assistant(input_ids=inputs["input_ids"])
