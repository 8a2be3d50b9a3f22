"""Parameters and dense layers that carry logical axis names for sharding.

Names come from the vocabulary of ``var_jax.parallel`` (``batch``, ``seq``, ``embed``, ``heads``,
``mlp``, ``vocab``, ``layers``); ``None`` marks an axis that is never sharded.  Variables are
created unsharded (``eager_sharding=False``): placement happens when a train or sample step is
compiled for a mesh.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from var_jax.ops.transpose import transposed

Names = Sequence[str | None]


def param(value: jax.Array, names: Names) -> nnx.Param:
    if len(names) != value.ndim:
        raise ValueError(f"{len(names)} axis names {tuple(names)} for a parameter of shape {value.shape}")
    return nnx.Param(value, out_sharding=tuple(names), eager_sharding=False)


def trunc_normal(key: jax.Array, shape: Sequence[int], std: float) -> jax.Array:
    """``torch.nn.init.trunc_normal_(std=std)``: a normal truncated at ±2 in absolute value."""
    return jax.random.truncated_normal(key, -2.0 / std, 2.0 / std, shape, jnp.float32) * std


class Linear(nnx.Module):
    """y = x·W + b with W stored (in, out), optionally stacked on leading axes (e.g. ``layers``).

    The bias has the kernel's leading (stacked) axes and its output axis; its names say how many
    leading axes there are.
    """

    def __init__(self, kernel: jax.Array, kernel_names: Names, bias_names: Names | None):
        self.kernel = param(kernel, kernel_names)
        if bias_names is None:
            self.bias = None
        else:
            shape = kernel.shape[:len(bias_names) - 1] + kernel.shape[-1:]
            self.bias = param(jnp.zeros(shape, jnp.float32), bias_names)

    def __call__(self, x: jax.Array, dtype=None) -> jax.Array:
        return dense(x, self.kernel[...], None if self.bias is None else self.bias[...], dtype)


class LayerKernel(NamedTuple):
    """The kernel of layer ``layer`` (traced) among ``kernels``, one array per layer: :func:`dense`
    multiplies by the chosen array itself (a ``lax.switch`` on the layer with one product per
    branch).  In a scan over stacked layers, a product with a layer's slice of a stacked kernel reads
    a copy of it: XLA's CPU backend copies every dynamic slice."""
    kernels: tuple[jax.Array, ...]
    layer: jax.Array

    def reshape(self, *shape) -> "LayerKernel":
        return LayerKernel(tuple(k.reshape(*shape) for k in self.kernels), self.layer)

    def astype(self, dtype) -> "LayerKernel":
        return LayerKernel(tuple(k.astype(dtype) for k in self.kernels), self.layer)


def dense(x: jax.Array, kernel: jax.Array | LayerKernel, bias: jax.Array | None, dtype=None) -> jax.Array:
    """x (..., in) · kernel (in, out) + bias, multiplied in ``dtype`` and accumulated in float32."""
    if dtype is not None:
        x, kernel = x.astype(dtype), kernel.astype(dtype)
    if isinstance(kernel, LayerKernel):
        y = jax.lax.switch(kernel.layer, [lambda x, k=k: jnp.matmul(x, k, preferred_element_type=jnp.float32)
                                          for k in kernel.kernels], x)
    else:
        y = checkpoint_name(row_major_matmul(x, kernel), WEIGHT_PRODUCT)
    return y if bias is None else y + bias


# The name of :func:`row_major_matmul`'s output, by which the rematerialisation policies that keep
# the weight products keep it (``var._remat``): a custom_vjp is not a ``dot_general`` to them.
WEIGHT_PRODUCT = "weight_product"


@jax.custom_vjp
def row_major_matmul(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """x (..., in) · kernel (in, out), accumulated in float32, whose gradients are products of
    operands in x's dtype too, the kernel's of row-major operands.

    - 16-bit operands: the float32 cotangent is rounded to their dtype first, as the output of a
      16-bit product would be (so ``torch.autocast`` does).  Left to JAX, the backward products would
      multiply the float32 cotangent by the operand converted to float32, at float32's rate (on a CPU
      with AVX-512 BF16, half of bfloat16's).
    - The kernel's gradient multiplies a row-major copy (:mod:`var_jax.ops.transpose`) of the
      narrower of x and the cotangent: xᵀ·ȳ, or (ȳᵀ·x)ᵀ with the result transposed back.  Left to
      JAX, a CPU multiplies the transposed operand at about half its rate, in float32 too (VAR-d16's
      float32 step at batch 2 took 0.95 of its time so, both programs in one process, called
      alternately, median of 6 calls; copying xᵀ always took 1.04 of this one's).  XLA fuses
      a copy with the work that recomputes its operand: xᵀ of the MLP's second product, 4 times wider
      than ȳ, transposed the recomputed GELU element by element (VAR-d16's bfloat16 step at batch 2
      took 7.44-8.16 s against 7.82-8.68 s, a median of 0.95 of its time over 6 pairs of fresh
      processes, without that copy).
    - x's gradient multiplies by kernelᵀ as it is."""
    return jnp.matmul(x, kernel, preferred_element_type=jnp.float32)


def _row_major_matmul_fwd(x, kernel):
    return row_major_matmul(x, kernel), (x, kernel)


def _row_major_matmul_bwd(residuals, g):
    x, kernel = residuals
    g = g.astype(x.dtype)
    dx = jnp.matmul(g, kernel.T, preferred_element_type=jnp.float32)
    rows, cotangent_rows = x.reshape(-1, x.shape[-1]), g.reshape(-1, g.shape[-1])
    if rows.shape[1] > cotangent_rows.shape[1]:
        dk = transposed(jnp.matmul(transposed(cotangent_rows), rows, preferred_element_type=jnp.float32)
                        .astype(kernel.dtype))
    else:
        dk = jnp.matmul(transposed(rows), cotangent_rows, preferred_element_type=jnp.float32).astype(kernel.dtype)
    return dx.astype(x.dtype), dk


row_major_matmul.defvjp(_row_major_matmul_fwd, _row_major_matmul_bwd)
