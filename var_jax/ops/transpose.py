"""Transposes that XLA's CPU backend multiplies at full rate.

XLA folds ``a.T`` into the product that consumes it (or gives it a column-major layout), and its CPU
backend multiplies such a transposed operand at about half its rate: a transposed bfloat16 left
operand is converted to float32 for Eigen, a transposed right one goes to YNNPACK's slow path, and
a transposed float32 left operand goes to Eigen rather than YNNPACK.  On a 2-core AMD EPYC with
AVX-512 BF16, for VAR-d16's shapes (1360 × 1024 by 1024 × 4096): in bfloat16 ``x @ w`` 423 GFLOP/s,
``x.T @ g`` 192, ``g @ w.T`` 174; in float32 ``x @ w`` 190, ``x.T @ g`` 108.  Written with a unit
axis after the two that swap, the same transpose is a copy into a row-major array, and the product
runs at 397-405 GFLOP/s in bfloat16, 205 in float32.  Other backends take transposed operands at
full rate, so the choice is made when the program is lowered for its platform
(``lax.platform_dependent``).

The training step multiplies its kernels' gradients xᵀ·ȳ so (``models.layers.row_major_matmul``):
VAR-d16 in bfloat16 at batch 2 took 8.8, 8.9, 8.8 and 9.2 s against 9.6, 9.6, 9.5 and 9.8 s (in
pairs of fresh processes).  The inputs' gradients ȳ·Wᵀ keep the transposed kernel: copied inside the
scan over the layers, where XLA fuses the copy with the kernel's conversion from the float32 stack,
the bfloat16 step took 10.2 and 10.5 s; copied for all layers before the scan, 9.0 and 9.0 s against
8.8 and 9.2 s without (and 8.35, 8.2 and 8.25 against 8.33, 8.14 and 8.01 s, measured again later).

Batched products (the attention's) with a transposed operand, on either side, are converted to
float32 in bfloat16 and go to Eigen in float32; :func:`moved` lays out such operands
(``models.var.row_major_attention``).
"""
from __future__ import annotations

import jax
from jax import lax


def _copied(a: jax.Array, perm: tuple[int, ...]) -> jax.Array:
    n = a.ndim
    return a.reshape(*a.shape, 1).transpose(*perm, n).reshape(tuple(a.shape[p] for p in perm))


def moved(a: jax.Array, perm: tuple[int, ...]) -> jax.Array:
    """``a.transpose(perm)``: on a CPU a row-major copy, elsewhere a plain transpose."""
    perm = tuple(perm)
    return lax.platform_dependent(a, cpu=lambda a: _copied(a, perm), default=lambda a: a.transpose(perm))


def transposed(a: jax.Array) -> jax.Array:
    """``a`` with its last two axes swapped: on a CPU a row-major copy, elsewhere ``swapaxes``."""
    n = a.ndim
    return moved(a, (*range(n - 2), n - 1, n - 2))
