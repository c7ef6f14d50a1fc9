"""The CUDA kernel seam, checked without a GPU.

The dispatch is pointed at stand-ins for mamba_ssm's `selective_scan_fn` / `mamba_inner_fn` and
causal_conv1d's `causal_conv1d_fn`: in the default suite, fakes here that assert the layout they are
given and compute the same function; where mamba_ssm and causal_conv1d are installed (the optional job:
`PY=$(bash .ci/mamba_ssm_env | tail -n1) && "$PY" -m pytest -q tests/test_kernel_seam.py`), the packages'
own reference functions. Either way the model's output with the "kernels" equals its pure-PyTorch path.
"""

import math

import pytest
import torch
import torch.nn.functional as F

import storm_hf.selective_scan as seam
from storm_hf import StormMambaMixer
from storm_hf.selective_scan import selective_scan, selective_scan_sequential, selective_scan_torch

from . import mamba_reference

MAMBA = mamba_reference.load()
needs_mamba = pytest.mark.skipif(MAMBA is None, reason="needs mamba_ssm + causal_conv1d (bash .ci/mamba_ssm_env)")


# -- stand-ins with the kernels' signatures and layouts -------------------------------------------------


def fake_selective_scan_fn(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                           return_last_state=False):
    batch, dim, length = u.shape  # mamba_ssm's (batch, dim, length)
    assert delta.shape == (batch, dim, length) and A.shape[0] == dim and A.dtype == torch.float32
    assert B.shape == C.shape == (batch, A.shape[1], length)
    assert D is None or (D.shape == (dim,) and D.dtype == torch.float32)
    assert delta_bias is None or (delta_bias.shape == (dim,) and delta_bias.dtype == torch.float32)
    assert z is None or z.shape == (batch, dim, length)
    t = lambda x: None if x is None else x.transpose(1, 2)  # noqa: E731
    out = selective_scan_sequential(t(u).double(), t(delta).double(), A.double(), t(B).double(), t(C).double(),
                                    None if D is None else D.double(), None if z is None else t(z).double(),
                                    None if delta_bias is None else delta_bias.double(), delta_softplus,
                                    return_last_state=return_last_state)
    if return_last_state:
        return out[0].transpose(1, 2).to(u.dtype), out[1].float()
    return out.transpose(1, 2).to(u.dtype)


def fake_causal_conv1d_fn(x, weight, bias=None, seq_idx=None, initial_states=None, return_final_states=False,
                          final_states_out=None, activation=None):
    assert x.dim() == 3 and weight.dim() == 2 and weight.shape[0] == x.shape[1]  # (batch, dim, length), (dim, width)
    out = F.conv1d(x, weight.unsqueeze(1), bias, padding=weight.shape[1] - 1, groups=x.shape[1])[..., : x.shape[-1]]
    return F.silu(out) if activation in ("silu", "swish") else out


def fake_mamba_inner_fn(xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight, out_proj_weight,
                        out_proj_bias, A, B=None, C=None, D=None, delta_bias=None, B_proj_bias=None,
                        C_proj_bias=None, delta_softplus=True, checkpoint_lvl=1, **kwargs):
    batch, two_inner, length = xz.shape  # (batch, 2 * d_inner, length)
    d_inner, d_state = A.shape
    assert two_inner == 2 * d_inner and conv1d_weight.shape[:2] == (d_inner, 1) and B is None and C is None
    dt_rank = delta_proj_weight.shape[1]
    assert x_proj_weight.shape == (dt_rank + 2 * d_state, d_inner) and out_proj_weight.shape[1] == d_inner
    x, z = xz.chunk(2, dim=1)
    x = fake_causal_conv1d_fn(x, conv1d_weight.squeeze(1), conv1d_bias, activation="silu")
    x_dbl = F.linear(x.transpose(1, 2), x_proj_weight)  # (batch, length, dt_rank + 2 * d_state)
    dt, B, C = torch.split(x_dbl, [dt_rank, d_state, d_state], dim=-1)
    delta = F.linear(dt, delta_proj_weight).transpose(1, 2)  # (batch, d_inner, length)
    y = fake_selective_scan_fn(x, delta, A, B.transpose(1, 2), C.transpose(1, 2), D, z, delta_bias, delta_softplus)
    return F.linear(y.transpose(1, 2), out_proj_weight, out_proj_bias)  # (batch, length, d_model)


def recording(fn, calls, name):
    def wrapper(*args, **kwargs):
        shapes = [tuple(a.shape) for a in args if torch.is_tensor(a)]
        shapes += [(key, tuple(value.shape)) for key, value in kwargs.items() if torch.is_tensor(value)]
        calls.append((name, shapes))
        return fn(*args, **kwargs)

    return wrapper


@pytest.fixture(params=["fakes", "mamba_ssm references"])
def kernels(request, monkeypatch):
    """Make the seam believe it is on CUDA, with stand-ins as the kernels; yields the calls they receive."""
    if request.param == "fakes":
        scan, inner, conv = fake_selective_scan_fn, fake_mamba_inner_fn, fake_causal_conv1d_fn
    elif MAMBA is None:
        pytest.skip("needs mamba_ssm + causal_conv1d (bash .ci/mamba_ssm_env)")
    else:
        scan, inner, conv = MAMBA.selective_scan_ref, MAMBA.mamba_inner_ref, MAMBA.causal_conv1d_ref
    calls = []
    monkeypatch.setattr(seam, "_on_kernel_device", lambda tensor: True)
    monkeypatch.setattr(seam, "_KERNELS", {
        "mamba_ssm.ops.selective_scan_interface.selective_scan_fn": recording(scan, calls, "selective_scan_fn"),
        "mamba_ssm.ops.selective_scan_interface.mamba_inner_fn": recording(inner, calls, "mamba_inner_fn"),
        "causal_conv1d.causal_conv1d_fn": recording(conv, calls, "causal_conv1d_fn"),
    })
    return calls


def test_mixer_runs_as_mamba_inner_fn_with_its_layout(kernels):
    torch.manual_seed(0)
    mixer = StormMambaMixer(d_model=16, d_state=4, d_conv=4, expand=2).eval()
    x = torch.randn(2, 23, 16)
    with torch.no_grad():
        fused = mixer(x)
        mixer.use_kernels = False
        plain = mixer(x)
    torch.testing.assert_close(fused, plain, rtol=1e-4, atol=1e-5)
    assert kernels == [("mamba_inner_fn", [(2, 64, 23), (32, 1, 4), (32,), (1 + 2 * 4, 32), (32, 1), (16, 32),
                                           (32, 4), (32,), ("delta_bias", (32,))])]


def test_scan_and_convolution_seams_pass_the_kernel_layouts(kernels):
    torch.manual_seed(0)
    u, delta, z = (torch.randn(2, 19, 8) for _ in range(3))
    A, B, C = -torch.rand(8, 4) - 0.5, torch.randn(2, 19, 4), torch.randn(2, 19, 4)
    D, bias = torch.randn(8), torch.randn(8)
    out = selective_scan(u, delta, A, B, C, D, z, bias, True, return_last_state=True)
    expected = selective_scan_torch(u, delta, A, B, C, D, z, bias, True, return_last_state=True)
    torch.testing.assert_close(out[0], expected[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out[1], expected[1], rtol=1e-4, atol=1e-5)
    x, w, b = torch.randn(2, 8, 19), torch.randn(8, 4), torch.randn(8)
    torch.testing.assert_close(seam.causal_conv1d(x, w, b), F.conv1d(x, w.unsqueeze(1), b, padding=3, groups=8)[..., :19])
    assert [name for name, _ in kernels] == ["selective_scan_fn", "causal_conv1d_fn"]
    assert kernels[0][1] == [(2, 8, 19), (2, 8, 19), (8, 4), (2, 4, 19), (2, 4, 19), ("D", (8,)), ("z", (2, 8, 19)),
                             ("delta_bias", (8,))]
    assert kernels[1][1] == [(2, 8, 19), (8, 4), (8,)]


def test_streaming_and_carried_state_never_reach_the_kernels(kernels):
    torch.manual_seed(0)
    mixer = StormMambaMixer(d_model=16, d_state=4).eval()
    x = torch.randn(1, 9, 16)
    with torch.no_grad():
        out, state = mixer.stream(x[:, :5], None)
        rest, _ = mixer.stream(x[:, 5:], state)
        mixer.use_kernels = False
        whole = mixer(x)
    torch.testing.assert_close(torch.cat([out, rest], 1), whole, rtol=1e-4, atol=1e-5)
    assert kernels == []  # the kernels take no initial state: streaming is the PyTorch path


@pytest.mark.parametrize("case", ["complex A", "constant B", "grouped C", "wrong D"])
def test_unsupported_scan_inputs_are_refused_clearly(case):
    u = delta = torch.randn(2, 6, 8)
    A, B, C, D = -torch.rand(8, 4), torch.randn(2, 6, 4), torch.randn(2, 6, 4), torch.ones(8)
    if case == "complex A":
        A, pattern = torch.complex(A, torch.rand(8, 4)), "complex A"
    elif case == "constant B":
        B, pattern = torch.randn(8, 4), "B must be input-dependent.*constant or grouped B"
    elif case == "grouped C":
        C, pattern = torch.randn(2, 2, 4, 6), "C must be input-dependent"
    else:
        D, pattern = torch.ones(3), r"D must be \(d_inner,\)"
    with pytest.raises(ValueError, match=pattern):
        selective_scan(u, delta, A, B, C, D)


# -- against mamba_ssm itself (optional job) -------------------------------------------------------------

GRID = [(length, has_D, has_z, has_bias, softplus, last)
        for length in (1, 2, 8, 17, 64, 128, 256, 512)
        for has_D in (True, False) for has_z in (True, False) for has_bias in (True, False)
        for softplus in (True, False) for last in (True, False)]


@needs_mamba
@pytest.mark.parametrize("length,has_D,has_z,has_bias,softplus,last", GRID)
def test_scan_matches_selective_scan_ref_on_its_fp32_grid(length, has_D, has_z, has_bias, softplus, last):
    """mamba_ssm's tests/ops/test_selective_scan.py grid, the cases Mamba-1 uses (real A, variable B/C,
    no groups), fp32, outputs and every gradient."""
    g = torch.Generator().manual_seed(length)
    dim, n, batch = 4, 8, 2
    A = (-0.5 * torch.rand(dim, n, generator=g)).requires_grad_()
    B, C = (torch.randn(batch, n, length, generator=g).requires_grad_() for _ in range(2))
    D = torch.randn(dim, generator=g).requires_grad_() if has_D else None
    z = torch.randn(batch, dim, length, generator=g).requires_grad_() if has_z else None
    bias = (0.5 * torch.rand(dim, generator=g)).requires_grad_() if has_bias else None
    u = torch.randn(batch, dim, length, generator=g).requires_grad_()
    delta = (0.5 * torch.rand(batch, dim, length, generator=g)).requires_grad_()
    theirs = MAMBA.selective_scan_ref(u, delta, A, B, C, D, z, bias, softplus, last)
    t = lambda x: None if x is None else x.transpose(1, 2)  # noqa: E731
    ours = selective_scan_torch(t(u), t(delta), A, t(B), t(C), D, t(z), bias, softplus, return_last_state=last)
    out_theirs, out_ours = (theirs[0], t(ours[0])) if last else (theirs, t(ours))
    torch.testing.assert_close(out_ours, out_theirs, rtol=6e-4, atol=2e-3)
    if last:
        torch.testing.assert_close(ours[1], theirs[1], rtol=6e-4, atol=2e-3)
    grad = torch.randn_like(out_theirs)
    inputs = [x for x in (u, delta, A, B, C, D, z, bias) if x is not None]
    g_theirs = torch.autograd.grad(out_theirs, inputs, grad, retain_graph=True)
    g_ours = torch.autograd.grad(out_ours, inputs, grad)
    for a, b in zip(g_ours, g_theirs):
        torch.testing.assert_close(a, b, rtol=6e-4, atol=2e-3)


@needs_mamba
@pytest.mark.parametrize("fast_path", [True, False])
def test_mixer_equals_mamba_both_ways_and_streams_like_its_step(fast_path):
    torch.manual_seed(0)
    theirs = MAMBA.Mamba(d_model=32, d_state=8, d_conv=4, expand=2, use_fast_path=fast_path).eval()
    ours = StormMambaMixer(d_model=32, d_state=8, d_conv=4, expand=2).eval()
    ours.load_state_dict(theirs.state_dict())  # theirs -> ours
    x = torch.randn(2, 37, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-4, atol=1e-5)
        back = MAMBA.Mamba(d_model=32, d_state=8, d_conv=4, expand=2, use_fast_path=fast_path).eval()
        back.load_state_dict(ours.state_dict())  # ours -> theirs
        torch.testing.assert_close(back(x), ours(x), rtol=1e-4, atol=1e-5)
        conv_state = torch.zeros(2, ours.d_inner, ours.d_conv)
        ssm_state = torch.zeros(2, ours.d_inner, ours.d_state)
        state, steps, streamed = None, [], []
        for t in range(8):  # Mamba.step, token by token, against our stream
            out, conv_state, ssm_state = theirs.step(x[:, t : t + 1], conv_state, ssm_state)
            steps.append(out)
            mine, state = ours.stream(x[:, t : t + 1], state)
            streamed.append(mine)
        torch.testing.assert_close(torch.cat(streamed, 1), torch.cat(steps, 1), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(state.conv_state, conv_state, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(state.ssm_state, ssm_state, rtol=1e-4, atol=1e-5)


@needs_mamba
def test_initialisation_matches_mamba_ssm_in_distribution():
    """Per parameter, the range and spread of ours equal mamba_ssm's Mamba.__init__ + _init_weights
    (rescale_prenorm_residual=True, n_residuals_per_layer=2, n_layer=3) on the same shapes."""
    torch.manual_seed(0)
    theirs = MAMBA.Mamba(d_model=128, d_state=16, d_conv=4, expand=2)
    theirs.apply(lambda m: MAMBA.init_weights(m, n_layer=3, n_residuals_per_layer=2))
    from storm_hf.modeling_storm import init_mamba_mixer

    ours = StormMambaMixer(d_model=128, d_state=16, d_conv=4, expand=2)
    init_mamba_mixer(ours, residual_scale=math.sqrt(2 * 3))
    for (name, a), (_, b) in zip(ours.named_parameters(), theirs.named_parameters()):
        a, b = a.detach().double(), b.detach().double()
        if name in ("A_log", "D"):
            torch.testing.assert_close(a, b)
            continue
        spread = 4 * b.std() * math.sqrt(2 / b.numel())  # four standard errors of a difference of two means
        assert abs(a.mean() - b.mean()) <= spread, name
        assert abs(a.std() - b.std()) <= 0.15 * b.std(), name
        assert abs(a.abs().max() - b.abs().max()) <= 0.15 * b.abs().max(), name
