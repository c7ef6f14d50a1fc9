"""The CPU scan against the float64 per-step reference, forward and every gradient: both of its paths, the compiled
kernel (the default where a C compiler exists) and the pure-PyTorch one (`scan_path`)."""

import math

import pytest
import torch

import storm_hf.selective_scan as scan_module
from storm_hf.selective_scan import (
    causal_conv1d,
    fused_scan_available,
    selective_scan,
    selective_scan_sequential,
    selective_scan_torch,
)


def make_inputs(batch, length, d_inner, d_state, dtype=torch.float64, seed=0, large_delta=False):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    delta = r(batch, length, d_inner) * (2.0 if large_delta else 0.5) + (3.0 if large_delta else 0.0)
    inputs = dict(
        u=r(batch, length, d_inner), delta=delta, A=-torch.exp(r(d_inner, d_state) * 0.5),
        B=r(batch, length, d_state), C=r(batch, length, d_state), D=r(d_inner), z=r(batch, length, d_inner),
        delta_bias=r(d_inner) * 0.1, initial_state=r(batch, d_inner, d_state),
    )
    return {k: v.to(dtype).requires_grad_() for k, v in inputs.items()}


def rel_err(actual, reference):
    return ((actual.double() - reference).abs().max() / reference.abs().max()).item()


@pytest.fixture(params=["kernel", "pytorch"])
def scan_path(request, monkeypatch):
    """Run the scan on the compiled CPU kernel, then on the pure-PyTorch path."""
    if request.param == "kernel":
        if not scan_module.cpu_scan_kernel_available():
            pytest.fail("the compiled CPU scan did not build here (a C compiler is part of the test setup)")
    else:
        monkeypatch.setattr(scan_module, "CPU_SCAN_KERNEL", False)
    return request.param


@pytest.fixture(params=[2**20, 2**11, 1], ids=["one-block", "many-blocks", "one-step-blocks"])
def block_elements(request, monkeypatch):
    """Run the scan with its default block size, with small ragged blocks, and with one step per block."""
    monkeypatch.setattr(scan_module, "_BLOCK_ELEMENTS", request.param)
    return request.param


@pytest.mark.parametrize(
    "batch,length,d_inner,d_state",
    [(1, 1, 8, 4), (2, 37, 16, 4), (3, 300, 64, 16), (1, 1100, 32, 8)],
)
@pytest.mark.parametrize("large_delta", [False, True])
def test_forward_and_gradients_match_float64_reference(batch, length, d_inner, d_state, large_delta, block_elements,
                                                       scan_path):
    if block_elements == 1 and length > 300:
        pytest.skip("one-step blocks are checked on the shorter sequences")
    if block_elements == 2**11 and length > 1:
        assert scan_module._steps_per_block(length, batch, d_state, d_inner) < length  # really several blocks
    fast = make_inputs(batch, length, d_inner, d_state, torch.float32, large_delta=large_delta)
    ref = make_inputs(batch, length, d_inner, d_state, torch.float64, large_delta=large_delta)
    y, last = selective_scan_torch(**fast, delta_softplus=True, return_last_state=True)
    y_ref, last_ref = selective_scan_sequential(**ref, delta_softplus=True, return_last_state=True)
    assert y.dtype == torch.float32 and y.shape == (batch, length, d_inner)
    assert last.shape == (batch, d_inner, d_state)
    assert rel_err(y, y_ref) < 1e-4
    assert rel_err(last, last_ref) < 1e-4

    g = torch.Generator().manual_seed(1)
    grad_y = torch.randn(y_ref.shape, generator=g, dtype=torch.float64)
    grad_last = torch.randn(last_ref.shape, generator=g, dtype=torch.float64)
    ((y.double() * grad_y).sum() + (last.double() * grad_last).sum()).backward()
    ((y_ref * grad_y).sum() + (last_ref * grad_last).sum()).backward()
    for name in fast:
        assert rel_err(fast[name].grad, ref[name].grad) < 1e-4, name


@pytest.mark.parametrize("softplus", [False, True])
def test_optional_arguments_off(block_elements, softplus, scan_path):
    fast = make_inputs(2, 50, 16, 4, torch.float32)
    ref = make_inputs(2, 50, 16, 4, torch.float64)
    keep = ("u", "delta", "A", "B", "C")
    y = selective_scan_torch(*(fast[k] for k in keep), delta_softplus=softplus)
    y_ref = selective_scan_sequential(*(ref[k] for k in keep), delta_softplus=softplus)
    assert rel_err(y, y_ref) < 1e-4
    y.double().square().sum().backward()
    y_ref.square().sum().backward()
    for name in keep:
        assert rel_err(fast[name].grad, ref[name].grad) < 1e-4, name


def test_chunked_calls_with_carried_state_equal_one_call(block_elements, scan_path):
    x = make_inputs(2, 90, 16, 4, torch.float32)
    whole = selective_scan_torch(x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["z"], x["delta_bias"], True)
    state, outputs = None, []
    for start, stop in ((0, 1), (1, 40), (40, 90)):
        sl = lambda t: t[:, start:stop]  # noqa: E731
        y, state = selective_scan_torch(
            sl(x["u"]), sl(x["delta"]), x["A"], sl(x["B"]), sl(x["C"]), x["D"], sl(x["z"]), x["delta_bias"], True,
            initial_state=state, return_last_state=True,
        )
        outputs.append(y)
    torch.testing.assert_close(torch.cat(outputs, dim=1), whole, rtol=1e-5, atol=1e-5)


def test_bfloat16_inputs_compute_in_float32(scan_path):
    x = make_inputs(1, 64, 16, 4, torch.float32)
    y32 = selective_scan_torch(x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["z"], x["delta_bias"], True)
    bf = {k: v.detach().bfloat16() for k, v in x.items()}
    y16 = selective_scan_torch(bf["u"], bf["delta"], bf["A"], bf["B"], bf["C"], bf["D"], bf["z"], bf["delta_bias"], True)
    assert y16.dtype == torch.bfloat16
    assert rel_err(y16.float(), y32.double()) < 5e-2


def test_autocast_does_not_lower_the_scan_precision(scan_path):
    x = make_inputs(1, 80, 16, 4, torch.float32)
    args = (x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["z"], x["delta_bias"], True)
    reference = selective_scan_torch(*args)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = selective_scan_torch(*args)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, reference)
    y.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in args if isinstance(t, torch.Tensor))


def test_empty_sequence_raises():
    x = make_inputs(1, 4, 8, 4, torch.float32)
    with pytest.raises(ValueError, match="empty"):
        selective_scan_torch(x["u"][:, :0], x["delta"][:, :0], x["A"], x["B"][:, :0], x["C"][:, :0])


def test_seam_uses_torch_on_cpu():
    assert not fused_scan_available("cpu")
    x = make_inputs(1, 20, 8, 4, torch.float32)
    args = (x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["z"], x["delta_bias"], True)
    torch.testing.assert_close(selective_scan(*args), selective_scan_torch(*args))


def test_causal_conv1d_with_prefix_equals_whole_sequence():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 6, 20, generator=g)
    w = torch.randn(6, 4, generator=g)
    b = torch.randn(6, generator=g)
    whole = causal_conv1d(x, w, b)
    reference = torch.nn.functional.conv1d(x, w.unsqueeze(1), b, padding=3, groups=6)[..., :20]
    torch.testing.assert_close(whole, reference)
    tail = causal_conv1d(x[..., 12:], w, b, prefix=x[..., 9:12])
    torch.testing.assert_close(tail, whole[..., 12:])


@pytest.mark.skipif(not fused_scan_available("cuda") if torch.cuda.is_available() else True,
                    reason="needs mamba_ssm and a CUDA GPU")
def test_fused_kernel_agrees_with_torch_path():
    x = {k: v.detach().float().cuda() for k, v in make_inputs(2, 512, 64, 16, torch.float32).items()}
    args = (x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["z"], x["delta_bias"], True)
    fused = selective_scan(*args)
    torch_path = selective_scan(*args, use_kernel=False)
    assert rel_err(fused, torch_path.double()) < 1e-4


def test_scan_runs_with_cpu_scan_threads_and_restores_the_process_setting(monkeypatch):
    import threading

    import storm_hf.selective_scan as scan_module

    seen = []
    real = scan_module._run_recurrence

    def recording(*args):
        seen.append(torch.get_num_threads())
        return real(*args)

    monkeypatch.setattr(scan_module, "_run_recurrence", recording)
    monkeypatch.setattr(scan_module, "CPU_SCAN_KERNEL", False)  # the kernel's threads: test_kernel_threads
    monkeypatch.setattr(scan_module, "CPU_SCAN_THREADS", 1)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        g = torch.Generator().manual_seed(0)
        u, delta, z = (torch.randn(1, 40, 8, generator=g, requires_grad=True) for _ in range(3))
        B, C = torch.randn(1, 40, 4, generator=g), torch.randn(1, 40, 4, generator=g)
        A = -torch.rand(8, 4, generator=g)
        y = selective_scan_torch(u, delta, A, B, C, z=z, delta_softplus=True)
        y.sum().backward()  # the backward recomputes the states: the recurrence runs again
        assert seen and set(seen) == {scan_module.CPU_SCAN_THREADS}
        assert torch.get_num_threads() == 2
        # scans on several threads at once: the setting comes back when the last one leaves
        workers = [threading.Thread(target=lambda: selective_scan_torch(u.detach(), delta.detach(), A, B, C))
                   for _ in range(4)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        assert torch.get_num_threads() == 2
        monkeypatch.setattr(scan_module, "CPU_SCAN_THREADS", None)  # None: the process's own setting
        seen.clear()
        selective_scan_torch(u.detach(), delta.detach(), A, B, C)
        assert set(seen) == {2}
    finally:
        torch.set_num_threads(before)


def test_auto_scan_threads_use_the_cores_no_other_task_runs_on(monkeypatch):
    import storm_hf.selective_scan as scan_module

    monkeypatch.setattr(scan_module, "CPU_SCAN_THREADS", "auto")
    before = torch.get_num_threads()
    torch.set_num_threads(4)
    try:
        big = scan_module._AUTO_MIN_ELEMENTS
        for free, expected in [(4, 4), (8, 4), (3, 3), (1, 1), (0, 1), (-3, 1), (None, None)]:
            monkeypatch.setattr(scan_module, "_free_cores", lambda free=free: free)
            assert scan_module._scan_thread_count(big) == expected, free
        assert scan_module._scan_thread_count(big - 1) == 1  # small scans: one thread, no /proc reads
    finally:
        torch.set_num_threads(before)
    monkeypatch.undo()
    free = scan_module._free_cores()  # the real reading, on Linux: at most the cores this process may use
    import os

    assert free is None or free <= len(os.sched_getaffinity(0))


def test_scan_backward_under_activation_checkpointing(scan_path):
    from torch.utils.checkpoint import checkpoint

    g = torch.Generator().manual_seed(3)
    u, delta = (torch.randn(1, 24, 8, generator=g, requires_grad=True) for _ in range(2))
    B, C, A = torch.randn(1, 24, 4, generator=g), torch.randn(1, 24, 4, generator=g), -torch.rand(8, 4, generator=g)
    y = checkpoint(lambda a, b: selective_scan_torch(a, b, A, B, C, delta_softplus=True), u, delta, use_reentrant=False)
    y.sum().backward()  # the backward unpacks the saved tensors once (a second unpack raises CheckpointError)
    expected = torch.autograd.grad(selective_scan_torch(u, delta, A, B, C, delta_softplus=True).sum(), u)[0]
    assert torch.allclose(u.grad, expected, atol=1e-6)


# -- the scan as torch.library custom ops: one opaque op per scan for torch.compile / torch.export -----------------


def op_args(optional=True, save_states=True, seed=0):
    """Time-major fp32 arguments of `storm_hf::selective_scan_fwd` (length 37, batch 2, d_inner 16, d_state 4)."""
    x = make_inputs(2, 37, 16, 4, torch.float32, seed=seed)
    t = lambda name: x[name].detach().transpose(0, 1).contiguous().requires_grad_()  # noqa: E731
    leaf = lambda name: x[name].detach().clone().requires_grad_() if optional else None  # noqa: E731
    A_t = x["A"].detach().t().contiguous().requires_grad_()
    h0 = x["initial_state"].detach().transpose(1, 2).contiguous().requires_grad_()
    z = t("z") if optional else None
    return (t("u"), t("delta"), A_t, t("B"), t("C"), leaf("D"), z, leaf("delta_bias"), h0, True, save_states)


@pytest.mark.parametrize("optional", [True, False], ids=["D-z-bias", "no-D-z-bias"])
@pytest.mark.parametrize("save_states", [True, False])
def test_scan_ops_pass_torch_library_opcheck(optional, save_states, block_elements, scan_path):
    """torch.library.opcheck: the schema (Optional D / z / delta_bias, no aliasing of inputs), the fake
    implementation against the real one, the autograd registration and AOT dispatch with dynamic shapes. A
    forward that did not save the block states (traced without gradients, run with them) still differentiates."""
    fwd, bwd = scan_module.selective_scan_fwd, scan_module.selective_scan_bwd
    args = op_args(optional, save_states)
    torch.library.opcheck(fwd, args)
    out, h_last, block_starts = fwd(*args)
    steps = scan_module._steps_per_block(37, 2, 4, 16)
    assert block_starts.shape == ((-(-37 // steps) if save_states else 0), 2, 4, 16)
    saved = fwd(*args[:-1], True)[2]
    grads = (torch.randn_like(out), None)
    plain = tuple(None if a is None else a.detach() for a in args[:8])  # u .. delta_bias
    torch.library.opcheck(bwd, (*grads, *plain, saved, True, steps))


def test_compiled_scan_is_one_op_and_equals_eager_forward_and_backward(scan_path):
    """fullgraph: the scan (with an initial state and its last state) is one op in dynamo's graph, not 300 unrolled
    steps; the forward and, through AOT autograd, every gradient (the hand-written backward as one op) equal eager."""
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    graphs, backward_ops = [], []

    def recording(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    def fw_compiler(gm, example_inputs):
        return make_boxed_func(gm.forward)

    def bw_compiler(gm, example_inputs):
        backward_ops.extend(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
        return make_boxed_func(gm.forward)

    def run(**kw):
        return selective_scan_torch(**kw, delta_softplus=True, return_last_state=True)

    torch._dynamo.reset()
    x = make_inputs(2, 300, 16, 4, torch.float32)
    with torch.no_grad():
        y, last = torch.compile(run, backend=recording, fullgraph=True)(**x)
        y_eager, last_eager = run(**x)
    targets = [str(n.target) for gm in graphs for n in gm.graph.nodes if n.op == "call_function"]
    assert sum("storm_hf.selective_scan_fwd" in t for t in targets) == 1, targets
    assert len(targets) < 40 and not any("addcmul" in t for t in targets)  # no per-step ops
    torch.testing.assert_close(y, y_eager, rtol=0, atol=0)
    torch.testing.assert_close(last, last_eager, rtol=0, atol=0)

    aot = aot_autograd(fw_compiler=fw_compiler, bw_compiler=bw_compiler)  # forward and backward graphs
    compiled = torch.compile(run, backend=aot, fullgraph=True)
    eager_inputs = make_inputs(2, 300, 16, 4, torch.float32)
    ref = make_inputs(2, 300, 16, 4, torch.float64)
    def float64_reference(**kw):
        return selective_scan_sequential(**kw, delta_softplus=True, return_last_state=True)

    for inputs, fn in ((x, compiled), (eager_inputs, run), (ref, float64_reference)):
        y, last = fn(**inputs)
        (y.double().sin().sum() + last.double().square().sum()).backward()
    assert sum("storm_hf.selective_scan_bwd" in t for t in backward_ops) == 1, backward_ops
    for name in x:
        torch.testing.assert_close(x[name].grad, eager_inputs[name].grad, rtol=1e-6, atol=1e-6, msg=name)
        assert rel_err(x[name].grad, ref[name].grad) < 1e-4, name


def test_compiled_scan_keeps_fp32_under_autocast():
    """Autocast is off inside the op body, so a compiled graph run under bf16 autocast still scans in fp32."""
    x = make_inputs(1, 80, 16, 4, torch.float32)
    args = (x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["z"], x["delta_bias"], True)
    with torch.no_grad():
        reference = selective_scan_torch(*args)
        torch._dynamo.reset()
        compiled = torch.compile(selective_scan_torch, backend="eager", fullgraph=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = compiled(*args)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, reference, rtol=0, atol=0)


def test_scan_keeps_block_states_only_for_a_backward(monkeypatch, scan_path):
    """Without gradients the forward stores nothing (no block states); with them autograd keeps the inputs and
    the state entering each block, nothing of length x d_inner x d_state."""
    seen = []
    real, real_kernel = scan_module._scan_forward, scan_module._kernel_scan_forward
    monkeypatch.setattr(scan_module, "_scan_forward", lambda *args: seen.append(args[-1]) or real(*args))
    monkeypatch.setattr(scan_module, "_kernel_scan_forward", lambda *args: seen.append(args[-1]) or real_kernel(*args))
    monkeypatch.setattr(scan_module, "_BLOCK_ELEMENTS", 2**11)  # several blocks
    x = make_inputs(2, 300, 16, 4, torch.float32)
    with torch.no_grad():
        selective_scan_torch(**x, delta_softplus=True)
    assert seen == [None]
    shapes = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: shapes.append(tuple(t.shape)) or t, lambda t: t):
        selective_scan_torch(**x, delta_softplus=True).sum().backward()
    steps = scan_module._steps_per_block(300, 2, 4, 16)
    blocks = -(-300 // steps)
    assert seen[1].shape == (blocks, 2, 4, 16) and (blocks, 2, 4, 16) in shapes
    assert max(math.prod(s) for s in shapes) <= max(300 * 2 * 16, blocks * 2 * 4 * 16) < 300 * 2 * 16 * 4


# -- the compiled CPU scan: what only it does ------------------------------------------------------------------------


def test_kernel_reads_strided_views_and_splits_work_over_threads(monkeypatch):
    """The model hands the scan transposed views ((batch, length) strides of its projections' outputs): the kernel
    reads them in place, and gives the same outputs and gradients split over threads (several batch rows, several
    channel groups, a partial chunk of channels) as in one range, and as the PyTorch path."""
    assert scan_module.cpu_scan_kernel_available()
    g = torch.Generator().manual_seed(5)
    batch, length, d_inner, d_state = 3, 70, 40, 6  # 40 channels: chunks of 16, 16 and 8
    xz = torch.randn(batch, length, 2 * d_inner, generator=g)  # as in_proj's output: x and z are strided halves
    x_dbl = torch.randn(batch, length, 3 + 2 * d_state, generator=g)  # as x_proj's output: B and C are slices
    u, z = xz[..., :d_inner], xz[..., d_inner:]
    B, C = x_dbl[..., 3:3 + d_state], x_dbl[..., 3 + d_state:]
    delta = torch.randn(batch, d_inner, length, generator=g).transpose(1, 2)  # strided inside rows: copied
    A = -torch.exp(torch.randn(d_inner, d_state, generator=g))
    D, bias, h0 = torch.randn(d_inner, generator=g), torch.randn(d_inner, generator=g), torch.randn(
        batch, d_inner, d_state, generator=g)
    monkeypatch.setattr(scan_module, "_BLOCK_ELEMENTS", 2**10)  # several blocks

    def run(threads, kernel=True):
        monkeypatch.setattr(scan_module, "CPU_SCAN_THREADS", threads)
        monkeypatch.setattr(scan_module, "CPU_SCAN_KERNEL", "auto" if kernel else False)
        leaves = [t.detach().clone().requires_grad_() for t in (u, delta, A, B, C, D, z, bias, h0)]
        y, last = selective_scan_torch(*leaves[:8], delta_softplus=True, initial_state=leaves[8],
                                       return_last_state=True)
        (y.sin().sum() + last.square().sum()).backward()
        return [y, last] + [leaf.grad for leaf in leaves]

    one, three, pytorch = run(1), run(3), run(1, kernel=False)
    for a, b, c in zip(one, three, pytorch):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(a, c, rtol=1e-4, atol=1e-4)


def test_kernel_extreme_time_steps_and_wide_states(monkeypatch):
    """Decays that underflow (dt * A far below -87) and time steps past softplus' threshold match the float64
    reference; NaN inputs give NaN, not a silent number; d_state above the kernel's bound runs the PyTorch path."""
    x = make_inputs(2, 30, 16, 4, torch.float32)
    with torch.no_grad():
        x["delta"].mul_(10).add_(15)  # softplus inputs ~ -15..45: both sides of the threshold 20
        x["A"].mul_(30)  # dt * A down to ~ -1e3
    ref = {k: v.detach().double() for k, v in x.items()}
    y = selective_scan_torch(**x, delta_softplus=True)
    y_ref = selective_scan_sequential(**ref, delta_softplus=True)
    assert rel_err(y, y_ref) < 1e-4
    poisoned = {k: v.detach().clone() for k, v in x.items()}
    poisoned["u"][0, 7, 3] = float("nan")
    y = selective_scan_torch(**poisoned, delta_softplus=True)
    assert y[0, 7:, 3].isnan().all() and not y[1].isnan().any()

    calls = []
    real = scan_module._scan_forward
    monkeypatch.setattr(scan_module, "_scan_forward", lambda *args: calls.append(1) or real(*args))
    wide = make_inputs(1, 12, 8, scan_module._KERNEL_MAX_STATE + 1, torch.float32)
    selective_scan_torch(**wide, delta_softplus=True)
    assert calls  # the PyTorch path took it


def test_kernel_builds_once_into_its_cache_and_falls_back_without_a_compiler(tmp_path, monkeypatch, caplog):
    """First use builds the library into the cache folder ($STORM_HF_CACHE here) and later loads take it from there
    without a compiler; without a working compiler, or with STORM_HF_CPU_SCAN_KERNEL=0, the scan runs on the PyTorch
    path (a failed build says so once, in a warning) and still answers."""
    import logging
    import os

    x = make_inputs(1, 20, 8, 4, torch.float32)
    ref = make_inputs(1, 20, 8, 4, torch.float64)
    expected = selective_scan_sequential(**ref, delta_softplus=True)

    def fresh_process_state(**env):  # what a new process starts with
        monkeypatch.setattr(scan_module, "_cpu_kernel_state", {})
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        y = selective_scan_torch(**x, delta_softplus=True)
        assert rel_err(y, expected) < 1e-4
        return scan_module.cpu_scan_kernel_available()

    cache = tmp_path / "cache"
    assert fresh_process_state(STORM_HF_CACHE=str(cache))
    built = os.listdir(cache / "kernels")
    assert len(built) == 1 and built[0].endswith(".so")  # no build folder left behind
    assert fresh_process_state(CC="/nonexistent/cc-that-is-not-called")  # cached: no compiler needed

    caplog.set_level(logging.WARNING, logger="storm_hf.selective_scan")
    assert not fresh_process_state(STORM_HF_CACHE=str(tmp_path / "empty"), CC="false")
    selective_scan_torch(**x, delta_softplus=True)
    warnings_ = [r.getMessage() for r in caplog.records if "compiled CPU selective scan is not available" in
                 r.getMessage()]
    assert len(warnings_) == 1 and "false failed" in warnings_[0]
    caplog.clear()
    assert not fresh_process_state(STORM_HF_CACHE=str(tmp_path / "off"), STORM_HF_CPU_SCAN_KERNEL="0")
    assert not caplog.records and not os.path.exists(tmp_path / "off")


def test_kernel_that_disagrees_with_the_pytorch_path_is_not_used(monkeypatch):
    """The self-check on load: a library whose results differ is refused with a warning, and the scan still
    answers through the PyTorch path."""
    monkeypatch.setattr(scan_module, "_cpu_kernel_state", {})
    real = scan_module._kernel_scan_forward

    def off_by_a_little(*args, **kwargs):
        out, h_last = real(*args, **kwargs)
        return out * 1.01, h_last

    monkeypatch.setattr(scan_module, "_kernel_scan_forward", off_by_a_little)
    assert not scan_module.cpu_scan_kernel_available()
    x = make_inputs(1, 20, 8, 4, torch.float32)
    ref = make_inputs(1, 20, 8, 4, torch.float64)
    y = selective_scan_torch(**x, delta_softplus=True)
    assert rel_err(y, selective_scan_sequential(**ref, delta_softplus=True)) < 1e-4


def test_kernel_threads_work_in_a_forked_child():
    """A forked process (a data loader's worker) inherits the kernel's thread pool without its threads: its scans
    on several threads still finish."""
    code = """
import os, torch, storm_hf.selective_scan as s
torch.set_num_threads(2)
s.CPU_SCAN_THREADS = 2
g = torch.Generator().manual_seed(0)
x = [torch.randn(2, 50, 64, generator=g), torch.randn(2, 50, 64, generator=g), -torch.rand(64, 4, generator=g),
     torch.randn(2, 50, 4, generator=g), torch.randn(2, 50, 4, generator=g)]
before = s.selective_scan_torch(*x, delta_softplus=True)
pid = os.fork()
if pid == 0:
    os._exit(0 if torch.equal(s.selective_scan_torch(*x, delta_softplus=True), before) else 1)
print(s.cpu_scan_kernel_available(), os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
"""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.split() == ["True", "0"], done.stderr
