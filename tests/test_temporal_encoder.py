"""The Mamba mixer (mamba_ssm names, shapes, init and function) and the temporal encoder."""


import pytest
import torch
from transformers import MambaConfig
from transformers.models.mamba.modeling_mamba import MambaMixer

from storm_hf import StormMambaMixer, StormTemporalEncoder
from storm_hf.selective_scan import selective_scan_sequential

from .conftest import tiny_config


def test_parameter_names_and_shapes_are_mamba_ssm():
    mixer = StormMambaMixer(d_model=32, d_state=16, d_conv=4, expand=2)  # dt_rank auto = ceil(32 / 16) = 2
    shapes = {name: tuple(p.shape) for name, p in mixer.named_parameters()}
    assert shapes == {
        "in_proj.weight": (128, 32),
        "conv1d.weight": (64, 1, 4),
        "conv1d.bias": (64,),
        "x_proj.weight": (2 + 32, 64),
        "dt_proj.weight": (64, 2),
        "dt_proj.bias": (64,),
        "A_log": (64, 16),
        "D": (64,),
        "out_proj.weight": (32, 64),
    }
    biased = StormMambaMixer(d_model=32, bias=True, conv_bias=False, dt_rank=5)
    names = {name for name, _ in biased.named_parameters()}
    assert {"in_proj.bias", "out_proj.bias"} <= names and "conv1d.bias" not in names
    assert biased.x_proj.weight.shape == (5 + 32, 64)


def test_mamba_ssm_initialisation():
    mixer = StormMambaMixer(d_model=64, d_state=8)
    torch.testing.assert_close(mixer.A_log, torch.log(torch.arange(1, 9.0)).expand(128, 8))
    torch.testing.assert_close(mixer.D, torch.ones(128))
    assert mixer.A_log.dtype == torch.float32 and mixer.A_log._no_weight_decay and mixer.D._no_weight_decay
    dt = torch.nn.functional.softplus(mixer.dt_proj.bias)
    assert dt.min() >= 1e-3 * 0.999 and dt.max() <= 0.1 * 1.001
    bound = mixer.dt_rank**-0.5
    assert mixer.dt_proj.weight.abs().max() <= bound


def test_model_init_keeps_mamba_initialisation():
    from storm_hf import StormForConditionalGeneration

    model = StormForConditionalGeneration(tiny_config())
    for layer in model.model.temporal_encoder.layers:
        for mixer in (layer.forward_mixer, layer.backward_mixer):
            torch.testing.assert_close(mixer.A_log.detach(), torch.log(torch.arange(1, 5.0)).expand(64, 4))
            torch.testing.assert_close(mixer.D.detach(), torch.ones(64))
            dt = torch.nn.functional.softplus(mixer.dt_proj.bias.detach())
            assert dt.min() >= 0.999e-3 and dt.max() <= 0.1001
            assert mixer.dt_proj.weight.abs().max() <= mixer.dt_rank**-0.5


def mixer_reference(mixer: StormMambaMixer, x: torch.Tensor) -> torch.Tensor:
    """mamba_simple.Mamba's non-fused forward, written out in float64 with the per-step scan."""
    m = {k: v.double() for k, v in mixer.state_dict().items()}
    x = x.double()
    xz = x @ m["in_proj.weight"].T  # (batch, length, 2 * d_inner)
    u, z = xz.chunk(2, dim=-1)
    u = torch.nn.functional.conv1d(u.transpose(1, 2), m["conv1d.weight"], m["conv1d.bias"],
                                   padding=mixer.d_conv - 1, groups=mixer.d_inner)[..., : x.shape[1]]
    u = torch.nn.functional.silu(u).transpose(1, 2)
    dt, B, C = torch.split(u @ m["x_proj.weight"].T, [mixer.dt_rank, mixer.d_state, mixer.d_state], dim=-1)
    y = selective_scan_sequential(u, dt @ m["dt_proj.weight"].T, -torch.exp(m["A_log"]), B, C, m["D"], z,
                                  m["dt_proj.bias"], delta_softplus=True)
    return y @ m["out_proj.weight"].T


def test_mixer_matches_sequential_float64_reference():
    mixer = StormMambaMixer(d_model=16, d_state=4, expand=2)
    x = torch.randn(2, 45, 16)
    torch.testing.assert_close(mixer(x).double(), mixer_reference(mixer, x), rtol=1e-4, atol=1e-5)


def test_weights_interchange_with_transformers_mamba_mixer():
    """transformers' MambaMixer is an independent port of mamba_simple.Mamba with the same names."""
    mixer = StormMambaMixer(d_model=16, d_state=8, d_conv=4, expand=2)
    config = MambaConfig(hidden_size=16, state_size=8, conv_kernel=4, expand=2, time_step_rank=mixer.dt_rank,
                         num_hidden_layers=1, use_bias=False, use_conv_bias=True)
    theirs = MambaMixer(config, layer_idx=0).eval()
    theirs.load_state_dict(mixer.state_dict())  # ours -> theirs
    x = torch.randn(2, 33, 16)
    with torch.no_grad():
        torch.testing.assert_close(theirs(x), mixer(x), rtol=1e-4, atol=1e-5)
        back = StormMambaMixer(d_model=16, d_state=8, d_conv=4, expand=2)
        back.load_state_dict(theirs.state_dict())  # theirs -> ours
        torch.testing.assert_close(back(x), theirs(x), rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="mamba_ssm needs a CUDA GPU")
def test_weights_interchange_with_mamba_ssm():
    mamba_simple = pytest.importorskip("mamba_ssm.modules.mamba_simple")
    ref = mamba_simple.Mamba(d_model=64, d_state=16, d_conv=4, expand=2).cuda()
    ours = StormMambaMixer(d_model=64, d_state=16, d_conv=4, expand=2).cuda()
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(2, 256, 64, device="cuda")
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-3, atol=1e-4)
        ours.use_kernels = False
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-3, atol=1e-4)
    ref.load_state_dict(ours.state_dict())


def run_encoder(config, x):
    torch.manual_seed(0)
    encoder = StormTemporalEncoder(config).eval()
    with torch.no_grad():
        return encoder, encoder(x)


def test_forward_only_output_never_depends_on_later_tokens():
    config = tiny_config(temporal_bidirectional=False)
    x = torch.randn(1, 40, 32)
    encoder, out = run_encoder(config, x)
    changed = x.clone()
    changed[:, 25:] += torch.randn(1, 15, 32)
    with torch.no_grad():
        out_changed = encoder(changed)
    torch.testing.assert_close(out_changed[:, :25], out[:, :25])
    assert not torch.allclose(out_changed[:, 25:], out[:, 25:])


@pytest.mark.parametrize("merge", ["add", "mean", "concat"])
def test_bidirectional_output_depends_on_both_sides(merge):
    config = tiny_config(temporal_direction_merge=merge)
    x = torch.randn(1, 40, 32)
    encoder, out = run_encoder(config, x)
    assert out.shape == x.shape
    with torch.no_grad():
        early = x.clone()
        early[:, 30:] += torch.randn(1, 10, 32)  # a change late in the sequence reaches the first tokens
        assert not torch.allclose(encoder(early)[:, :10], out[:, :10])
        late = x.clone()
        late[:, :5] += torch.randn(1, 5, 32)
        assert not torch.allclose(encoder(late)[:, 35:], out[:, 35:])


def test_streaming_in_chunks_equals_one_call():
    config = tiny_config(temporal_bidirectional=False, temporal_num_layers=3)
    tokens_per_frame = config.tokens_per_frame
    frames = torch.randn(2, 9 * tokens_per_frame, 32)
    encoder, whole = run_encoder(config, frames)
    state, outputs = encoder.init_state(batch_size=2), []
    with torch.no_grad():
        for first, last in ((0, 1), (1, 2), (2, 6), (6, 9)):  # chunks of 1, 1, 4 and 3 frames
            chunk = frames[:, first * tokens_per_frame : last * tokens_per_frame]
            out, state = encoder.stream(chunk, state)
            outputs.append(out)
    torch.testing.assert_close(torch.cat(outputs, dim=1), whole, rtol=1e-5, atol=1e-5)


def test_streaming_state_without_initial_state_and_single_tokens():
    config = tiny_config(temporal_bidirectional=False)
    x = torch.randn(1, 7, 32)
    encoder, whole = run_encoder(config, x)
    with torch.no_grad():
        out, state = encoder.stream(x[:, :1])  # no state in: starts a stream
        pieces = [out]
        for t in range(1, 7):
            out, state = encoder.stream(x[:, t : t + 1], state)
            pieces.append(out)
    torch.testing.assert_close(torch.cat(pieces, dim=1), whole, rtol=1e-5, atol=1e-5)


def test_streaming_is_refused_for_the_bidirectional_encoder():
    encoder = StormTemporalEncoder(tiny_config())
    with pytest.raises(ValueError, match="forward-only"):
        encoder.stream(torch.randn(1, 16, 32))
    with pytest.raises(ValueError, match="temporal_bidirectional=False"):
        encoder.init_state(1)


def test_shared_projections_are_vision_mamba_style():
    """temporal_share_projections: one in_proj / out_proj for both directions, a convolution and SSM each."""
    config = tiny_config(temporal_share_projections=True)
    torch.manual_seed(0)
    encoder = StormTemporalEncoder(config).eval()
    block = encoder.layers[0]
    assert block.backward_mixer.in_proj is None and block.backward_mixer.out_proj is None
    x = torch.randn(2, 40, 32)
    with torch.no_grad():
        normed = block.norm(x)
        xz = block.forward_mixer.in_proj(normed)
        y = block.forward_mixer(xz, inner=True) + block.backward_mixer(xz.flip(1)).flip(1)
        torch.testing.assert_close(block(x), x + block.forward_mixer.out_proj(y))
        changed = x.clone()
        changed[:, 30:] += torch.randn(2, 10, 32)
        assert (block(changed)[:, :5] - block(x)[:, :5]).abs().max() > 1e-7  # early tokens see later ones
    separate = sum(p.numel() for p in StormTemporalEncoder(tiny_config()).parameters())
    assert sum(p.numel() for p in encoder.parameters()) < separate
    with pytest.raises(ValueError, match="not 'concat'"):
        tiny_config(temporal_share_projections=True, temporal_direction_merge="concat")


def test_shared_projections_save_and_load(tmp_path):
    from storm_hf import StormForConditionalGeneration

    torch.manual_seed(0)
    model = StormForConditionalGeneration(tiny_config(temporal_share_projections=True)).eval()
    model.save_pretrained(tmp_path)
    loaded = StormForConditionalGeneration.from_pretrained(tmp_path).eval()
    x = torch.randn(1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model.temporal_encoder(x), model.model.temporal_encoder(x))


def test_no_temporal_encoder_is_the_identity_baseline():
    """temporal_num_layers=0: the VILA-style baseline, same projector and reduction, frames independent."""
    from storm_hf import StormForConditionalGeneration

    config = tiny_config(temporal_num_layers=0, temporal_pool_k=4)
    encoder = StormTemporalEncoder(config)
    assert len(encoder.layers) == 0 and encoder.norm is None and not list(encoder.parameters())
    x = torch.randn(1, 48, 32)
    assert torch.equal(encoder(x), x)
    torch.manual_seed(0)
    model = StormForConditionalGeneration(config).eval()
    video = torch.randn(1, 8, 3, 32, 32)
    with torch.no_grad():
        features = model.get_video_features(video).pooler_output[0]
        tokens = model.model.encode_frames(video[0])  # (8, N, dim): each frame alone
        expected = model.model.reduce_tokens(tokens[None])[0].flatten(0, 1)
    torch.testing.assert_close(features, expected)
    assert features.shape[0] == config.num_visual_tokens(8)
    with pytest.raises(ValueError, match="non-negative integer"):
        tiny_config(temporal_num_layers=-1)


@pytest.mark.parametrize("layout", [
    dict(temporal_direction_merge="add"), dict(temporal_direction_merge="mean"),
    dict(temporal_direction_merge="concat"), dict(temporal_share_projections=True),
    dict(temporal_share_projections=True, temporal_direction_merge="mean"), dict(temporal_bidirectional=False),
])
def test_inference_in_chunks_equals_one_call(layout):
    """Without gradients, sequences longer than temporal_inference_chunk_tokens run each direction in chunks
    that carry the state; the output equals one call (gradients on: always one call) for every layout."""
    torch.manual_seed(0)
    one_call = StormTemporalEncoder(tiny_config(temporal_num_layers=2, temporal_inference_chunk_tokens=None, **layout))
    for name, parameter in one_call.named_parameters():  # a trained-looking encoder: out_proj far from zero
        if name.endswith("proj.weight"):
            parameter.data.normal_(0, 0.2)
    chunked = StormTemporalEncoder(tiny_config(temporal_num_layers=2, temporal_inference_chunk_tokens=7, **layout))
    chunked.load_state_dict(one_call.state_dict())
    tokens = torch.randn(2, 45, one_call.layers[0].norm.normalized_shape[0])  # 45 = 6 chunks of 7 and one of 3
    with torch.no_grad():
        reference = one_call(tokens)
        torch.testing.assert_close(chunked(tokens), reference, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(chunked(tokens).detach(), reference, rtol=1e-5, atol=1e-5)  # with gradients
    with pytest.raises(ValueError, match="temporal_inference_chunk_tokens must be a positive integer or None"):
        tiny_config(temporal_inference_chunk_tokens=0)


def test_scan_order_regroups_the_grid_and_back():
    from storm_hf.modeling_storm import change_scan_order

    x = torch.arange(3 * 4, dtype=torch.float32).view(1, 12, 1)  # 3 frames of 4 tokens, raster
    time_major = change_scan_order(x, 4, "time_major")
    assert time_major.flatten().tolist() == [0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11]
    assert torch.equal(change_scan_order(time_major, 4, "raster"), x)
    with pytest.raises(ValueError, match="needs tokens_per_frame"):
        change_scan_order(x, None, "time_major")
    with pytest.raises(ValueError, match="not whole frames of 5 tokens"):
        change_scan_order(x, 5, "time_major")


@pytest.mark.parametrize("bidirectional", [True, False])
def test_a_time_major_layer_is_the_raster_layer_on_the_regrouped_clip(bidirectional):
    """Same weights: the time-major encoder's output is the raster encoder's on the clip regrouped by position,
    regrouped back; "alternating" scans raster first, then time-major; time-major layers do not stream."""
    from storm_hf.modeling_storm import change_scan_order

    frames, tokens = 6, 4
    raster = StormTemporalEncoder(tiny_config(temporal_num_layers=2, temporal_bidirectional=bidirectional)).eval()
    for order, expected in (("time_major", ["time_major"] * 2), ("alternating", ["raster", "time_major"])):
        other = StormTemporalEncoder(tiny_config(temporal_num_layers=2, temporal_bidirectional=bidirectional,
                                                 temporal_scan_order=order)).eval()
        other.load_state_dict(raster.state_dict())
        assert other.scan_orders == expected
        x = torch.randn(2, frames * tokens, raster.layers[0].norm.normalized_shape[0])
        with torch.no_grad():
            if order == "time_major":
                reference = change_scan_order(raster(change_scan_order(x, tokens, "time_major")), tokens, "raster")
            else:
                first = raster.layers[0](x)
                second = change_scan_order(raster.layers[1](change_scan_order(first, tokens, "time_major")), tokens,
                                           "raster")
                reference = second if raster.norm is None else raster.norm(second)
            torch.testing.assert_close(other(x, tokens), reference)
        with pytest.raises(ValueError, match="needs tokens_per_frame"):
            other(x)
        if not bidirectional:
            with pytest.raises(ValueError, match="cannot stream"):
                other.stream(x)


def test_a_time_major_encoder_tells_the_order_inside_a_pooling_window():
    """Swapping two frames inside one k = 4 window changes the pooled tokens of a time-major STORM."""
    from storm_hf import StormForConditionalGeneration

    model = StormForConditionalGeneration(tiny_config(temporal_scan_order="time_major", temporal_pool_k=4)).eval()
    frames = torch.rand(1, 8, 3, model.config.vision_config.image_size, model.config.vision_config.image_size)
    swapped = frames[:, [1, 0, 2, 3, 4, 5, 6, 7]]
    with torch.no_grad():
        a, b = (model.model.get_video_features(f).pooler_output[0] for f in (frames, swapped))
    assert not torch.allclose(a, b, atol=1e-6)


def test_dt_settings_reach_every_mixer_and_bad_values_are_refused():
    config = tiny_config(temporal_dt_min=0.05, temporal_dt_max=0.2, temporal_dt_init="constant", temporal_dt_scale=2.0)
    encoder = StormTemporalEncoder(config)
    for layer in encoder.layers:
        for mixer in (layer.forward_mixer, layer.backward_mixer):
            dt = torch.nn.functional.softplus(mixer.dt_proj.bias)
            assert 0.05 - 1e-6 <= dt.min() and dt.max() <= 0.2 + 1e-6
            expected = mixer.dt_rank**-0.5 * 2.0
            torch.testing.assert_close(mixer.dt_proj.weight, torch.full_like(mixer.dt_proj.weight, expected))
    for bad, message in (({"temporal_scan_order": "zigzag"}, "temporal_scan_order"),
                         ({"temporal_dt_min": 0.2, "temporal_dt_max": 0.1}, "is above temporal_dt_max"),
                         ({"temporal_dt_max": -1.0}, "temporal_dt_max must be a positive number"),
                         ({"temporal_dt_init": "zeros"}, "temporal_dt_init")):
        with pytest.raises(ValueError, match=message):
            tiny_config(**bad)


@pytest.mark.parametrize("overrides", [{}, {"temporal_scan_order": "alternating", "temporal_num_layers": 2},
                                       {"temporal_direction_merge": "concat"}, {"temporal_share_projections": True}])
def test_layers_swapped_for_row_major_gemms_get_row_contiguous_inputs(overrides):
    # Serving engines (vLLM) replace every nn.Linear with their own layer, whose GEMM refuses an input whose last
    # dimension is strided ("Expected a.stride(-1) == 1"). Swapped so here, every projection of the model, the
    # temporal encoder's included, must get one whose rows are contiguous, and compute the same outputs.
    import copy

    import torch.nn.functional as F

    from .conftest import tiny_model, video_prompt

    class RowMajorGemm(torch.nn.Module):  # not an nn.Linear, as vLLM's layers are not
        strided = []

        def __init__(self, name, linear):
            super().__init__()
            self.name, self.weight, self.bias = name, linear.weight, linear.bias

        def forward(self, x):
            if x.stride(-1) != 1:
                self.strided.append(self.name)
            return F.linear(x, self.weight, self.bias)

    model = tiny_model(**overrides)
    swapped = copy.deepcopy(model)
    for name, module in list(swapped.named_modules()):
        if isinstance(module, torch.nn.Linear):
            parent, _, attribute = name.rpartition(".")
            setattr(swapped.get_submodule(parent), attribute, RowMajorGemm(name, module))
    inputs = {"input_ids": video_prompt(model.config, [8]), "pixel_values_videos": torch.randn(1, 8, 3, 32, 32)}
    with torch.no_grad():
        expected, got = model(**inputs).logits, swapped(**inputs).logits
    assert not RowMajorGemm.strided, RowMajorGemm.strided
    torch.testing.assert_close(got, expected)
