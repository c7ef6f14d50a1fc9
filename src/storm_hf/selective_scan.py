# Copyright 2026 The storm_hf authors. Licensed under the Apache License, Version 2.0.
"""The Mamba-1 selective scan: a compiled CPU kernel, a fast pure-PyTorch path, a sequential reference, and the CUDA
kernel seam.

The recurrence, per batch row, channel ``d`` and state ``n``::

    delta_t = softplus(delta_t + delta_bias)                  (when delta_softplus)
    h_t     = exp(delta_t * A[d, n]) * h_{t-1} + delta_t * B_t[n] * u_t[d]
    y_t[d]  = sum_n C_t[n] * h_t[d, n]  +  D[d] * u_t[d]
    y_t     = y_t * silu(z_t)                                 (when z is given)

All functions here take the *sequence-major* layout used by the rest of storm_hf:
``u, delta, z: (batch, length, d_inner)``, ``B, C: (batch, length, d_state)``, ``A: (d_inner, d_state)``,
``D, delta_bias: (d_inner,)``, states ``(batch, d_inner, d_state)`` (mamba_ssm's ``ssm_state`` layout).
mamba_ssm's kernels take ``(batch, d_inner, length)``; `selective_scan` transposes at the seam.

On a CPU the scan runs, by default, a small C kernel (`_CPU_SCAN_SOURCE`) that fuses the whole scan over time per
(batch row, 16 channels), built on first use with the system's C compiler and cached (see "The compiled CPU scan"
below); without a compiler it runs the pure-PyTorch path, with the same results to fp32 rounding.

Why the pure-PyTorch path looks the way it does (measured on a 2-core CPU, d_inner 2048, d_state 16,
length 4096; see benchmarks/RESULTS.md):

* A per-timestep loop that computes ``exp(delta_t * A)`` and the state update one step at a time pays
  ~8 kernel launches per step on scattered (d_inner, d_state) slices.
* Log-space cumulative-sum ("parallel") forms overflow fp32 once ``delta * A`` is large, as in trained
  models (and were reported at only 1.3-2x over the plain loop on this kind of machine).
* What is fast: cut time into blocks of a few dozen steps that fit in cache; for a block compute the
  time steps (bias + softplus), decays ``exp(delta * A)`` and inputs ``delta * B * u`` with a handful of
  vectorised ops in a contiguous ``(steps, batch, d_state, d_inner)`` layout, run the recurrence as ONE
  in-place ``addcmul`` per step on contiguous rows, contract with ``C`` by a batched matmul and apply the
  ``D`` skip and ``silu(z)`` gate while the block is still in cache. Buffers are reused across blocks.
* Without gradients nothing is kept for a backward. With gradients only the state entering each block
  is kept: the backward (written by hand; autograd through per-step slices is quadratic in length)
  recomputes a block's states from it, runs the adjoint recurrence backwards in time in the same
  one-``addcmul``-per-step form and reduces the gradients with matmuls. Memory stays
  O(length * d_inner), never O(length * d_inner * d_state).
* The forward and the backward are `torch.library` custom ops (``storm_hf::selective_scan_fwd`` /
  ``storm_hf::selective_scan_bwd``, with fake implementations and the backward registered as the forward's
  autograd formula): torch.compile and torch.export see one op per scan instead of tracing the per-step loop
  (which dynamo unrolled: minutes of compile for a model with a few hundred steps), and the op bodies run as in
  eager, under the `CPU_SCAN_THREADS` setting and with autocast off.
"""

from __future__ import annotations

import ctypes
import os
import threading
from contextlib import contextmanager
from functools import partial

import torch
import torch.nn.functional as F


# Elements of one (steps, batch, d_state, d_inner) block buffer: 2**20 fp32 values = 4 MiB (32 steps at
# d_inner 2048, d_state 16). Measured on a 2-core CPU: 2**18..2**22 are within ~15% of each other; smaller
# blocks make the per-step ops cheaper (cache) but add per-block launches.
_BLOCK_ELEMENTS = 2**20


# Intra-op threads of the scan on a CPU (forward and backward). Its ops are many and small (per 4 MiB block a
# few vectorised passes, then one 32k-element addcmul per step), and every op split over threads waits for the
# slowest of them: on a 2-core machine with busy neighbours (threads descheduled) the scan with 2 threads was
# 4-5x slower than with one, while on a quiet machine 2 threads are ~1.4x faster (benchmarks/scan.py
# --under-load). "auto": the process's threads, but no more than the cores no other task is running on right
# now (the kernel's count of runnable tasks minus this process's own), and one for small scans (under
# `_AUTO_MIN_ELEMENTS` state updates). An int: that many. None: the process's setting, always.
CPU_SCAN_THREADS: int | str | None = "auto"
_AUTO_MIN_ELEMENTS = 1 << 22  # length * batch * d_inner * d_state below which "auto" uses one thread

_threads_lock = threading.Lock()
_threads_users = 0
_threads_before = 0


def _free_cores() -> int | None:
    """Cores this process may use that no other task is running on right now (Linux /proc), or None."""
    try:
        cores = len(os.sched_getaffinity(0))
        with open("/proc/loadavg") as f:
            running = int(f.read().split()[3].split("/")[0])  # runnable tasks on the machine, now
        own = 0
        for task in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{task}/stat") as f:
                own += f.read().rpartition(")")[2].split()[0] == "R"
    except (OSError, ValueError, IndexError, AttributeError):
        return None
    return cores - max(0, running - own)


def _scan_thread_count(work: int) -> int | None:
    """Intra-op threads for a scan of ``work`` state updates (None: leave the process's setting)."""
    if CPU_SCAN_THREADS is None:
        return None
    if CPU_SCAN_THREADS != "auto":
        return int(CPU_SCAN_THREADS)
    if work < _AUTO_MIN_ELEMENTS:
        return 1
    free = _free_cores()
    return None if free is None else max(1, min(torch.get_num_threads(), free))


@contextmanager
def _scan_threads(device: torch.device, work: int):
    """Run the block with `_scan_thread_count` intra-op threads on a CPU; the process's setting is restored
    when the last scan running (on any thread) leaves."""
    global _threads_users, _threads_before
    # Entered only inside the scan's custom ops (`selective_scan_fwd` / `_bwd`), whose bodies run eagerly even in
    # a compiled or exported graph (the compiler sees the op, never its body): the setting holds around each call.
    threads = _scan_thread_count(work) if device.type == "cpu" else None
    if threads is None:
        yield
        return
    with _threads_lock:
        if _threads_users == 0:
            _threads_before = torch.get_num_threads()
        if threads != torch.get_num_threads():
            torch.set_num_threads(threads)
        _threads_users += 1
    try:
        yield
    finally:
        with _threads_lock:
            _threads_users -= 1
            if _threads_users == 0 and torch.get_num_threads() != _threads_before:
                torch.set_num_threads(_threads_before)


def _steps_per_block(length: int, batch: int, d_state: int, d_inner: int) -> int:
    # sym_min / sym_max: plain ints in the op bodies; no shape guards in the fake implementations under tracing.
    return torch.sym_max(1, torch.sym_min(length, _BLOCK_ELEMENTS // torch.sym_max(1, batch * d_state * d_inner)))


def _num_blocks(length: int, steps: int) -> int:
    return (length + steps - 1) // steps


def _fill_decay_and_input(delta, delta_u, B, A_t, decay, states):
    """Fill one block's decays and inputs in place.

    delta, delta_u: (steps, batch, d_inner); B: (steps, batch, d_state); A_t: (d_state, d_inner)
    decay, states: (steps, batch, d_state, d_inner) outputs.
    """
    torch.mul(delta.unsqueeze(2), A_t, out=decay)  # (steps, batch, d_state, d_inner)
    decay.exp_()
    torch.mul(delta_u.unsqueeze(2), B.unsqueeze(3), out=states)  # (steps, batch, d_state, d_inner)


def _run_recurrence(decay, states, h_prev):
    """h_t = decay_t * h_{t-1} + states_t, in place in `states`; one addcmul per step. Returns h_last."""
    for decay_t, state_t in zip(decay.unbind(0), states.unbind(0)):
        state_t.addcmul_(decay_t, h_prev)
        h_prev = state_t
    return h_prev


def _block_bounds(length: int, steps: int):
    return [(t0, min(length, t0 + steps)) for t0 in range(0, length, steps)]


def _time_step(delta_raw, delta_bias, softplus):
    """The time step of one block, (steps, batch, d_inner): returns ``pre = delta_raw + delta_bias`` and
    ``dt = softplus(pre)`` (each part optional; the backward needs ``pre`` for the softplus)."""
    pre = delta_raw if delta_bias is None else delta_raw + delta_bias
    return pre, (F.softplus(pre) if softplus else pre)


def _scan_forward(u, delta, A_t, B, C, D, z, delta_bias, h0, softplus, block_starts=None):
    """Blocked forward of the whole scan, prologue (bias, softplus) and epilogue (D skip, silu(z) gate)
    fused into each cache-sized block. Time-major fp32 tensors (see `selective_scan_fwd`).

    Returns out: (length, batch, d_inner) and h_last: (batch, d_state, d_inner). When `block_starts`
    (num_blocks, batch, d_state, d_inner) is given, the state entering each block is stored there.
    """
    length, batch, d_inner = u.shape
    d_state = A_t.shape[0]
    steps = _steps_per_block(length, batch, d_state, d_inner)
    out = torch.empty_like(u)
    decay_buf = u.new_empty(steps, batch, d_state, d_inner)
    states_buf = u.new_empty(steps, batch, d_state, d_inner)
    # The state entering each block has its own buffer: the previous block's last state is a row of
    # states_buf, which the next fill overwrites.
    h_start = h0.clone()
    for block, (t0, t1) in enumerate(_block_bounds(length, steps)):
        n = t1 - t0
        decay, states = decay_buf[:n], states_buf[:n]
        if block_starts is not None:
            block_starts[block].copy_(h_start)
        _, dt = _time_step(delta[t0:t1], delta_bias, softplus)  # (n, batch, d_inner)
        _fill_decay_and_input(dt, dt * u[t0:t1], B[t0:t1], A_t, decay, states)
        h_last = _run_recurrence(decay, states, h_start)
        y = out[t0:t1]
        # y_t = C_t . h_t: (n, batch, 1, d_state) @ (n, batch, d_state, d_inner) -> (n, batch, 1, d_inner)
        torch.matmul(C[t0:t1].unsqueeze(2), states, out=y.unsqueeze(2))
        if D is not None:
            y.addcmul_(u[t0:t1], D)
        if z is not None:
            y.mul_(F.silu(z[t0:t1]))
        h_start.copy_(h_last)
    return out, h_start


def _scan_backward(grad_out, grad_h_last, u, delta, A_t, B, C, D, z, delta_bias, block_starts, softplus, steps):
    """The hand-written backward of `_scan_forward` (time-major fp32 tensors, as `selective_scan_fwd`): recomputes
    each block's states from ``block_starts`` (the state entering each block of ``steps`` steps) and runs the
    adjoint recurrence backwards in time. ``grad_out`` / ``grad_h_last`` may be None (that output unused).
    Returns the gradients of u, delta, A_t, B, C, D, z, delta_bias and h0 (None for an absent D, z, delta_bias).
    """
    length, batch, d_inner = u.shape
    d_state = A_t.shape[0]
    grad_out = torch.zeros_like(u) if grad_out is None else grad_out.contiguous()

    grad_u = torch.empty_like(u)
    grad_delta = torch.empty_like(delta)
    grad_B = torch.empty_like(B)
    grad_C = torch.empty_like(C)
    grad_z = torch.empty_like(z) if z is not None else None
    # Block-sized buffers, allocated once (fresh MiB-sized tensors per block cost page faults).
    decay_buf = u.new_empty(steps, batch, d_state, d_inner)
    states_buf = u.new_empty(steps, batch, d_state, d_inner)
    adjoint_buf = u.new_empty(steps, batch, d_state, d_inner)
    grad_A_acc = u.new_zeros(steps, batch, d_state, d_inner)  # summed over (steps, batch) at the end
    grad_D_acc = u.new_zeros(steps, batch, d_inner) if D is not None else None
    grad_bias_acc = u.new_zeros(steps, batch, d_inner) if delta_bias is not None else None
    carry = u.new_zeros(batch, d_state, d_inner)  # dL/dh at the end of the current block
    if grad_h_last is not None:
        carry.copy_(grad_h_last)

    for block, (t0, t1) in reversed(list(enumerate(_block_bounds(length, steps)))):
        n = t1 - t0
        decay, states, adjoint = decay_buf[:n], states_buf[:n], adjoint_buf[:n]
        h_start = block_starts[block]
        u_blk, g_out = u[t0:t1], grad_out[t0:t1]  # (n, batch, d_inner)

        # 1. Recompute this block's time steps, decays and states from its boundary state.
        pre, dt = _time_step(delta[t0:t1], delta_bias, softplus)
        dt_u = dt * u_blk
        _fill_decay_and_input(dt, dt_u, B[t0:t1], A_t, decay, states)
        _run_recurrence(decay, states, h_start)

        # 2. Epilogue: out = (C.h + D u) * silu(z). dy = dL/d(C.h + D u).
        if z is not None:
            y_pre = torch.matmul(C[t0:t1].unsqueeze(2), states).squeeze(2)  # (n, batch, d_inner)
            if D is not None:
                y_pre.addcmul_(u_blk, D)
            grad_z[t0:t1] = torch.ops.aten.silu_backward(g_out * y_pre, z[t0:t1])
            dy = g_out * F.silu(z[t0:t1])
        else:
            dy = g_out
        if D is not None:
            grad_D_acc[:n].addcmul_(dy, u_blk)

        # 3. dL/dC_t = h_t . dy_t: (n, batch, d_state, d_inner) @ (n, batch, d_inner, 1)
        torch.matmul(states, dy.unsqueeze(3), out=grad_C[t0:t1].unsqueeze(3))

        # 4. Adjoint recurrence G_t = C_t (x) dy_t + decay_{t+1} * G_{t+1}, backwards in time.
        torch.mul(C[t0:t1].unsqueeze(3), dy.unsqueeze(2), out=adjoint)  # (n, batch, d_state, d_inner)
        adjoint_rows, decay_rows = adjoint.unbind(0), decay.unbind(0)
        adjoint_rows[n - 1].add_(carry)
        for i in range(n - 2, -1, -1):
            adjoint_rows[i].addcmul_(decay_rows[i + 1], adjoint_rows[i + 1])

        # 5. Input term b_t = dt_t u_t B_t: dL/d(dt u)_t = B_t . G_t and dL/dB_t = G_t . (dt u)_t.
        grad_dt_u = torch.matmul(B[t0:t1].unsqueeze(2), adjoint).squeeze(2)  # (n, batch, d_inner)
        torch.matmul(adjoint, dt_u.unsqueeze(3), out=grad_B[t0:t1].unsqueeze(3))

        # 6. Decay term: W_t = dL/d(dt_t A) = G_t * decay_t * h_{t-1}, built in the decay buffer.
        decay.mul_(adjoint)  # decay_t * G_t; row 0 is the carry into the previous block
        carry.copy_(decay[0])
        decay[1:].mul_(states[:-1])
        decay[0].mul_(h_start)
        grad_A_acc[:n].addcmul_(decay, dt.unsqueeze(2))  # dL/dA = sum_t W_t dt_t
        torch.mul(decay, A_t, out=states)  # states is scratch now
        grad_dt = states.sum(dim=2)  # dL/d dt_t = sum_n W_t A + ...
        grad_dt.addcmul_(grad_dt_u, u_blk)  # ... + dL/d(dt u) u

        # 7. Back through the prologue and into u.
        grad_u_blk = grad_u[t0:t1]
        torch.mul(grad_dt_u, dt, out=grad_u_blk)
        if D is not None:
            grad_u_blk.addcmul_(dy, D)
        if softplus:  # F.softplus's backward (beta 1, threshold 20), into grad_delta directly
            grad_delta[t0:t1] = torch.ops.aten.softplus_backward(grad_dt, pre, 1, 20)
        else:
            grad_delta[t0:t1] = grad_dt
        if delta_bias is not None:
            grad_bias_acc[:n].add_(grad_delta[t0:t1])

    grad_A_t = grad_A_acc.sum(dim=(0, 1))
    grad_D = grad_D_acc.sum(dim=(0, 1)) if D is not None else None
    grad_bias = grad_bias_acc.sum(dim=(0, 1)) if delta_bias is not None else None
    return grad_u, grad_delta, grad_A_t, grad_B, grad_C, grad_D, grad_z, grad_bias, carry


# ----------------------------------------------------------------------------------------------------
# The compiled CPU scan. In eager PyTorch the recurrence is one small op per time step plus a few passes over
# (steps, batch, d_state, d_inner) buffers; at the widths a CPU runs (d_inner 128-512) those per-step calls are
# most of the time (benchmarks/RESULTS.md, issue 27). The C function below runs the recurrence, the exp of the
# decays and the C contraction in one loop over time per (batch row, 16 channels), in registers, the way
# mamba_ssm's CUDA kernel runs it per thread block. It is compiled on first use with the system's C compiler
# (``cc``, or $CC; well under a second, no torch headers, no Python headers), cached, loaded with ctypes and
# checked against the PyTorch path once per process before it is used. Without a compiler, on a platform it
# does not build on, or with STORM_HF_CPU_SCAN_KERNEL=0 the PyTorch path runs instead (same results within fp32
# rounding). The forward and backward keep the PyTorch path's contract exactly (the state entering each block
# of `_steps_per_block` steps), so either backward can follow either forward.
# ----------------------------------------------------------------------------------------------------

# "auto": use the compiled CPU scan when it builds and passes its check; False: never. The environment variable
# STORM_HF_CPU_SCAN_KERNEL=0 sets False at import.
CPU_SCAN_KERNEL: bool | str = "auto" if os.environ.get("STORM_HF_CPU_SCAN_KERNEL", "1") != "0" else False
_KERNEL_MAX_STATE = 64  # d_state bound of the kernel's on-stack state (MAX_STATE below)
_KERNEL_CHUNK = 16  # channels per work item (CHUNK below)
_KERNEL_FLAGS = ("-O3", "-fno-trapping-math", "-fno-math-errno", "-fopenmp-simd", "-fPIC", "-shared")

_CPU_SCAN_SOURCE = r"""
/* storm_hf's CPU selective scan: the Mamba-1 scan fused over time, one pass per (batch row, 16 channels), as
   mamba_ssm's CUDA kernel fuses it per thread block: time step (bias + softplus), decays, recurrence, the C
   contraction, the D skip and the silu(z) gate in registers, nothing of length x d_inner x d_state in memory.
   Layouts (time-major, as storm_hf's scan ops): u, delta, z, grad_out (length, batch, d_inner) with any strides
   (a channel stride other than 1 is read element by element: over the steps of an item those reads stay in the
   same cache lines), B, C (length, batch, d_state) with unit stride inside a row; A_t
   (d_state, d_inner); D, delta_bias (d_inner); states (batch, d_state, d_inner); block_starts (num_blocks, batch,
   d_state, d_inner), the state entering each block of `steps` steps; outputs contiguous. D and delta_bias
   are always given (zeros where the scan has none). Each entry point takes a
   range of work items so that the caller runs ranges on its own threads; an item writes only its own outputs. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define CHUNK 16      /* channels per item: two 8-wide vectors */
#define MAX_STATE 64  /* d_state bound of the on-stack state (the caller checks) */

typedef struct {
    int64_t length, batch, d_inner, d_state, steps, softplus, chunks_per_group;
    const float *u, *delta, *z, *B, *C, *grad_out;
    int64_t u_st, u_sb, u_sd, delta_st, delta_sb, delta_sd, z_st, z_sb, z_sd, g_st, g_sb, g_sd;
    int64_t B_st, B_sb, C_st, C_sb;
    const float *A_t, *D, *delta_bias, *h0;
    float *out, *h_last, *block_starts;
    float *grad_h, *grad_u, *grad_delta, *grad_z, *grad_A_rows, *grad_D_rows, *grad_bias_rows;
    float *grad_B_parts, *grad_C_parts;
} scan_args;

#if defined(__x86_64__) && defined(__linux__) && (defined(__GNUC__) || defined(__clang__))
/* One copy per instruction set, chosen when the library loads: the cached library runs on any x86-64. */
#define SCAN_TARGETS __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define SCAN_TARGETS
#endif
#define INLINE static inline __attribute__((always_inline))

/* exp(x) in fp32 to ~1 ulp, branch-free so that it vectorises: x = k ln2 + r (round to nearest by the
   1.5 * 2^23 trick), Cephes' degree-5 polynomial for exp(r), 2^k built in the exponent bits. x is clamped to
   [-87.3, 88.7] first (exp(-87.3) ~ 1e-38 stands for the subnormal results, exp(88.7) ~ 3e38 for overflow); NaN
   stays NaN. */
INLINE float scan_exp(float x) {
    x = x < -87.3f ? -87.3f : (x > 88.7f ? 88.7f : x);
    const float k = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    const float r = (x - k * 0.693359375f) - k * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    const int32_t bits = ((int32_t)k + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

/* log(x) for finite x >= 1 (Cephes' logf: x = m 2^e with m in [sqrt(1/2), sqrt(2)), a degree-8 polynomial). */
INLINE float scan_log(float x) {
    int32_t bits;
    memcpy(&bits, &x, sizeof bits);
    const int32_t mantissa_bits = (bits & 0x007fffff) | 0x3f800000;
    float m;
    memcpy(&m, &mantissa_bits, sizeof m);
    float e = (float)(((bits >> 23) & 0xff) - 127);
    const int fold = m > 1.41421356f;
    m = fold ? m * 0.5f : m;
    e = fold ? e + 1.0f : e;
    const float f = m - 1.0f, f2 = f * f;
    float p = 7.0376836292e-2f;
    p = p * f - 1.1514610310e-1f;
    p = p * f + 1.1676998740e-1f;
    p = p * f - 1.2420140846e-1f;
    p = p * f + 1.4249322787e-1f;
    p = p * f - 1.6668057665e-1f;
    p = p * f + 2.0000714765e-1f;
    p = p * f - 2.4999993993e-1f;
    p = p * f + 3.3333331174e-1f;
    float y = p * f * f2 + e * -2.12194440e-4f - 0.5f * f2;
    return f + y + e * 0.693359375f;
}

/* softplus(pre) as torch's (beta 1, threshold 20), and its derivative sigmoid(pre). log1p(e) as
   log(1 + e) * e / ((1 + e) - 1), exact to rounding even where 1 + e rounds to 1. */
INLINE float scan_softplus(float pre, float *sigmoid) {
    const float e = scan_exp(pre < 20.0f ? pre : 20.0f);
    const float one_plus = 1.0f + e;
    const float denominator = one_plus - 1.0f;
    const float log1p = denominator == 0.0f ? e : scan_log(one_plus) * (e / (denominator == 0.0f ? 1.0f : denominator));
    *sigmoid = pre > 20.0f ? 1.0f : e / one_plus;
    return pre > 20.0f ? pre : log1p;
}

INLINE float scan_sigmoid(float z) { return 1.0f / (1.0f + scan_exp(-z)); }

/* A row of w channels into dst, from src with channel stride `stride`. */
INLINE void load_row(const float *restrict src, int64_t stride, int64_t w, float *restrict dst) {
    if (stride == 1)
        for (int64_t j = 0; j < w; j++) dst[j] = src[j];
    else
        for (int64_t j = 0; j < w; j++) dst[j] = src[j * stride];
}

/* The time step of one row: dt = softplus(delta + bias) (or delta + bias), its derivative, and dt * u. */
INLINE void time_step(const scan_args *a, const float *restrict delta, const float *restrict u, int64_t d0,
                      int64_t w, float *restrict dt, float *restrict slope, float *restrict x) {
    const float *restrict bias = a->delta_bias + d0;
    if (a->softplus) {
        for (int64_t j = 0; j < w; j++) {
            float sigmoid;
            dt[j] = scan_softplus(delta[j] + bias[j], &sigmoid);
            slope[j] = sigmoid;
            x[j] = dt[j] * u[j];
        }
    } else {
        for (int64_t j = 0; j < w; j++) {
            dt[j] = delta[j] + bias[j];
            slope[j] = 1.0f;
            x[j] = dt[j] * u[j];
        }
    }
}

/* One step of the recurrence: h = exp(dt A) * prev + x B (prev and h d_state x CHUNK, may be the same array), and
   acc = C.h; the decays exp(dt A) go to `decays` too unless it is NULL (the backward keeps them). */
INLINE void step(const scan_args *a, int64_t d0, int64_t w, const float *restrict dt, const float *restrict x,
                 const float *restrict B, const float *restrict C, const float *prev, float *h,
                 float *restrict acc, float *restrict decays) {
    for (int64_t j = 0; j < w; j++) acc[j] = 0.0f;
    for (int64_t n = 0; n < a->d_state; n++) {
        const float *restrict A = a->A_t + n * a->d_inner + d0;
        const float bn = B[n], cn = C[n];
        float row[CHUNK];  /* a local row: no aliasing between prev and h for the vectoriser to fear */
        if (decays) {
            for (int64_t j = 0; j < w; j++) {
                const float decay = scan_exp(dt[j] * A[j]);
                decays[n * CHUNK + j] = decay;
                row[j] = decay * prev[n * CHUNK + j] + x[j] * bn;
            }
        } else {
            for (int64_t j = 0; j < w; j++) row[j] = scan_exp(dt[j] * A[j]) * prev[n * CHUNK + j] + x[j] * bn;
        }
        for (int64_t j = 0; j < w; j++) {
            h[n * CHUNK + j] = row[j];
            acc[j] += cn * row[j];
        }
    }
}

INLINE void forward_chunk(const scan_args *a, int64_t b, int64_t d0, int64_t w) {
    const int64_t D = a->d_inner, N = a->d_state;
    float h[MAX_STATE * CHUNK];
    for (int64_t n = 0; n < N; n++)
        for (int64_t j = 0; j < w; j++) h[n * CHUNK + j] = a->h0[(b * N + n) * D + d0 + j];
    for (int64_t t = 0; t < a->length; t++) {
        if (a->block_starts && t % a->steps == 0) {
            float *start = a->block_starts + ((t / a->steps) * a->batch + b) * N * D + d0;
            for (int64_t n = 0; n < N; n++)
                for (int64_t j = 0; j < w; j++) start[n * D + j] = h[n * CHUNK + j];
        }
        float u[CHUNK], delta[CHUNK], dt[CHUNK], slope[CHUNK], x[CHUNK], acc[CHUNK];
        load_row(a->u + t * a->u_st + b * a->u_sb + d0 * a->u_sd, a->u_sd, w, u);
        load_row(a->delta + t * a->delta_st + b * a->delta_sb + d0 * a->delta_sd, a->delta_sd, w, delta);
        time_step(a, delta, u, d0, w, dt, slope, x);
        step(a, d0, w, dt, x, a->B + t * a->B_st + b * a->B_sb, a->C + t * a->C_st + b * a->C_sb, h, h, acc, NULL);
        float *out = a->out + (t * a->batch + b) * D + d0;
        const float *restrict Dv = a->D + d0;
        if (a->z) {
            float z[CHUNK];
            load_row(a->z + t * a->z_st + b * a->z_sb + d0 * a->z_sd, a->z_sd, w, z);
            for (int64_t j = 0; j < w; j++) out[j] = (acc[j] + Dv[j] * u[j]) * z[j] * scan_sigmoid(z[j]);
        } else {
            for (int64_t j = 0; j < w; j++) out[j] = acc[j] + Dv[j] * u[j];
        }
    }
    for (int64_t n = 0; n < N; n++)
        for (int64_t j = 0; j < w; j++) a->h_last[(b * N + n) * D + d0 + j] = h[n * CHUNK + j];
}

/* Items first .. last - 1, item = b * chunks + chunk: out, h_last and (when not NULL) block_starts. Returns 0, or
   1 for arguments it does not take. */
SCAN_TARGETS int storm_scan_forward(const scan_args *a, int64_t first, int64_t last) {
    if (a->d_state < 1 || a->d_state > MAX_STATE || a->steps < 1) return 1;
    const int64_t chunks = (a->d_inner + CHUNK - 1) / CHUNK;
    for (int64_t item = first; item < last; item++) {
        const int64_t b = item / chunks, d0 = (item % chunks) * CHUNK;
        if (a->d_inner - d0 >= CHUNK)  /* a constant width: the channel loops vectorise without a remainder */
            forward_chunk(a, b, d0, CHUNK);
        else
            forward_chunk(a, b, d0, a->d_inner - d0);
    }
    return 0;
}

/* Scratch of one item's backward over one block of at most `steps` steps. */
typedef struct { float *states, *decays, *dt, *slope, *dy, *u; } block_scratch;

/* Backward of channels d0 .. d0 + w of batch row b. grad_h holds dL/dh_last on entry and gets dL/dh0. Per block,
   last first: its states are recomputed from its boundary state (with the gate's gradient, which needs C.h), then
   the adjoint G_t = C_t dy_t + decay_{t+1} G_{t+1} runs backwards in time with every gradient of the step. */
INLINE void backward_chunk(const scan_args *a, int64_t b, int64_t d0, int64_t w, float *grad_B, float *grad_C,
                           block_scratch s) {
    const int64_t D = a->d_inner, N = a->d_state, L = a->length, batch = a->batch, steps = a->steps;
    float G[MAX_STATE * CHUNK], gA[MAX_STATE * CHUNK], start[MAX_STATE * CHUNK], gD[CHUNK], gbias[CHUNK];
    for (int64_t n = 0; n < N; n++)
        for (int64_t j = 0; j < w; j++) {
            G[n * CHUNK + j] = a->grad_h[(b * N + n) * D + d0 + j];
            gA[n * CHUNK + j] = 0.0f;
        }
    for (int64_t j = 0; j < w; j++) { gD[j] = 0.0f; gbias[j] = 0.0f; }
    for (int64_t block = (L - 1) / steps; block >= 0; block--) {
        const int64_t t0 = block * steps, t1 = t0 + steps < L ? t0 + steps : L;
        const float *saved = a->block_starts + (block * batch + b) * N * D + d0;
        for (int64_t n = 0; n < N; n++)
            for (int64_t j = 0; j < w; j++) start[n * CHUNK + j] = saved[n * D + j];
        /* 1. The block's states from its boundary state; the gate's gradient; dy = dL/d(C.h + D u). */
        for (int64_t t = t0; t < t1; t++) {
            const int64_t i = t - t0;
            float *u = s.u + i * CHUNK, *dt = s.dt + i * CHUNK, delta[CHUNK], x[CHUNK], acc[CHUNK];
            load_row(a->u + t * a->u_st + b * a->u_sb + d0 * a->u_sd, a->u_sd, w, u);
            load_row(a->delta + t * a->delta_st + b * a->delta_sb + d0 * a->delta_sd, a->delta_sd, w, delta);
            time_step(a, delta, u, d0, w, dt, s.slope + i * CHUNK, x);
            const float *prev = i ? s.states + (i - 1) * N * CHUNK : start;
            step(a, d0, w, dt, x, a->B + t * a->B_st + b * a->B_sb, a->C + t * a->C_st + b * a->C_sb, prev,
                 s.states + i * N * CHUNK, acc, s.decays + i * N * CHUNK);
            float g[CHUNK], *dy = s.dy + i * CHUNK;
            load_row(a->grad_out + t * a->g_st + b * a->g_sb + d0 * a->g_sd, a->g_sd, w, g);
            if (a->z) {
                float z[CHUNK];
                load_row(a->z + t * a->z_st + b * a->z_sb + d0 * a->z_sd, a->z_sd, w, z);
                float *grad_z = a->grad_z + (t * batch + b) * D + d0;
                for (int64_t j = 0; j < w; j++) {
                    const float y = acc[j] + a->D[d0 + j] * u[j];
                    const float sig = scan_sigmoid(z[j]);
                    dy[j] = g[j] * z[j] * sig;
                    grad_z[j] = g[j] * y * sig * (1.0f + z[j] * (1.0f - sig));
                }
            } else {
                for (int64_t j = 0; j < w; j++) dy[j] = g[j];
            }
        }
        /* 2. The adjoint, backwards in time. */
        for (int64_t t = t1 - 1; t >= t0; t--) {
            const int64_t i = t - t0;
            const float *u = s.u + i * CHUNK;
            const float *B = a->B + t * a->B_st + b * a->B_sb, *C = a->C + t * a->C_st + b * a->C_sb;
            const float *dt = s.dt + i * CHUNK, *dy = s.dy + i * CHUNK, *slope = s.slope + i * CHUNK;
            const float *h = s.states + i * N * CHUNK, *prev = i ? h - N * CHUNK : start;
            float *gB = grad_B + (t * batch + b) * N, *gC = grad_C + (t * batch + b) * N;
            float x[CHUNK], gx[CHUNK], gdt[CHUNK];
            for (int64_t j = 0; j < w; j++) { x[j] = dt[j] * u[j]; gx[j] = 0.0f; gdt[j] = 0.0f; }
            for (int64_t n = 0; n < N; n++) {
                const float *A = a->A_t + n * D + d0;
                float *Gn = G + n * CHUNK, *gAn = gA + n * CHUNK;
                const float *hn = h + n * CHUNK, *pn = prev + n * CHUNK;
                const float *decay_n = s.decays + (i * N + n) * CHUNK;
                float sum_c = 0.0f, sum_b = 0.0f;
#pragma omp simd reduction(+ : sum_c, sum_b)
                for (int64_t j = 0; j < w; j++) {
                    const float Gt = Gn[j] + C[n] * dy[j];        /* G_t */
                    sum_c += hn[j] * dy[j];                        /* dL/dC_t[n] */
                    sum_b += Gt * x[j];                            /* dL/dB_t[n] */
                    gx[j] += B[n] * Gt;                            /* dL/d(dt u)_t */
                    const float decay = decay_n[j];
                    const float wt = Gt * decay * pn[j];           /* dL/d(dt_t A) */
                    gAn[j] += wt * dt[j];
                    gdt[j] += wt * A[j];
                    Gn[j] = Gt * decay;                            /* carried to step t - 1 */
                }
                gC[n] += sum_c;
                gB[n] += sum_b;
            }
            const int64_t row = (t * batch + b) * D + d0;
            for (int64_t j = 0; j < w; j++) {
                a->grad_u[row + j] = gx[j] * dt[j] + dy[j] * a->D[d0 + j];
                gD[j] += dy[j] * u[j];
                const float grad_delta = (gdt[j] + gx[j] * u[j]) * slope[j];
                a->grad_delta[row + j] = grad_delta;
                gbias[j] += grad_delta;
            }
        }
    }
    for (int64_t n = 0; n < N; n++)
        for (int64_t j = 0; j < w; j++) {
            a->grad_h[(b * N + n) * D + d0 + j] = G[n * CHUNK + j];
            a->grad_A_rows[(b * N + n) * D + d0 + j] = gA[n * CHUNK + j];
        }
    for (int64_t j = 0; j < w; j++) {
        if (a->grad_D_rows) a->grad_D_rows[b * D + d0 + j] = gD[j];
        if (a->grad_bias_rows) a->grad_bias_rows[b * D + d0 + j] = gbias[j];
    }
}

/* Items first .. last - 1, item = b * groups + group, a group being `chunks_per_group` consecutive chunks that
   add into their own slice of the grad_B / grad_C partials (zeroed by the caller). Returns 0, 1 for arguments it
   does not take, 2 when out of memory. */
SCAN_TARGETS int storm_scan_backward(const scan_args *a, int64_t first, int64_t last) {
    if (a->d_state < 1 || a->d_state > MAX_STATE || a->steps < 1 || a->chunks_per_group < 1) return 1;
    const int64_t chunks = (a->d_inner + CHUNK - 1) / CHUNK;
    const int64_t groups = (chunks + a->chunks_per_group - 1) / a->chunks_per_group;
    const int64_t steps = a->steps < a->length ? a->steps : a->length;
    float *memory = malloc((size_t)steps * (size_t)(2 * a->d_state + 4) * CHUNK * sizeof(float));
    if (!memory) return 2;
    const int64_t row = steps * CHUNK, N = a->d_state;
    const block_scratch scratch = {memory, memory + row * N, memory + row * 2 * N, memory + row * (2 * N + 1),
                                   memory + row * (2 * N + 2), memory + row * (2 * N + 3)};
    for (int64_t item = first; item < last; item++) {
        const int64_t b = item / groups, group = item % groups;
        float *grad_B = a->grad_B_parts + group * a->length * a->batch * a->d_state;
        float *grad_C = a->grad_C_parts + group * a->length * a->batch * a->d_state;
        for (int64_t c = group * a->chunks_per_group; c < chunks && c < (group + 1) * a->chunks_per_group; c++) {
            const int64_t d0 = c * CHUNK;
            if (a->d_inner - d0 >= CHUNK)
                backward_chunk(a, b, d0, CHUNK, grad_B, grad_C, scratch);
            else
                backward_chunk(a, b, d0, a->d_inner - d0, grad_B, grad_C, scratch);
        }
    }
    free(memory);
    return 0;
}
"""

_kernel_lock = threading.Lock()
_cpu_kernel_state: dict = {}  # "lib": the loaded library, or None once tried; "pool": (worker threads, owning pid)


def _kernel_cache_dir() -> str:
    root = os.environ.get("STORM_HF_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "storm_hf")
    return os.path.join(root, "kernels")


def _compile_cpu_kernel() -> str:
    """The kernel's shared library in the cache, built on first use (one per source, flags and platform: a cached one
    loads without a compiler). Raises RuntimeError with the compiler's message when it cannot be built."""
    import hashlib
    import platform
    import shutil
    import subprocess
    import sys
    import tempfile

    key = hashlib.sha256("\0".join((_CPU_SCAN_SOURCE, " ".join(_KERNEL_FLAGS), sys.platform,
                                     platform.machine())).encode()).hexdigest()[:20]
    folder = _kernel_cache_dir()
    library = os.path.join(folder, f"cpu_scan_{key}.so")
    if os.path.exists(library):
        return library
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not compiler:
        raise RuntimeError("no C compiler found (cc, gcc, clang or $CC)")
    os.makedirs(folder, exist_ok=True)
    # Built under a temporary name and renamed into place: processes starting together (data-parallel ranks)
    # each build their own copy and never load a half-written one.
    with tempfile.TemporaryDirectory(dir=folder, prefix="build-") as build:
        source = os.path.join(build, "cpu_scan.c")
        with open(source, "w") as f:
            f.write(_CPU_SCAN_SOURCE)
        built = os.path.join(build, "cpu_scan.so")
        try:
            result = subprocess.run([compiler, *_KERNEL_FLAGS, "-o", built, source], capture_output=True, text=True,
                                    timeout=300)
        except (OSError, subprocess.SubprocessError) as error:
            raise RuntimeError(f"the C compiler {compiler!r} does not run: {error}") from error
        if result.returncode != 0:
            message = (result.stderr or result.stdout).strip()[-2000:]
            raise RuntimeError(f"{compiler} failed (exit {result.returncode}){': ' + message if message else ''}")
        os.replace(built, library)
    return library


def _load_cpu_kernel():
    """The compiled library (built or taken from the cache) with its entry points' argument types. Raises when it
    cannot be built or loaded; `_cpu_kernel` checks it and falls back."""
    library = ctypes.CDLL(_compile_cpu_kernel())
    for entry in (library.storm_scan_forward, library.storm_scan_backward):
        entry.restype = ctypes.c_int
        entry.argtypes = [ctypes.POINTER(_ScanArgs), ctypes.c_int64, ctypes.c_int64]
    return library


def _cpu_kernel():
    """The compiled CPU scan library, or None (not wanted, cannot be built, or failed its check)."""
    if CPU_SCAN_KERNEL is False or os.environ.get("STORM_HF_CPU_SCAN_KERNEL", "1") == "0":
        return None
    if "lib" in _cpu_kernel_state:
        return _cpu_kernel_state["lib"]
    with _kernel_lock:
        if "lib" not in _cpu_kernel_state:
            library, reason = None, None
            try:
                library = _load_cpu_kernel()
                reason = _check_cpu_kernel(library)
            except Exception as error:  # no compiler, a failed build, an unloadable library
                reason = f"{type(error).__name__}: {error}"
            if reason is not None:
                library = None
                import logging

                logging.getLogger(__name__).warning(
                    "storm_hf: the compiled CPU selective scan is not available (%s); using the PyTorch scan, "
                    "which gives the same results but is several times slower at small widths. Set "
                    "STORM_HF_CPU_SCAN_KERNEL=0 to skip the attempt.", reason)
            _cpu_kernel_state["lib"] = library
    return _cpu_kernel_state["lib"]


def _check_cpu_kernel(library) -> str | None:
    """Run the kernel's forward and backward once on a small problem against the PyTorch path; the reason when
    they disagree (a miscompiled library must not give wrong answers), else None."""
    g = torch.Generator().manual_seed(0)
    length, batch, d_inner, d_state = 37, 2, 21, 5  # a partial chunk, several blocks (steps 8 below)
    r = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    u, delta, z, grad = r(length, batch, d_inner), r(length, batch, d_inner), r(length, batch, d_inner), \
        r(length, batch, d_inner)
    A_t, B, C = -torch.exp(r(d_state, d_inner)), r(length, batch, d_state), r(length, batch, d_state)
    D, bias, h0, grad_h = r(d_inner), r(d_inner), r(batch, d_state, d_inner), r(batch, d_state, d_inner)
    steps = 8  # blocks of 8 steps: the backward recomputes from the kernel's block states
    with torch.no_grad():
        starts = u.new_empty(_num_blocks(length, steps), batch, d_state, d_inner)
        expected = _scan_forward(u, delta, A_t, B, C, D, z, bias, h0, True)
        got = _kernel_scan_forward(library, u, delta, A_t, B, C, D, z, bias, h0, True, steps, starts)
        expected_grads = _scan_backward(grad, grad_h, u, delta, A_t, B, C, D, z, bias, starts, True, steps)
        got_grads = _kernel_scan_backward(library, grad, grad_h, u, delta, A_t, B, C, D, z, bias, starts, True, steps)
    for name, e, k in zip(("out", "h_last", *(f"grad {n}" for n in ("u", "delta", "A", "B", "C", "D", "z",
                                                                    "delta_bias", "h0"))),
                          (*expected[:2], *expected_grads), (*got[:2], *got_grads)):
        error = ((k - e).abs().max() / e.abs().max().clamp_min(1e-6)).item()
        if not error <= 1e-4:
            return f"its {name} differs from the PyTorch scan's by {error:.1e} (relative) in the self-check"
    return None


def _kernel_pool(threads: int):
    """Worker threads for the kernel's item ranges (ctypes releases the GIL during a call)."""
    from concurrent.futures import ThreadPoolExecutor

    pool, owner = _cpu_kernel_state.get("pool", (None, None))
    # A forked child (a data loader's worker, a serving engine's) inherits the pool without its threads: new pool.
    if pool is None or owner != os.getpid() or pool._max_workers < threads:
        pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="storm-scan")
        _cpu_kernel_state["pool"] = (pool, os.getpid())
    return pool


def _run_items(function, arguments, items: int):
    """Call the kernel ``function(arguments, first, last)`` over ``items`` work items, split into contiguous ranges
    over the scan's intra-op threads (the calling thread runs the first range)."""
    threads = max(1, min(torch.get_num_threads(), items))
    bounds = [items * i // threads for i in range(threads + 1)]
    pointer = ctypes.byref(arguments)
    futures = [_kernel_pool(threads - 1).submit(function, pointer, bounds[i], bounds[i + 1])
               for i in range(1, threads)] if threads > 1 else []
    codes = [function(pointer, bounds[0], bounds[1])] + [f.result() for f in futures]
    if any(codes):
        raise RuntimeError(f"storm_hf's compiled CPU scan refused its arguments (codes {codes}).")


class _ScanArgs(ctypes.Structure):
    """The kernel's `scan_args` (same fields, same order)."""

    _fields_ = [(name, ctypes.c_int64) for name in
                ("length", "batch", "d_inner", "d_state", "steps", "softplus", "chunks_per_group")] + \
        [(name, ctypes.c_void_p) for name in ("u", "delta", "z", "B", "C", "grad_out")] + \
        [(name, ctypes.c_int64) for name in
         ("u_st", "u_sb", "u_sd", "delta_st", "delta_sb", "delta_sd", "z_st", "z_sb", "z_sd", "g_st", "g_sb", "g_sd",
          "B_st", "B_sb", "C_st", "C_sb")] + \
        [(name, ctypes.c_void_p) for name in
         ("A_t", "D", "delta_bias", "h0", "out", "h_last", "block_starts", "grad_h", "grad_u", "grad_delta",
          "grad_z", "grad_A_rows", "grad_D_rows", "grad_bias_rows", "grad_B_parts", "grad_C_parts")]


def _scan_args(u, delta, A_t, B, C, D, z, delta_bias, softplus, steps, **outputs) -> _ScanArgs:
    """The kernel's arguments. Sequences are read where they are, with their strides (the scan ops get time-major
    views of the model's tensors: nothing is copied); B, C, D and delta_bias get unit stride inside their rows where
    they lack it, A_t is made contiguous, and an absent D or delta_bias is passed as zeros (the kernel's loops read
    them without a branch). The keyword tensors (states, outputs) must be contiguous. Every tensor the pointers point
    into stays referenced by the returned structure, so none is freed before the kernel returns."""
    length, batch, d_inner = u.shape
    B, C, D, delta_bias = _unit_rows(B, C, D, delta_bias)
    D = u.new_zeros(d_inner) if D is None else D
    delta_bias = u.new_zeros(d_inner) if delta_bias is None else delta_bias
    A_t = A_t.contiguous()
    arguments = _ScanArgs(length=length, batch=batch, d_inner=d_inner, d_state=A_t.shape[0], steps=steps,
                          softplus=int(softplus), chunks_per_group=outputs.pop("chunks_per_group", 1))
    sequences = (("u", u), ("delta", delta), ("z", z), ("B", B), ("C", C), ("grad_out", outputs.pop("grad_out", None)))
    arguments.tensors = (*(t for _, t in sequences), A_t, D, delta_bias, *outputs.values())  # alive while it is
    for name, tensor in sequences:
        if tensor is not None:
            prefix = "g" if name == "grad_out" else name
            setattr(arguments, name, tensor.data_ptr())
            setattr(arguments, f"{prefix}_st", tensor.stride(0))
            setattr(arguments, f"{prefix}_sb", tensor.stride(1))
            if name not in ("B", "C"):
                setattr(arguments, f"{prefix}_sd", tensor.stride(2))
    for name, tensor in (("A_t", A_t), ("D", D), ("delta_bias", delta_bias), *outputs.items()):
        if tensor is not None:
            setattr(arguments, name, tensor.data_ptr())
    return arguments


def _unit_rows(*tensors):
    """The tensors with unit stride inside their rows (what the kernel needs of B, C, D and delta_bias), each copied
    only when it lacks it; None stays None."""
    return tuple(t if t is None or t.stride(-1) == 1 else t.contiguous() for t in tensors)


def _kernel_scan_forward(library, u, delta, A_t, B, C, D, z, delta_bias, h0, softplus, steps, block_starts=None):
    """`_scan_forward` in ``library`` (the compiled kernel): same arguments, plus the block length ``steps`` the
    stored block states follow; sequences may be strided views (see `_scan_args`)."""
    length, batch, d_inner = u.shape
    out = u.new_empty(length, batch, d_inner)
    h_last = u.new_empty(batch, A_t.shape[0], d_inner)
    arguments = _scan_args(u, delta, A_t, B, C, D, z, delta_bias, softplus, steps, h0=h0.contiguous(), out=out,
                           h_last=h_last, block_starts=block_starts)
    _run_items(library.storm_scan_forward, arguments, batch * -(-d_inner // _KERNEL_CHUNK))
    return out, h_last


def _kernel_scan_backward(library, grad_out, grad_h_last, u, delta, A_t, B, C, D, z, delta_bias, block_starts,
                          softplus, steps):
    """`_scan_backward` in ``library`` (the compiled kernel): same arguments and returns; sequences may be strided
    views (see `_scan_args`)."""
    length, batch, d_inner = u.shape
    d_state = A_t.shape[0]
    grad_out = u.new_zeros(length, batch, d_inner) if grad_out is None else grad_out
    grad_h = (u.new_zeros(batch, d_state, d_inner) if grad_h_last is None  # dL/dh_last in, dL/dh0 out, in place
              else grad_h_last.clone(memory_format=torch.contiguous_format))
    chunks = -(-d_inner // _KERNEL_CHUNK)
    # Work items are (batch row, group of chunks); each group adds into its own copy of dL/dB and dL/dC (summed
    # below), so there are only as many groups as the threads need.
    groups = max(1, min(chunks, -(-torch.get_num_threads() // batch)))
    chunks_per_group = -(-chunks // groups)
    groups = -(-chunks // chunks_per_group)
    new = lambda *shape: u.new_empty(shape)  # noqa: E731
    grads = dict(grad_u=new(length, batch, d_inner), grad_delta=new(length, batch, d_inner),
                 grad_z=None if z is None else new(length, batch, d_inner), grad_A_rows=new(batch, d_state, d_inner),
                 grad_D_rows=None if D is None else new(batch, d_inner),
                 grad_bias_rows=None if delta_bias is None else new(batch, d_inner),
                 grad_B_parts=u.new_zeros(groups, length, batch, d_state),
                 grad_C_parts=u.new_zeros(groups, length, batch, d_state))
    arguments = _scan_args(u, delta, A_t, B, C, D, z, delta_bias, softplus, steps, grad_out=grad_out,
                           chunks_per_group=chunks_per_group, block_starts=block_starts.contiguous(), grad_h=grad_h,
                           **grads)
    _run_items(library.storm_scan_backward, arguments, batch * groups)
    grad_D = None if D is None else grads["grad_D_rows"].sum(0)
    grad_bias = None if delta_bias is None else grads["grad_bias_rows"].sum(0)
    return (grads["grad_u"], grads["grad_delta"], grads["grad_A_rows"].sum(0), grads["grad_B_parts"].sum(0),
            grads["grad_C_parts"].sum(0), grad_D, grads["grad_z"], grad_bias, grad_h)


def _cpu_kernel_for(u: torch.Tensor, d_state: int):
    """The compiled library when the scan of ``u`` runs on it (a CPU tensor, d_state it takes), else None."""
    return _cpu_kernel() if u.device.type == "cpu" and d_state <= _KERNEL_MAX_STATE else None


def cpu_scan_kernel_available() -> bool:
    """True when the scan on CPU tensors runs the compiled kernel (built, checked and not switched off)."""
    return _cpu_kernel() is not None


# ----------------------------------------------------------------------------------------------------
# The scan as two torch.library custom ops, so that torch.compile and torch.export see one opaque call per
# scan instead of tracing (and unrolling) its per-step Python loop. Their bodies are the functions above and
# run eagerly wherever the graph runs; the fake implementations give the compiler the output shapes, and the
# autograd registration calls the backward op with what the forward kept.
#
# Schema (time-major fp32 (length, batch, x) sequences, any strides: the PyTorch bodies copy them contiguous, the
# compiled CPU scan reads them where they are; see `selective_scan_torch` for the layouts):
#   storm_hf::selective_scan_fwd(u, delta, A_t, B, C, D?, z?, delta_bias?, h0, softplus, save_states)
#       -> (out (length, batch, d_inner), h_last (batch, d_state, d_inner),
#           block_starts (num_blocks or 0 when not save_states, batch, d_state, d_inner))
#   storm_hf::selective_scan_bwd(grad_out?, grad_h_last?, u, delta, A_t, B, C, D?, z?, delta_bias?, block_starts,
#                                softplus, steps)
#       -> grads of (u, delta, A_t, B, C, D, z, delta_bias, h0); an absent D / z / delta_bias gets a (0,) tensor.
# Every output is a new tensor (a custom op may not return its inputs or views of them). Inside both bodies
# autocast is off (the recurrence is fp32 by design, even where a compiled graph runs under autocast) and the
# CPU_SCAN_THREADS setting holds (`_scan_threads`).
# ----------------------------------------------------------------------------------------------------

_FWD_SCHEMA = (
    "(Tensor u, Tensor delta, Tensor A_t, Tensor B, Tensor C, Tensor? D, Tensor? z, Tensor? delta_bias, Tensor h0, "
    "bool softplus, bool save_states) -> (Tensor, Tensor, Tensor)"
)
_BWD_SCHEMA = (
    "(Tensor? grad_out, Tensor? grad_h_last, Tensor u, Tensor delta, Tensor A_t, Tensor B, Tensor C, Tensor? D, "
    "Tensor? z, Tensor? delta_bias, Tensor block_starts, bool softplus, SymInt steps) "
    "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)"
)


def _contiguous(*tensors):
    return tuple(None if t is None else t.contiguous() for t in tensors)


def _block_starts_buffer(u: torch.Tensor, A_t: torch.Tensor, save_states: bool) -> torch.Tensor:
    """(num_blocks, batch, d_state, d_inner) for the state entering each block of the forward, or (0, ...) when
    no backward will need them."""
    length, batch, d_inner = u.shape
    d_state = A_t.shape[0]
    blocks = _num_blocks(length, _steps_per_block(length, batch, d_state, d_inner)) if save_states else 0
    return u.new_empty(blocks, batch, d_state, d_inner)


@contextmanager
def _op_body(u: torch.Tensor, d_state: int):
    """What holds inside a scan op: fp32 (no autocast) and `CPU_SCAN_THREADS` intra-op threads."""
    with torch.autocast(device_type=u.device.type, enabled=False), _scan_threads(u.device, u.numel() * d_state):
        yield


@torch.library.custom_op("storm_hf::selective_scan_fwd", mutates_args=(), schema=_FWD_SCHEMA)
def selective_scan_fwd(u, delta, A_t, B, C, D, z, delta_bias, h0, softplus, save_states):
    """The blocked forward scan as one op (see the schema above). ``save_states``: also return the state entering
    each block, what the backward recomputes from (only when a gradient will be taken; else a (0, ...) tensor)."""
    block_starts = _block_starts_buffer(u, A_t, save_states)
    with _op_body(u, A_t.shape[0]):
        starts = block_starts if save_states else None
        library = _cpu_kernel_for(u, A_t.shape[0])
        if library is not None:  # the compiled CPU scan reads the sequences where they are
            steps = _steps_per_block(u.shape[0], u.shape[1], A_t.shape[0], u.shape[2])
            out, h_last = _kernel_scan_forward(library, u, delta, A_t, B, C, D, z, delta_bias, h0, softplus, steps,
                                               starts)
        else:
            u, delta, A_t, B, C, D, z, delta_bias, h0 = _contiguous(u, delta, A_t, B, C, D, z, delta_bias, h0)
            out, h_last = _scan_forward(u, delta, A_t, B, C, D, z, delta_bias, h0, softplus, starts)
    return out, h_last, block_starts


@selective_scan_fwd.register_fake
def _selective_scan_fwd_fake(u, delta, A_t, B, C, D, z, delta_bias, h0, softplus, save_states):
    length, batch, d_inner = u.shape
    return (u.new_empty(length, batch, d_inner), u.new_empty(batch, A_t.shape[0], d_inner),
            _block_starts_buffer(u, A_t, save_states))


@torch.library.custom_op("storm_hf::selective_scan_bwd", mutates_args=(), schema=_BWD_SCHEMA)
def selective_scan_bwd(grad_out, grad_h_last, u, delta, A_t, B, C, D, z, delta_bias, block_starts, softplus, steps):
    """`_scan_backward` as one op (see the schema above)."""
    with _op_body(u, A_t.shape[0]):
        library = _cpu_kernel_for(u, A_t.shape[0])
        if library is None:
            grad_out, grad_h_last, u, delta, A_t, B, C, D, z, delta_bias, block_starts = _contiguous(
                grad_out, grad_h_last, u, delta, A_t, B, C, D, z, delta_bias, block_starts)
        scan_backward = _scan_backward if library is None else partial(_kernel_scan_backward, library)
        grads = scan_backward(grad_out, grad_h_last, u, delta, A_t, B, C, D, z, delta_bias, block_starts,
                               softplus, steps)
    return tuple(u.new_empty(0) if g is None else g for g in grads)


@selective_scan_bwd.register_fake
def _selective_scan_bwd_fake(grad_out, grad_h_last, u, delta, A_t, B, C, D, z, delta_bias, block_starts, softplus,
                             steps):
    like = lambda t: u.new_empty(0) if t is None else t.new_empty(t.shape)  # noqa: E731
    batch, d_inner = u.shape[1], u.shape[2]
    h0 = u.new_empty(batch, A_t.shape[0], d_inner)
    return tuple(like(t) for t in (u, delta, A_t, B, C, D, z, delta_bias, h0))


def _setup_context(ctx, inputs, output):
    u, delta, A_t, B, C, D, z, delta_bias, h0, softplus, save_states = inputs
    block_starts = output[2]
    ctx.mark_non_differentiable(block_starts)
    ctx.set_materialize_grads(False)  # an unused output (usually h_last) gets no zero-filled gradient
    # Only the state entering each block is kept, never the per-step states: memory O(length * d_inner). A call
    # that did not save them (save_states=False, e.g. a graph traced without gradients run with them) keeps h0
    # instead, and its backward reruns the forward to get them.
    ctx.save_for_backward(u, delta, A_t, B, C, D, z, delta_bias, block_starts if save_states else h0)
    ctx.softplus, ctx.save_states = softplus, save_states
    ctx.steps = _steps_per_block(u.shape[0], u.shape[1], A_t.shape[0], u.shape[2])


def _backward(ctx, grad_out, grad_h_last, grad_block_starts):
    # Read once: activation checkpointing (non-reentrant) allows one unpack of the saved tensors per backward.
    u, delta, A_t, B, C, D, z, delta_bias, block_starts = ctx.saved_tensors
    if grad_out is None and grad_h_last is None:
        return (None,) * 11
    if not ctx.save_states:  # `block_starts` holds h0: rerun the forward for the block boundary states
        block_starts = torch.ops.storm_hf.selective_scan_fwd(u, delta, A_t, B, C, D, z, delta_bias, block_starts,
                                                             ctx.softplus, True)[2]
    grads = torch.ops.storm_hf.selective_scan_bwd(grad_out, grad_h_last, u, delta, A_t, B, C, D, z, delta_bias,
                                                  block_starts, ctx.softplus, ctx.steps)
    grad_u, grad_delta, grad_A_t, grad_B, grad_C, grad_D, grad_z, grad_bias, grad_h0 = grads
    return (grad_u, grad_delta, grad_A_t, grad_B, grad_C, None if D is None else grad_D, None if z is None else grad_z,
            None if delta_bias is None else grad_bias, grad_h0, None, None)


selective_scan_fwd.register_autograd(_backward, setup_context=_setup_context)


def selective_scan_torch(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    initial_state: torch.Tensor | None = None,
    return_last_state: bool = False,
):
    """Selective scan in pure PyTorch, fast on CPU and differentiable (see the module docstring).

    Args:
        u, delta: (batch, length, d_inner) input and time step (before bias/softplus).
        A: (d_inner, d_state), usually ``-exp(A_log)``.
        B, C: (batch, length, d_state) input-dependent projections.
        D: (d_inner,) skip connection, optional.
        z: (batch, length, d_inner) gate, optional: ``y * silu(z)``.
        delta_bias: (d_inner,) added to delta before the softplus, optional.
        delta_softplus: apply softplus to ``delta + delta_bias``.
        initial_state: (batch, d_inner, d_state) state before the first step (streaming), optional.
        return_last_state: also return the state after the last step.

    Returns:
        y: (batch, length, d_inner) in u's dtype; with ``return_last_state`` also
        last_state: (batch, d_inner, d_state) in fp32.

    The recurrence runs in fp32 whatever the input dtype, as mamba_ssm does. Without gradients the
    forward stores nothing for a backward (extra memory stays a few block buffers plus the output).
    """
    dtype_in = u.dtype
    batch, length, d_inner = u.shape
    d_state = A.shape[1]
    if length == 0:
        raise ValueError("selective_scan_torch: the sequence is empty (length 0).")

    def time_major(t):  # (batch, length, x) -> fp32 (length, batch, x), a view where t is fp32 already
        return None if t is None else t.float().transpose(0, 1)

    if initial_state is None:
        h0 = u.new_zeros(batch, d_state, d_inner, dtype=torch.float32)
    else:
        h0 = initial_state.float().transpose(1, 2).contiguous()  # (batch, d_state, d_inner)
    args = (
        time_major(u), time_major(delta), A.float().t().contiguous(), time_major(B), time_major(C),
        None if D is None else D.float(), time_major(z), None if delta_bias is None else delta_bias.float(), h0,
        bool(delta_softplus),
    )
    tensors = (u, delta, A, B, C, D, z, delta_bias, initial_state)
    # The states entering each block are kept only for a backward; without gradients nothing is stored.
    # (Autocast off and CPU_SCAN_THREADS are applied inside the op, where they also hold in compiled graphs.)
    save_states = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
    y, h_last, _ = torch.ops.storm_hf.selective_scan_fwd(*args, save_states)
    y = y.transpose(0, 1).to(dtype_in)  # (batch, length, d_inner)
    if return_last_state:
        return y, h_last.transpose(1, 2)  # (batch, d_inner, d_state)
    return y


def selective_scan_sequential(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, initial_state=None,
    return_last_state=False,
):
    """Plain per-timestep reference of the same function (same arguments as `selective_scan_torch`).

    Computes in the input's dtype (pass float64 for a reference); differentiable by autograd. It is
    slow on purpose: one step at a time, exactly the recurrence in the module docstring. Used by the
    tests and as the baseline in benchmarks/scan.py; never on a model path.
    """
    batch, length, d_inner = u.shape
    if delta_bias is not None:
        delta = delta + delta_bias
    if delta_softplus:
        delta = F.softplus(delta)
    h = u.new_zeros(batch, d_inner, A.shape[1]) if initial_state is None else initial_state.to(u.dtype)
    ys = []
    # unbind (not indexing) so that autograd's backward stays linear in length.
    for delta_t, u_t, B_t, C_t in zip(delta.unbind(1), u.unbind(1), B.unbind(1), C.unbind(1)):
        decay = torch.exp(delta_t[:, :, None] * A)  # (batch, d_inner, d_state)
        h = decay * h + (delta_t * u_t)[:, :, None] * B_t[:, None, :]
        ys.append(torch.einsum("bdn,bn->bd", h, C_t))
    y = torch.stack(ys, dim=1)  # (batch, length, d_inner)
    if D is not None:
        y = y + u * D
    if z is not None:
        y = y * F.silu(z)
    return (y, h) if return_last_state else y


# ----------------------------------------------------------------------------------------------------
# Kernel seam: mamba_ssm's / causal_conv1d's fused CUDA kernels when they import and the tensors are on CUDA.
# The argument layouts below are theirs ((batch, channels, length) sequences); tests check them on CPU
# with the packages' own reference functions standing in for the kernels (tests/test_kernel_seam.py).
# ----------------------------------------------------------------------------------------------------


def _on_kernel_device(tensor: torch.Tensor) -> bool:
    """Whether the fused kernels may run on this tensor's device (CUDA). Tests point it elsewhere."""
    return tensor.is_cuda


def _import_kernel(module: str, name: str):
    try:
        return getattr(__import__(module, fromlist=[name]), name)
    except Exception:  # ImportError, or a broken CUDA build: fall back to PyTorch
        return None


_KERNELS: dict = {}


def _kernel(module: str, name: str):
    """A kernel entry point, or None when its package does not import (checked once per name)."""
    key = f"{module}.{name}"
    if key not in _KERNELS:
        _KERNELS[key] = _import_kernel(module, name)
    return _KERNELS[key]


def _mamba_ssm_scan():
    """mamba_ssm's `selective_scan_fn`, or None when mamba_ssm is not installed."""
    return _kernel("mamba_ssm.ops.selective_scan_interface", "selective_scan_fn")


def _mamba_ssm_inner():
    """mamba_ssm's `mamba_inner_fn` (the whole mixer fused), or None."""
    return _kernel("mamba_ssm.ops.selective_scan_interface", "mamba_inner_fn")


def _causal_conv1d_kernel():
    """causal_conv1d's `causal_conv1d_fn`, or None when the package is not installed."""
    return _kernel("causal_conv1d", "causal_conv1d_fn")


def fused_scan_available(device: torch.device | str) -> bool:
    """True when `selective_scan` would use mamba_ssm's kernel for tensors on `device`."""
    return torch.device(device).type == "cuda" and _mamba_ssm_scan() is not None


def check_scan_inputs(u, delta, A, B, C, D=None, z=None, delta_bias=None, initial_state=None):
    """Clear errors for what the scan does not support, before any kernel or loop sees it.

    Supported: real A of shape (d_inner, d_state), input-dependent B and C of shape (batch, length,
    d_state) (Mamba-1's selective B/C: no groups, no constant B/C), u / delta / z (batch, length, d_inner).
    """
    if u.dim() != 3:
        raise ValueError(f"selective_scan: u must be (batch, length, d_inner), got shape {tuple(u.shape)}.")
    batch, length, d_inner = u.shape
    if A.is_complex() or any(t is not None and t.is_complex() for t in (u, delta, B, C, D, z)):
        raise ValueError("selective_scan: complex A (or complex inputs) is not supported; storm_hf's scan is "
                         "Mamba-1's real S4D form (A = -exp(A_log)).")
    if A.dim() != 2 or A.shape[0] != d_inner:
        raise ValueError(f"selective_scan: A must be (d_inner={d_inner}, d_state), got shape {tuple(A.shape)}.")
    d_state = A.shape[1]
    if tuple(delta.shape) != (batch, length, d_inner):
        raise ValueError(f"selective_scan: delta must have u's shape {tuple(u.shape)}, got {tuple(delta.shape)}.")
    for name, t in (("B", B), ("C", C)):
        if t.dim() != 3 or tuple(t.shape) != (batch, length, d_state):
            raise ValueError(
                f"selective_scan: {name} must be input-dependent, (batch, length, d_state) = "
                f"({batch}, {length}, {d_state}); got shape {tuple(t.shape)} (constant or grouped {name} is not "
                "supported)."
            )
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None and tuple(t.shape) != (d_inner,):
            raise ValueError(f"selective_scan: {name} must be (d_inner,) = ({d_inner},), got {tuple(t.shape)}.")
    if z is not None and tuple(z.shape) != (batch, length, d_inner):
        raise ValueError(f"selective_scan: z must have u's shape {tuple(u.shape)}, got {tuple(z.shape)}.")
    if initial_state is not None and tuple(initial_state.shape) != (batch, d_inner, d_state):
        raise ValueError(f"selective_scan: initial_state must be (batch, d_inner, d_state) = ({batch}, {d_inner}, "
                         f"{d_state}), got {tuple(initial_state.shape)}.")


def selective_scan(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, initial_state=None,
    return_last_state=False, use_kernel: bool = True,
):
    """Selective scan, dispatching on the tensors' device (same arguments as `selective_scan_torch`).

    mamba_ssm's fused kernel is used only when ``use_kernel`` is true, mamba_ssm imports and ``u`` is on
    CUDA; it has no initial-state input, so streaming with a carried state always uses the PyTorch path.
    """
    check_scan_inputs(u, delta, A, B, C, D, z, delta_bias, initial_state)
    kernel = _mamba_ssm_scan() if use_kernel and _on_kernel_device(u) and initial_state is None else None
    if kernel is None:
        return selective_scan_torch(
            u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus,
            initial_state=initial_state, return_last_state=return_last_state,
        )
    out = kernel(
        u.transpose(1, 2).contiguous(),  # (batch, d_inner, length)
        delta.transpose(1, 2).contiguous(),
        A.float(),
        B.transpose(1, 2).contiguous(),  # (batch, d_state, length)
        C.transpose(1, 2).contiguous(),
        D=None if D is None else D.float(),
        z=None if z is None else z.transpose(1, 2).contiguous(),
        delta_bias=None if delta_bias is None else delta_bias.float(),
        delta_softplus=delta_softplus,
        return_last_state=return_last_state,
    )
    if return_last_state:
        y, last_state = out
        return y.transpose(1, 2), last_state
    return out.transpose(1, 2)


def conv_kernel_available(x: torch.Tensor) -> bool:
    """True when `causal_conv1d` would use causal_conv1d's kernel for ``x`` (installed, and x on CUDA)."""
    return _on_kernel_device(x) and _causal_conv1d_kernel() is not None


def fused_mixer_available(hidden_states: torch.Tensor) -> bool:
    """True when a whole mixer can run as mamba_ssm's `mamba_inner_fn` (it needs causal_conv1d too)."""
    return (_on_kernel_device(hidden_states) and _mamba_ssm_inner() is not None
            and _causal_conv1d_kernel() is not None)


def mamba_inner(hidden_states: torch.Tensor, mixer) -> torch.Tensor:
    """A whole `StormMambaMixer` (in_proj, conv, x_proj, dt_proj, scan, gate, out_proj) as mamba_ssm's fused
    `mamba_inner_fn`, called the way `Mamba.forward`'s fast path calls it.

    hidden_states: (batch, length, d_model) -> (batch, length, d_model).
    """
    batch, length, _ = hidden_states.shape
    # in_proj as one matmul into mamba_ssm's (batch, 2 * d_inner, length) layout.
    xz = (mixer.in_proj.weight @ hidden_states.reshape(batch * length, -1).t())  # (2 * d_inner, batch * length)
    xz = xz.reshape(-1, batch, length).permute(1, 0, 2)  # (batch, 2 * d_inner, length)
    if mixer.in_proj.bias is not None:
        xz = xz + mixer.in_proj.bias.to(xz.dtype)[:, None]
    A = -torch.exp(mixer.A_log.float())  # (d_inner, d_state)
    out = _mamba_ssm_inner()(
        xz, mixer.conv1d.weight, mixer.conv1d.bias, mixer.x_proj.weight, mixer.dt_proj.weight,
        mixer.out_proj.weight, mixer.out_proj.bias, A, None, None, mixer.D.float(),
        delta_bias=mixer.dt_proj.bias.float(), delta_softplus=True,
    )
    return out  # (batch, length, d_model)


def causal_conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    prefix: torch.Tensor | None = None,
    use_kernel: bool = True,
) -> torch.Tensor:
    """Causal depthwise convolution over time (no activation), as Mamba's ``conv1d(x)[..., :length]``.

    Args:
        x: (batch, d_inner, length).
        weight: (d_inner, width); bias: (d_inner,) or None.
        prefix: (batch, d_inner, width - 1), the inputs just before ``x`` in a stream; zeros when None.
    Returns:
        (batch, d_inner, length).
    """
    kernel = _causal_conv1d_kernel() if use_kernel and _on_kernel_device(x) and prefix is None else None
    if kernel is not None:
        return kernel(x.contiguous(), weight, bias, activation=None)
    width = weight.shape[1]
    if prefix is None:
        x_full = F.pad(x, (width - 1, 0))
    else:
        x_full = torch.cat([prefix, x], dim=-1)  # (batch, d_inner, width - 1 + length)
    return F.conv1d(x_full, weight.unsqueeze(1), bias, groups=weight.shape[0])
