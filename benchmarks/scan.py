"""Selective-scan benchmark: the pure-PyTorch scan against plain per-timestep loops, side by side.

    python benchmarks/scan.py                       # length 4096 and 16384, accuracy check at 4096
    python benchmarks/scan.py --lengths 4096 --repeats 5
    python benchmarks/scan.py --lengths 4096 --under-load 0 1 4   # beside 0, 1 and 4 busy processes

Shapes follow one STORM mixer at d_model 1024: d_inner 2048, d_state 16, batch 1, fp32 (4096 tokens =
64 frames x 64 tokens). Printed for each length (median of --repeats runs after one warm-up, all in this
process, so the ratios compare like with like on a noisy machine):

* `loop (mamba_ssm layout)`: the plain per-step loop written from mamba_ssm's interface, inputs in its
  (batch, d_inner, length) layout, one strided step at a time.
* `loop (ref, materialised)`: the per-step loop as mamba_ssm's `selective_scan_ref` and transformers'
  MambaMixer slow path write it: decays and inputs materialised for all steps up front.
* `loop (contiguous)`: `storm_hf.selective_scan_sequential`, a per-step loop on contiguous slices.
* `mamba_ssm selective_scan_ref`: mamba_ssm's own reference, when mamba_ssm is importable (on a CPU:
  `PY=$(bash .ci/mamba_ssm_env | tail -n1) && $PY benchmarks/scan.py`).
* `storm_hf`: `selective_scan_torch`, forward (no grad) and forward+backward.
* extra peak memory of one forward call (resident set, measured in a fresh subprocess).
* relative error against the float64 per-step reference, forward and every gradient.

`--widths 128 512 2048 --lengths 256 1024 ...` (issue 27) measures instead, for each width and length, the time per
token of the scan's forward on its two CPU paths (the compiled kernel, `storm_hf.selective_scan.CPU_SCAN_KERNEL`
"auto", and the pure-PyTorch path, False) and of mamba_ssm's `selective_scan_ref` where importable (skipped above
`--ref-max-updates` state updates: it holds all of them), then one bidirectional temporal layer (d_model = d_inner /
2: norm, two mixers with their projections and convolutions, the merge) forward and forward + backward on both
paths. Where the PyTorch path would take long it is skipped (`--pytorch-max-updates`).

`--under-load N ...` measures instead, beside N busy-loop processes for each N (a quiet machine, one busy
neighbour, a machine loaded N deep): the scan as it runs by default (`CPU_SCAN_THREADS="auto"`: the cores
no other task is running on), with one intra-op thread and with all of the process's threads, the plain
per-step loops (and mamba_ssm's `selective_scan_ref` when importable), and a whole mixer forward
(projections included) with our scan and with the contiguous per-step loop in its place.
"""

import argparse
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from storm_hf import StormMambaMixer
from storm_hf.selective_scan import selective_scan_sequential, selective_scan_torch


def make_inputs(length, d_inner, d_state, seed=0):
    """Inputs shaped like a trained mixer's: softplus(delta + bias) spans ~0.01..3, A = -exp(A_log)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    return dict(
        u=r(1, length, d_inner), delta=r(1, length, d_inner) - 1.0, A=-torch.exp(r(d_inner, d_state) * 0.5 + 0.5),
        B=r(1, length, d_state), C=r(1, length, d_state), D=r(d_inner), z=r(1, length, d_inner),
        delta_bias=r(d_inner) * 0.5,
    )


def loop_reference_layout(u, delta, A, B, C, D, z, delta_bias):
    """The per-step loop in mamba_ssm's selective_scan_ref layout: (batch, d_inner, length) tensors, the
    decays exp(delta * A) and inputs delta * B * u materialised for all steps, then one step at a time."""
    u, delta, z = (t.transpose(1, 2) for t in (u, delta, z))  # (batch, d_inner, length)
    B, C = B.transpose(1, 2), C.transpose(1, 2)  # (batch, d_state, length)
    delta = torch.nn.functional.softplus(delta + delta_bias[:, None])
    decay = torch.exp(torch.einsum("bdl,dn->bdln", delta, A))
    delta_b_u = torch.einsum("bdl,bnl,bdl->bdln", delta, B, u)
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    ys = []
    for i in range(u.shape[2]):
        h = decay[:, :, i] * h + delta_b_u[:, :, i]
        ys.append(torch.einsum("bdn,bn->bd", h, C[:, :, i]))
    y = torch.stack(ys, dim=2) + u * D[:, None]
    return (y * torch.nn.functional.silu(z)).transpose(1, 2)


def loop_channel_major(u, delta, A, B, C, D, z, delta_bias):
    """The per-step loop written straight from mamba_ssm's interface: inputs kept in its (batch, d_inner,
    length) layout and sliced one step at a time (each slice strided by `length`), nothing materialised."""
    u, delta, z = (t.transpose(1, 2).contiguous() for t in (u, delta, z))  # (batch, d_inner, length)
    B, C = B.transpose(1, 2).contiguous(), C.transpose(1, 2).contiguous()  # (batch, d_state, length)
    delta = torch.nn.functional.softplus(delta + delta_bias[:, None])
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    ys = []
    for i in range(u.shape[2]):
        decay = torch.exp(delta[:, :, i, None] * A)  # (batch, d_inner, d_state)
        h = decay * h + (delta[:, :, i] * u[:, :, i])[:, :, None] * B[:, None, :, i]
        ys.append(torch.einsum("bdn,bn->bd", h, C[:, :, i]))
    y = torch.stack(ys, dim=2) + u * D[:, None]
    return (y * torch.nn.functional.silu(z)).transpose(1, 2)


def mamba_ssm_reference():
    """mamba_ssm's `selective_scan_ref` taking our (batch, length, x) layout, or None without mamba_ssm."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.mamba_reference import load

    refs = load()
    if refs is None:
        return None

    def selective_scan_ref(u, delta, A, B, C, D, z, delta_bias):
        u, delta, z, B, C = (t.transpose(1, 2) for t in (u, delta, z, B, C))  # its (batch, x, length) layout
        return refs.selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus=True).transpose(1, 2)

    return selective_scan_ref


def call(fn, x):
    args = (x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["z"], x["delta_bias"])
    plain = fn in (loop_reference_layout, loop_channel_major) or fn.__name__ == "selective_scan_ref"
    return fn(*args) if plain else fn(*args, delta_softplus=True)


def median_seconds(run, repeats):
    run()  # warm-up: first-touch page faults and allocator growth are not what we compare
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def forward_backward(fn, x):
    leaves = {k: v.detach().clone().requires_grad_() for k, v in x.items()}
    y = call(fn, leaves)
    y.backward(torch.ones_like(y))


def peak_extra_memory_mb(which, length, d_inner, d_state):
    """Resident-set growth of one call, in a fresh process (peak RSS minus RSS once inputs exist; Linux)."""
    out = subprocess.run(
        [sys.executable, __file__, "--memory-probe", which, "--lengths", str(length),
         "--d-inner", str(d_inner), "--d-state", str(d_state)],
        capture_output=True, text=True, check=True,
    )
    return float(out.stdout.strip().splitlines()[-1])


def memory_probe(which, length, d_inner, d_state):
    x = make_inputs(length, d_inner, d_state)
    fn = {"storm_hf": selective_scan_torch, "loop_ref": loop_reference_layout, "loop_channel": loop_channel_major,
          "loop": selective_scan_sequential}.get(which) or mamba_ssm_reference()
    with open("/proc/self/statm") as f:
        rss_before = int(f.read().split()[1]) * resource.getpagesize()
    with torch.no_grad():
        call(fn, x)
    # VmHWM is this process's own peak (ru_maxrss would carry the parent's peak across fork + exec).
    with open("/proc/self/status") as f:
        peak = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
    print((peak - rss_before) / 2**20)


def relative_errors(length, d_inner, d_state):
    """Max-abs relative error of the fp32 scan against the float64 per-step reference (output and grads)."""
    x32 = {k: v.clone().requires_grad_() for k, v in make_inputs(length, d_inner, d_state).items()}
    x64 = {k: v.double().clone().requires_grad_() for k, v in make_inputs(length, d_inner, d_state).items()}
    y32, y64 = call(selective_scan_torch, x32), call(selective_scan_sequential, x64)
    grad = torch.randn(y64.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    (y32.double() * grad).sum().backward()
    (y64 * grad).sum().backward()
    err = lambda a, r: ((a.double() - r).abs().max() / r.abs().max()).item()  # noqa: E731
    errors = {"y": err(y32, y64)}
    errors.update({f"d{k}": err(x32[k].grad, x64[k].grad) for k in x32})
    return errors


def mixer_figures(length, repeats):
    """One StormMambaMixer(d_model=1024): forward and forward+backward (projections included)."""
    mixer = StormMambaMixer(d_model=1024, d_state=16)
    x = torch.randn(1, length, 1024)
    with torch.no_grad():
        forward = median_seconds(lambda: mixer(x), repeats)

    def train_step():
        mixer.zero_grad(set_to_none=True)
        mixer(x.requires_grad_()).sum().backward()

    return forward, median_seconds(train_step, repeats)


def patched(module, name, value, run):
    """``run`` with ``module.name`` set to ``value`` for the duration of each call."""
    def wrapped():
        before = getattr(module, name)
        setattr(module, name, value)
        try:
            return run()
        finally:
            setattr(module, name, before)
    return wrapped


def under_load(length, loads, repeats):
    import storm_hf.modeling_storm as modeling
    import storm_hf.selective_scan as scan_module

    x = make_inputs(length, 2048, 16)
    mixer = StormMambaMixer(d_model=1024, d_state=16).eval()
    hidden = torch.randn(1, length, 1024)
    real_scan = modeling.selective_scan
    reference = mamba_ssm_reference()

    def loop_scan(*args, use_kernel=False, **kwargs):
        return selective_scan_sequential(*args, **kwargs)

    def mixer_with(scan):
        return patched(modeling, "selective_scan", scan, lambda: mixer(hidden))

    scan = lambda: call(selective_scan_torch, x)  # noqa: E731
    arms = {
        "scan storm_hf (threads auto)": scan,
        "scan storm_hf (1 thread)": patched(scan_module, "CPU_SCAN_THREADS", 1, scan),
        f"scan storm_hf ({torch.get_num_threads()} threads)": patched(scan_module, "CPU_SCAN_THREADS", None, scan),
        "loop (contiguous)": lambda: call(selective_scan_sequential, x),
        "loop (mamba_ssm layout)": lambda: call(loop_channel_major, x),
        **({"mamba_ssm selective_scan_ref": (lambda: call(reference, x))} if reference is not None else {}),
        "mixer storm_hf": mixer_with(real_scan),
        "mixer with the contiguous loop": mixer_with(loop_scan),
    }
    print(f"\nunder load: length {length}, median of {repeats} after a warm-up, {torch.get_num_threads()} threads")
    for load in loads:
        busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(load)]
        try:
            time.sleep(1.0)
            with torch.no_grad():
                seconds = {name: median_seconds(run, repeats) for name, run in arms.items()}
        finally:
            for process in busy:
                process.kill()
                process.wait()
        ours, mixer_ours = seconds["scan storm_hf (threads auto)"], seconds["mixer storm_hf"]
        print(f"  {load} busy process(es):")
        for name, value in seconds.items():
            versus = ""
            if name.startswith("loop") or name.startswith("mamba_ssm"):
                versus = f"   -> storm_hf scan {value / ours:.1f}x faster"
            elif name == "mixer with the contiguous loop":
                versus = f"   -> storm_hf mixer {value / mixer_ours:.1f}x faster"
            print(f"    {name:36s} {value * 1e3:9.1f} ms{versus}", flush=True)


def width_figures(widths, lengths, repeats, ref_max_updates, pytorch_max_updates, d_state=16):
    """Per-token times of the scan and of a bidirectional temporal layer, compiled kernel against PyTorch path."""
    import storm_hf.selective_scan as scan_module
    from storm_hf import StormConfig
    from storm_hf.modeling_storm import StormTemporalBlock

    reference = mamba_ssm_reference()
    kernel_available = scan_module.cpu_scan_kernel_available()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32, batch 1, d_state {d_state}; "
          f"median of {repeats} after a warm-up; compiled kernel available: {kernel_available}")
    print("us per token | scan fwd: kernel / pytorch / ref | layer fwd: kernel / pytorch | layer fwd+bwd: kernel / "
          "pytorch")

    for d_inner in widths:
        config = StormConfig(text_config=dict(model_type="qwen2", hidden_size=d_inner // 2, num_attention_heads=1,
                                              num_key_value_heads=1, intermediate_size=8, num_hidden_layers=1,
                                              vocab_size=16), temporal_d_state=d_state)
        layer = StormTemporalBlock(config).eval()
        for length in lengths:
            updates = length * d_inner * d_state
            x = make_inputs(length, d_inner, d_state)
            hidden = torch.randn(1, length, d_inner // 2)
            row = {}
            arms = [("kernel", "auto"), ("pytorch", False)] if kernel_available else [("pytorch", False)]
            for name, path in arms:
                if name == "pytorch" and updates > pytorch_max_updates:
                    continue
                on_path = lambda run: patched(scan_module, "CPU_SCAN_KERNEL", path, run)  # noqa: E731
                with torch.no_grad():
                    row[f"scan {name}"] = median_seconds(on_path(lambda: call(selective_scan_torch, x)), repeats)
                    row[f"layer {name}"] = median_seconds(on_path(lambda: layer(hidden)), repeats)
                leaf = hidden.clone().requires_grad_()

                def train_step():
                    layer.zero_grad(set_to_none=True)
                    layer(leaf).sum().backward()

                row[f"train {name}"] = median_seconds(on_path(train_step), repeats)
            if reference is not None and updates <= ref_max_updates:
                with torch.no_grad():
                    row["scan ref"] = median_seconds(lambda: call(reference, x), repeats)
            per_token = {k: v / length * 1e6 for k, v in row.items()}
            cell = lambda key: f"{per_token[key]:8.3f}" if key in per_token else "       -"  # noqa: E731

            def ratio(slow, fast):
                return f"{row[slow] / row[fast]:5.2f}x" if slow in row and fast in row else "    -"

            print(f"d_inner {d_inner:5d} length {length:6d} | {cell('scan kernel')} {cell('scan pytorch')} "
                  f"{cell('scan ref')} | {cell('layer kernel')} {cell('layer pytorch')} | {cell('train kernel')} "
                  f"{cell('train pytorch')} | kernel faster: scan {ratio('scan pytorch', 'scan kernel')} "
                  f"(ref {ratio('scan ref', 'scan kernel')}), layer {ratio('layer pytorch', 'layer kernel')}, "
                  f"layer train {ratio('train pytorch', 'train kernel')}", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[4096, 16384])
    parser.add_argument("--d-inner", type=int, default=2048)
    parser.add_argument("--d-state", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-check", action="store_true", help="skip the float64 accuracy check")
    parser.add_argument("--no-baseline-above", type=int, default=4096,
                        help="skip the plain loops above this length (they take seconds each)")
    parser.add_argument("--under-load", type=int, nargs="+", metavar="N",
                        help="only the comparison beside N busy-loop processes, for each N given")
    parser.add_argument("--widths", type=int, nargs="+", metavar="D_INNER",
                        help="only the per-token comparison of the kernel and PyTorch paths at these d_inner")
    parser.add_argument("--ref-max-updates", type=int, default=2**28,
                        help="--widths: skip selective_scan_ref above this many state updates "
                             "(length x d_inner x d_state)")
    parser.add_argument("--pytorch-max-updates", type=int, default=2**31,
                        help="--widths: skip the PyTorch path above this many state updates")
    parser.add_argument("--memory-probe", choices=["storm_hf", "loop_ref", "loop_channel", "loop", "mamba_ssm_ref"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_probe:
        return memory_probe(args.memory_probe, args.lengths[0], args.d_inner, args.d_state)
    if args.under_load:
        return under_load(args.lengths[0], args.under_load, args.repeats)
    if args.widths:
        return width_figures(args.widths, args.lengths, args.repeats, args.ref_max_updates, args.pytorch_max_updates,
                             args.d_state)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32, batch 1, "
          f"d_inner {args.d_inner}, d_state {args.d_state}; median of {args.repeats} after a warm-up")
    for length in args.lengths:
        x = make_inputs(length, args.d_inner, args.d_state)
        with torch.no_grad():
            ours = median_seconds(lambda: call(selective_scan_torch, x), args.repeats)
        ours_train = median_seconds(lambda: forward_backward(selective_scan_torch, x), args.repeats)
        mem = peak_extra_memory_mb("storm_hf", length, args.d_inner, args.d_state)
        print(f"\nlength {length}")
        print(f"  {'storm_hf forward':26s}  {ours * 1e3:9.1f} ms   extra peak memory {mem:7.0f} MB")
        print(f"  {'storm_hf forward+backward':26s}  {ours_train * 1e3:9.1f} ms   = {ours_train / ours:.2f}x its forward")
        if length <= args.no_baseline_above:
            arms = [("loop (mamba_ssm layout)", loop_channel_major, "loop_channel"),
                    ("loop (ref, materialised)", loop_reference_layout, "loop_ref"),
                    ("loop (contiguous)", selective_scan_sequential, "loop")]
            reference = mamba_ssm_reference()
            if reference is not None:
                arms.insert(0, ("mamba_ssm selective_scan_ref", reference, "mamba_ssm_ref"))
            for name, fn, probe in arms:
                with torch.no_grad():
                    seconds = median_seconds(lambda: call(fn, x), args.repeats)
                loop_mem = peak_extra_memory_mb(probe, length, args.d_inner, args.d_state)
                print(f"  {name:26s}  {seconds * 1e3:9.1f} ms   extra peak memory {loop_mem:7.0f} MB"
                      f"   -> storm_hf forward is {seconds / ours:.1f}x faster")
        mixer_forward, mixer_train = mixer_figures(length, args.repeats)
        print(f"  mixer d_model 1024 forward  {mixer_forward * 1e3:9.1f} ms; forward+backward "
              f"{mixer_train * 1e3:.1f} ms = {mixer_train / mixer_forward:.2f}x")
        if not args.no_check and length == args.lengths[0]:
            errors = relative_errors(length, args.d_inner, args.d_state)
            worst = max(errors, key=errors.get)
            print(f"  max relative error vs float64 reference: {errors[worst]:.1e} ({worst}); "
                  + ", ".join(f"{k} {v:.0e}" for k, v in errors.items()))


if __name__ == "__main__":
    main()
