"""Behaving like a model that ships inside transformers (the behaviours its common model tests check, on
our model), and fidelity to mamba_ssm where the docs claim it."""

import math
import warnings

import pytest
import torch

from storm_hf import StormForConditionalGeneration, StormMambaMixer

from .conftest import tiny_config, tiny_model, video_prompt


def video_inputs(config, frames=4):
    torch.manual_seed(1)
    return {"input_ids": video_prompt(config, [frames]), "pixel_values_videos": torch.randn(1, frames, 3, 32, 32)}


# -- 1. the old cache name ----------------------------------------------------------------------------------


def test_past_key_values_is_accepted_with_a_deprecation_warning():
    model = tiny_model()
    inputs = video_inputs(model.config)
    ids = inputs["input_ids"]
    with torch.no_grad():
        full = model(input_ids=torch.cat([ids, torch.tensor([[7]])], 1), pixel_values_videos=inputs["pixel_values_videos"])
        prefill = model(**inputs, use_cache=True)
        with_new_name = model(input_ids=torch.tensor([[7]]), cache=prefill.cache)
        prefill = model(**inputs, use_cache=True)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with_old_name = model(input_ids=torch.tensor([[7]]), past_key_values=prefill.cache)
    torch.testing.assert_close(with_old_name.logits[:, -1], full.logits[:, -1], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(with_old_name.logits, with_new_name.logits)
    assert any("past_key_values" in str(w.message) for w in caught)


# -- 2. feature getters --------------------------------------------------------------------------------------


def test_feature_getters_return_the_encoder_outputs_and_honour_return_dict():
    model = tiny_model(attn_implementation="eager")
    video = torch.randn(2, 4, 3, 32, 32)
    with torch.no_grad():
        out = model.get_video_features(video, output_hidden_states=True, output_attentions=True)
        layers = model.config.vision_config.num_hidden_layers
        assert out.last_hidden_state.shape == (8, 64, 32)  # all frames, 8 x 8 patches, encoder width
        assert len(out.hidden_states) == layers + 1 and len(out.attentions) == layers
        assert [f.shape for f in out.pooler_output] == [(model.config.num_visual_tokens(4), 32)] * 2
        plain = model.get_video_features(video)
        assert plain.hidden_states is None and plain.attentions is None
        as_tuple = model.get_video_features(video, return_dict=False)
        assert isinstance(as_tuple, tuple)
        torch.testing.assert_close(as_tuple[0], plain.last_hidden_state)
        images = model.get_image_features(video[:, 0], return_dict=False)
        assert isinstance(images, tuple) and [f.shape[0] for f in images[1]] == [model.config.num_visual_tokens(1)] * 2


# -- 3 and 6. initialisation ---------------------------------------------------------------------------------


def wide_config(**overrides):
    """Wide enough for per-parameter statistics (d_inner 256)."""
    return tiny_config(
        vision_config={"model_type": "siglip_vision_model", "hidden_size": 64, "intermediate_size": 256,
                       "num_hidden_layers": 1, "num_attention_heads": 2, "image_size": 32, "patch_size": 4},
        text_config={"model_type": "qwen2", "vocab_size": 512, "hidden_size": 128, "intermediate_size": 256,
                     "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2},
        temporal_num_layers=3, temporal_d_state=16, **overrides)


def assert_same_distribution(a, b, name):
    a, b = a.detach().double().flatten(), b.detach().double().flatten()
    if b.numel() < 64 or b.std() == 0:
        torch.testing.assert_close(a, b, msg=name)  # constants (norms, zero biases, A_log, D)
        return
    assert abs(a.mean() - b.mean()) <= 4 * b.std() * math.sqrt(2 / b.numel()) + 1e-12, name
    assert abs(a.std() - b.std()) <= 0.15 * b.std(), name


def test_missing_weights_get_the_init_of_construction(tmp_path):
    """Every weight absent from a checkpoint is drawn as at construction (SigLIP's xavier Linears included)."""
    from safetensors.torch import save_file

    torch.manual_seed(0)
    built = StormForConditionalGeneration(wide_config())
    built.save_pretrained(tmp_path)
    save_file({}, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})  # every weight missing
    torch.manual_seed(1)
    loaded = StormForConditionalGeneration.from_pretrained(tmp_path)
    for (name, a), (_, b) in zip(loaded.named_parameters(), built.named_parameters()):
        assert_same_distribution(a, b, name)


@pytest.mark.parametrize("bidirectional", [True, False])
def test_mixer_parameters_follow_mamba_ssm_formulas(bidirectional):
    torch.manual_seed(0)
    config = wide_config(temporal_bidirectional=bidirectional)
    mixer = StormForConditionalGeneration(config).model.temporal_encoder.layers[1].forward_mixer
    d_model, d_inner, d_state, d_conv = 128, 256, 16, 4
    dt_rank = math.ceil(d_model / 16)

    def uniform(tensor, bound, name):  # U(-bound, bound): range, mean and std bound / sqrt(3)
        t = tensor.detach().double()
        assert t.abs().max() <= bound * (1 + 1e-6) and t.abs().max() > 0.95 * bound, name
        assert abs(t.mean()) < 4 * bound / math.sqrt(3 * t.numel()), name
        assert abs(t.std() - bound / math.sqrt(3)) < 0.1 * bound / math.sqrt(3), name

    uniform(mixer.in_proj.weight, 1 / math.sqrt(d_model), "in_proj")  # PyTorch's Linear default
    uniform(mixer.x_proj.weight, 1 / math.sqrt(d_inner), "x_proj")
    uniform(mixer.conv1d.weight, 1 / math.sqrt(d_conv), "conv1d.weight")
    uniform(mixer.conv1d.bias, 1 / math.sqrt(d_conv), "conv1d.bias")  # not zeroed (mamba_ssm leaves it)
    uniform(mixer.dt_proj.weight, dt_rank**-0.5, "dt_proj.weight")
    residuals = (2 if bidirectional else 1) * 3  # both directions write into each of the 3 layers' residual
    uniform(mixer.out_proj.weight, 1 / math.sqrt(d_inner) / math.sqrt(residuals), "out_proj")
    dt = torch.nn.functional.softplus(mixer.dt_proj.bias.detach().double())
    assert dt.min() >= 1e-3 * (1 - 1e-6) and dt.max() <= 0.1 * (1 + 1e-6)
    log_dt = dt.log()  # log-uniform on [log 1e-3, log 0.1]
    assert abs(log_dt.mean() - (math.log(1e-3) + math.log(0.1)) / 2) < 4 * (math.log(100) / math.sqrt(12)) / math.sqrt(d_inner)
    torch.testing.assert_close(mixer.A_log.detach(), torch.log(torch.arange(1, d_state + 1.0)).expand(d_inner, -1))
    torch.testing.assert_close(mixer.D.detach(), torch.ones(d_inner))


# -- 4. tensor parallelism -----------------------------------------------------------------------------------


def test_tensor_parallel_plan_covers_the_head_of_the_sharded_embeddings():
    model = tiny_model()
    assert StormForConditionalGeneration._tp_plan == {"lm_head": "colwise_gather_output"}
    assert "embed_tokens" in model.model.language_model._tp_plan


# -- 5. static cache and torch.compile -----------------------------------------------------------------------


def test_static_cache_generation_equals_the_dynamic_cache():
    model = tiny_model()
    inputs = video_inputs(model.config)
    with torch.no_grad():
        dynamic = model.generate(**inputs, max_new_tokens=6, min_new_tokens=6, do_sample=False)
        static = model.generate(**inputs, max_new_tokens=6, min_new_tokens=6, do_sample=False,
                                cache_implementation="static")
    assert static.tolist() == dynamic.tolist()


def test_compiled_forward_and_decoding_equal_eager():
    """fullgraph=True: the whole forward (image encoder, temporal encoder, scan, placeholder check, LLM)
    is one graph, in which each scan is one `storm_hf::selective_scan_fwd` op (its per-step loop is not traced).
    The dynamo-only backend keeps the test fast; inductor gives the same within 2e-7 here."""
    from transformers import CompileConfig

    assert StormForConditionalGeneration._can_compile_fullgraph
    model = tiny_model()
    inputs = video_inputs(model.config)
    graphs = []

    def recording(gm, example_inputs):  # dynamo's graph, run as it is (the "eager" backend)
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    with torch.no_grad():
        eager = model(**inputs).logits
        compiled = torch.compile(model, backend=recording, fullgraph=True)(**inputs).logits
        torch.testing.assert_close(compiled, eager)
        targets = [str(n.target) for n in graphs[0].graph.nodes if n.op == "call_function"]
        scans = 2 * model.config.temporal_num_layers  # bidirectional: one scan per direction and layer
        assert len(graphs) == 1 and sum("storm_hf.selective_scan_fwd" in t for t in targets) == scans
        assert not any("addcmul" in t for t in targets)
        compile_config = CompileConfig(backend="eager", fullgraph=True)
        compile_config._compile_all_devices = True  # transformers compiles decoding on GPUs only by default
        decoded = model.generate(**inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False,
                                 cache_implementation="static", compile_config=compile_config)
        plain = model.generate(**inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert decoded.tolist() == plain.tolist()


@pytest.mark.parametrize("with_frame_counts", [True, False], ids=["processor-inputs", "no-video_num_frames"])
def test_exported_program_with_a_video_equals_eager(with_frame_counts):
    """torch.export (non-strict) of the whole forward with a video: each scan is one op in the program, the
    frame counts come from the static shape (a `video_num_frames` tensor, as the processor gives, is checked when
    the program runs) and the exported program's logits equal eager."""
    model = tiny_model()
    inputs = {**video_inputs(model.config), "use_cache": False}
    inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
    if with_frame_counts:
        inputs["video_num_frames"] = torch.tensor([4])
    torch._dynamo.reset()
    with torch.no_grad():
        eager = model(**inputs).logits
        program = torch.export.export(model, (), kwargs=inputs, strict=False)
        targets = [str(n.target) for m in program.graph_module.modules() if isinstance(m, torch.fx.GraphModule)
                   for n in m.graph.nodes if n.op == "call_function"]  # nested graphs (e.g. autocast regions) too
        assert sum("storm_hf.selective_scan_fwd" in t for t in targets) == 2 * model.config.temporal_num_layers
        assert not any("addcmul" in t for t in targets)
        torch.testing.assert_close(program.module()(**inputs).logits, eager, rtol=0, atol=0)
        other = {**inputs, "pixel_values_videos": torch.randn_like(inputs["pixel_values_videos"])}
        torch.testing.assert_close(program.module()(**other).logits, model(**other).logits, rtol=0, atol=0)
        if with_frame_counts:  # a padded video: the exported program took every video as full length, and says so
            with pytest.raises(RuntimeError, match="[Aa]ssert"):
                program.module()(**{**inputs, "video_num_frames": torch.tensor([3])})


# -- 7. fp32 SSM parameters ----------------------------------------------------------------------------------


def test_a_log_and_d_stay_fp32_on_every_path(tmp_path):
    model = tiny_model()
    fp32 = {name: value.clone() for name, value in model.state_dict().items() if name.endswith(("A_log", ".D"))}
    model.to(torch.bfloat16)
    mixers = [m for m in model.modules() if isinstance(m, StormMambaMixer)]
    assert mixers and all(m.A_log.dtype == m.D.dtype == torch.float32 for m in mixers)
    assert all(m.in_proj.weight.dtype == torch.bfloat16 for m in mixers)
    model.half()
    assert all(m.A_log.dtype == torch.float32 for m in mixers)
    # Their values too, not a round trip through bf16 / fp16 (DeepSpeed's bf16 master weights start from these).
    state = model.state_dict()
    assert all(torch.equal(state[name], value) for name, value in fp32.items())
    model.float().save_pretrained(tmp_path)
    loaded = StormForConditionalGeneration.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert all(m.A_log.dtype == m.D.dtype == torch.float32 for m in loaded.modules() if isinstance(m, StormMambaMixer))
    inputs = video_inputs(loaded.config)
    with torch.no_grad():
        assert loaded(**inputs).logits.dtype == torch.bfloat16


def test_from_parts_with_a_dtype_keeps_a_log_and_d_fp32(tmp_path):
    from transformers import Qwen2Config, Qwen2ForCausalLM, SiglipVisionConfig, SiglipVisionModel

    from storm_hf.miniature.tiny import word_tokenizer

    SiglipVisionModel(SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, image_size=32, patch_size=4)).save_pretrained(tmp_path / "v")
    Qwen2ForCausalLM(Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                                 num_key_value_heads=2, vocab_size=512)).save_pretrained(tmp_path / "t")
    word_tokenizer(["a"]).save_pretrained(tmp_path / "t")
    model = StormForConditionalGeneration.from_vision_text_pretrained(tmp_path / "v", tmp_path / "t", dtype=torch.bfloat16)
    mixers = [m for m in model.modules() if isinstance(m, StormMambaMixer)]
    assert all(m.A_log.dtype == m.D.dtype == torch.float32 and m.in_proj.weight.dtype == torch.bfloat16 for m in mixers)


# -- 8. weight decay -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("stage", ["sft", "lora"])
def test_optimizer_takes_no_weight_decay_on_ssm_parameters_norms_and_biases(tmp_path, stage):
    from transformers import TrainingArguments

    from storm_hf.training.job import StormTrainer
    from storm_hf.training import apply_training_stage

    model = apply_training_stage(tiny_model(temporal_bias=True, projector_bias=True), stage, lora_rank=4)
    args = TrainingArguments(output_dir=str(tmp_path), weight_decay=0.1, report_to=[], use_cpu=True)
    optimizer = StormTrainer(model=model, args=args).create_optimizer()
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for group in optimizer.param_groups if group["weight_decay"] > 0 for p in group["params"]}
    free = {names[id(p)] for group in optimizer.param_groups if group["weight_decay"] == 0 for p in group["params"]}
    assert decayed and free and not decayed & free
    assert decayed | free == {n for n, p in model.named_parameters() if p.requires_grad}
    for name in decayed:
        assert not name.endswith((".A_log", ".D", ".bias")) and ".norm." not in name and "layernorm" not in name, name
    assert any(n.endswith(".A_log") for n in free) and any(n.endswith(".D") for n in free)
    assert any(".temporal_encoder." in n and n.endswith("in_proj.weight") for n in decayed)


@pytest.mark.parametrize("stage", ["sft", "lora"])
def test_part_learning_rates_give_a_part_its_own_peak_on_the_same_schedule(tmp_path, stage):
    from transformers import TrainingArguments

    from storm_hf.training import apply_training_stage
    from storm_hf.training.job import StormTrainer

    model = apply_training_stage(tiny_model(), stage, lora_rank=4)
    args = TrainingArguments(output_dir=str(tmp_path), learning_rate=1e-3, weight_decay=0.1, warmup_steps=2,
                             lr_scheduler_type="cosine", report_to=[], use_cpu=True)
    names = {id(p): n for n, p in model.named_parameters()}

    def decay_by_name(optimizer):
        return {names[id(p)]: group["weight_decay"] for group in optimizer.param_groups for p in group["params"]}

    plain = decay_by_name(StormTrainer(model=model, args=args).create_optimizer())
    trainer = StormTrainer(model=model, args=args)
    trainer.part_learning_rates = {"temporal_encoder": 5e-3}
    optimizer = trainer.create_optimizer()
    assert decay_by_name(optimizer) == plain  # weight decay as without part rates (none on A_log / D)
    by_rate = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            by_rate.setdefault(group["lr"], set()).add(names[id(p)])
    assert set(by_rate) == {1e-3, 5e-3}
    assert by_rate[5e-3] == {n for n, p in model.named_parameters() if p.requires_grad and ".temporal_encoder." in n}
    assert sum(len(v) for v in by_rate.values()) == sum(p.requires_grad for p in model.parameters())
    scheduler = trainer.create_scheduler(10, optimizer)
    for _ in range(5):
        optimizer.step()
        scheduler.step()
    rates = {group["lr"] / group["initial_lr"] for group in optimizer.param_groups}
    assert len(rates) == 1 and 0 < rates.pop() < 1  # every group at the same point of the same schedule
