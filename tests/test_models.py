"""Model behaviour the fixture does not cover, against small NumPy references written from the spec."""
import dataclasses
import math

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import compiled_products
from var_jax import convert
from var_jax.config import load_config
from var_jax.models import quant
from var_jax.models.layers import dense
from var_jax.models.state import abstract_model, flat_state
from var_jax.models.var import VAR, VARConfig, attention, block_causal_attention, heads_first, query_groups
from var_jax.models.vqvae import VQVAE, VQVAEConfig


# -- Phi selection and code lookup ------------------------------------------------------------------------
def reference_phi_index(si: int, num_scales: int, k: int) -> int:
    ticks = np.linspace(1 / 3 / k, 1 - 1 / 3 / k, k) if k == 4 else np.linspace(1 / 2 / k, 1 - 1 / 2 / k, k)
    return int(np.argmin(np.abs(ticks - si / (num_scales - 1))))


def test_phi_index_released_table():
    # The official table for 10 scales and 4 Phis; scales 2 and 7 are float-rounding ties.
    assert [quant.phi_index(si, 10, 4) for si in range(10)] == [0, 0, 1, 1, 1, 2, 2, 3, 3, 3]


def test_phi_index_single_phi():
    assert [quant.phi_index(si, 10, 1) for si in range(10)] == [0] * 10


@pytest.mark.parametrize("num_scales, k", [(10, 3), (6, 3), (10, 10), (6, 6), (14, 14), (13, 4), (7, 2)])
def test_phi_index_matches_nearest_tick(num_scales, k):
    got = [quant.phi_index(si, num_scales, k) for si in range(num_scales)]
    assert got == [reference_phi_index(si, num_scales, k) for si in range(num_scales)]
    if k == num_scales:  # share_quant_resi=0: one Phi per scale
        assert got == list(range(num_scales))


@pytest.fixture
def codes():
    rng = np.random.default_rng(0)
    return rng.normal(size=(50, 8)).astype(np.float32), rng.normal(size=(32, 8)).astype(np.float32)


def test_nearest_code_l2(codes):
    z, book = codes
    d = ((z[:, None, :].astype(np.float64) - book[None].astype(np.float64)) ** 2).sum(-1)
    np.testing.assert_array_equal(np.asarray(quant.nearest_code(jnp.asarray(z), jnp.asarray(book), False)),
                                  d.argmin(1))


def test_nearest_code_cosine(codes):
    z, book = codes
    z = z * np.random.default_rng(1).uniform(0.1, 10, (len(z), 1)).astype(np.float32)  # norms must not matter
    zn = z / np.linalg.norm(z, axis=1, keepdims=True)
    bn = book / np.linalg.norm(book, axis=1, keepdims=True)
    got = np.asarray(quant.nearest_code(jnp.asarray(z), jnp.asarray(book), True))
    np.testing.assert_array_equal(got, (zn.astype(np.float64) @ bn.T.astype(np.float64)).argmax(1))
    l2 = np.asarray(quant.nearest_code(jnp.asarray(z), jnp.asarray(book), False))
    assert (got != l2).any()  # the two criteria really differ on these inputs


# -- the VAR forward against a NumPy re-implementation of the official code -------------------------------
def _ln(x, eps=1e-6):
    mu = x.mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + eps)


def _silu(x):
    return x / (1 + np.exp(-x))


def _gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


def _linear(x, sd, name, bias=True):
    y = x @ sd[f"{name}.weight"].T
    return y + sd[f"{name}.bias"] if bias else y


def reference_var_logits(sd, cfg, label, x_tokens, max_scale_mul=math.log(100)):
    """Teacher-forced logits of the official VAR (spec §2), in float64, from official-named weights."""
    sd = {k: np.asarray(v, np.float64) for k, v in sd.items()}
    B, C, H = len(label), cfg.embed_dim, cfg.num_heads
    hd = C // H
    lvl = np.concatenate([np.full(pn * pn, si) for si, pn in enumerate(cfg.patch_nums)])
    L = len(lvl)
    mask = np.where(lvl[None, :] <= lvl[:, None], 0.0, -np.inf)  # (query, key)

    cond = sd["class_emb.weight"][label]  # (B, C)
    sos = cond[:, None, :] + sd["pos_start"]
    x = np.concatenate([sos, _linear(np.asarray(x_tokens, np.float64), sd, "word_embed")], axis=1)
    x = x + sd["lvl_embed.weight"][lvl] + sd["pos_1LC"][:, :L]
    if cfg.shared_aln:
        shared = _linear(_silu(cond), sd, "shared_ada_lin.1").reshape(B, 1, 6, C)

    for i in range(cfg.depth):
        b = f"blocks.{i}."
        if cfg.shared_aln:
            ada = sd[b + "ada_gss"] + shared  # (B, 1, 6, C)
        else:
            ada = _linear(_silu(cond), sd, b + "ada_lin.1").reshape(B, 1, 6, C)
        gamma1, gamma2, scale1, scale2, shift1, shift2 = (ada[:, :, j] for j in range(6))

        h = _ln(x) * (1 + scale1) + shift1
        qkv_bias = np.concatenate([sd[b + "attn.q_bias"], sd[b + "attn.zero_k_bias"], sd[b + "attn.v_bias"]])
        qkv = (h @ sd[b + "attn.mat_qkv.weight"].T + qkv_bias).reshape(B, L, 3, H, hd)
        q, k, v = (qkv[:, :, j].transpose(0, 2, 1, 3) for j in range(3))  # (B, H, L, hd)
        if cfg.attn_l2_norm:
            temperature = np.exp(np.minimum(sd[b + "attn.scale_mul_1H11"], max_scale_mul))  # (1, H, 1, 1)
            q = q / np.maximum(np.linalg.norm(q, axis=-1, keepdims=True), 1e-12) * temperature
            k = k / np.maximum(np.linalg.norm(k, axis=-1, keepdims=True), 1e-12)
            scale = 1.0
        else:
            scale = 0.25 / math.sqrt(hd)
        s = q @ k.transpose(0, 1, 3, 2) * scale + mask
        w = np.exp(s - s.max(-1, keepdims=True))
        w = w / w.sum(-1, keepdims=True)
        o = (w @ v).transpose(0, 2, 1, 3).reshape(B, L, C)
        x = x + _linear(o, sd, b + "attn.proj") * gamma1

        h = _ln(x) * (1 + scale2) + shift2
        x = x + _linear(_gelu_tanh(_linear(h, sd, b + "ffn.fc1")), sd, b + "ffn.fc2") * gamma2

    scale, shift = np.split(_linear(_silu(cond), sd, "head_nm.ada_lin.1")[:, None, :], 2, axis=-1)
    return _linear(_ln(x) * (1 + scale) + shift, sd, "head")


def random_official_weights(cfg: VARConfig, seed: int) -> dict[str, np.ndarray]:
    """An official-layout VAR state dict with every parameter random and of order-one effect.

    Fresh models have near-zero AdaLN gammas (so the blocks would barely matter) and zero biases:
    random weights make every term of the forward visible in the logits.
    """
    rng = np.random.default_rng(seed)
    model = abstract_model(VAR, cfg)  # names and shapes only
    flat = flat_state(model)
    shapes = {k: convert._official_shape(e, flat[e.path].shape) for e in convert.var_entries(model) for k in e.keys}
    out = dict(convert.var_buffers(cfg))
    for k, shape in shapes.items():
        if k.endswith("scale_mul_1H11"):
            # one head below and one above the clamp at ln(100) ≈ 4.6
            out[k] = np.array([1.0, 5.5] * (cfg.num_heads // 2), np.float32).reshape(shape)
        elif k.endswith(".weight") and len(shape) == 2 and not k.endswith(("class_emb.weight", "lvl_embed.weight")):
            out[k] = (rng.normal(size=shape) / math.sqrt(shape[1])).astype(np.float32)  # Linear (out, in)
        else:
            out[k] = rng.normal(0, 0.5, shape).astype(np.float32)
    return out


REFERENCE_CASES = {
    "plain": dict(),
    "l2": dict(attn_l2_norm=True),
    "shared": dict(shared_aln=True),
    "shared_l2": dict(shared_aln=True, attn_l2_norm=True),
}


@pytest.mark.parametrize("case", sorted(REFERENCE_CASES))
def test_var_logits_match_numpy_reference(case, tiny_var):
    cfg = tiny_var(**REFERENCE_CASES[case])
    sd = random_official_weights(cfg, seed=sorted(REFERENCE_CASES).index(case))
    model = convert.var_from_official(sd, cfg)
    rng = np.random.default_rng(10)
    label = np.array([3, cfg.num_classes])  # a class and the null class
    x_tokens = rng.normal(size=(2, cfg.seq_len - 1, cfg.Cvae)).astype(np.float32)
    with jax.default_matmul_precision("highest"):
        ours = np.asarray(model(jnp.asarray(label), jnp.asarray(x_tokens)))
    ref = reference_var_logits(sd, cfg, label, x_tokens)
    assert ours.shape == ref.shape == (2, cfg.seq_len, cfg.vocab_size)
    assert ref.std() > 0.5  # the logits are of order one, so 1e-4 is a tight bound
    # float32 forward against a float64 reference: rounding stays around 1e-6 at this size.
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-4)


def test_var_reference_sees_the_clamp_and_the_mask(tiny_var):
    """The reference test above can fail: breaking the temperature clamp or the mask changes the logits."""
    cfg = tiny_var(attn_l2_norm=True)
    sd = random_official_weights(cfg, seed=0)
    label, x_tokens = np.array([1, 2]), np.random.default_rng(0).normal(size=(2, cfg.seq_len - 1, cfg.Cvae))
    ref = reference_var_logits(sd, cfg, label, x_tokens)
    unclamped = reference_var_logits(sd, cfg, label, x_tokens, max_scale_mul=np.inf)
    assert np.abs(unclamped - ref).max() > 1e-2
    x_future = x_tokens.copy()
    x_future[:, -9:] += 1.0  # change only the last scale's input
    changed = np.abs(reference_var_logits(sd, cfg, label, x_future) - ref).max(axis=(0, 2))
    assert changed[:5].max() == 0 and changed[5:].min() > 1e-3  # earlier scales cannot see it


def test_query_groups_split_whole_scales_to_compute_the_fewest_scores():
    groups = query_groups((1, 2, 3, 4, 5, 6, 8, 10, 13, 16))
    assert groups == [(0, 255), (255, 424), (424, 680)]  # scales 1-8, 13, 16 (cumulative ends 255, 424)
    assert sum((e - b) * e for b, e in groups) / 680 ** 2 == pytest.approx(0.672, abs=1e-3)
    assert query_groups((1, 2, 3, 4, 5, 6, 8, 10, 13, 16), max_groups=1) == [(0, 680)]
    assert query_groups((1, 2, 3), max_groups=2) == [(0, 5), (5, 14)]  # 5·5 + 9·14 < 1·1 + 13·14
    assert query_groups((4,)) == [(0, 16)]


@pytest.mark.parametrize("num_scales", [10, 8, 1])
def test_block_causal_attention_equals_the_masked_softmax(num_scales):
    """Run by run, VAR-d16's attention (all its scales, or the first ones as in progressive training)
    equals the softmax over the whole sequence under the mask: the runs leave out only entries the
    mask zeroes, so the two differ by summation order alone."""
    cfg = VARConfig.for_depth(16)
    end = cfg.begin_ends()[num_scales - 1][1]
    q, k, v = jax.random.normal(jax.random.key(num_scales), (3, 2, end, 4, 16))
    full = attention(q, heads_first(k), heads_first(v), 0.25, jnp.asarray(cfg.attn_mask()[:end, :end]))
    runs, aux = block_causal_attention(cfg, num_scales)(q, k, v, 0.25, None)
    assert aux is None and runs.shape == full.shape == (2, end, 4, 16)
    # measured: at most 4.8e-7, two float32 steps of outputs near 3; 4e-6 leaves room for other summation orders
    np.testing.assert_allclose(np.asarray(runs), np.asarray(full), rtol=0, atol=4e-6)
    future = v.at[:, end - 1].add(1000.0)  # the last token's value reaches only its own scale's queries
    changed = np.abs(np.asarray(block_causal_attention(cfg, num_scales)(q, k, future, 0.25, None)[0] - runs))
    first_of_last = cfg.begin_ends()[num_scales - 1][0]
    assert (changed[:, :first_of_last] == 0).all() and (changed[:, first_of_last:] > 0).all()


_RUNS_CFG = VARConfig.for_depth(2, patch_nums=(1, 2, 3, 4))


def _attention_vjp(q, k, v, g, num_scales=3):
    out, vjp = jax.vjp(lambda q, k, v: block_causal_attention(_RUNS_CFG, num_scales)(q, k, v, 0.5, None)[0], q, k, v)
    return out, vjp(g.astype(out.dtype))


def _masked_attention_vjp(q, k, v, g):
    """JAX's own gradients of the whole sequence's attention under the block-causal mask."""
    L = q.shape[1]
    mask = jnp.asarray(_RUNS_CFG.attn_mask()[:L, :L])
    out, vjp = jax.vjp(lambda q, k, v: attention(q, heads_first(k), heads_first(v), 0.5, mask), q, k, v)
    return out, vjp(g)


# Bounds, relative to the largest float32 value: bfloat16 measured on seeds 0-7 at most 0.45%
# (output) and 0.60% (gradients), from rounding the softmax weights, the cotangents and the results
# to bfloat16 (2^-9 each); float32 at most 6.8e-8 and 4.1e-7, from the order of summation only.  A
# gradient without the softmax's own term is off by the order of the values themselves.
@pytest.mark.parametrize("dtype, seed, out_bound, grad_bound", [(jnp.bfloat16, 0, 1e-2, 1.5e-2),
                                                                (jnp.bfloat16, 1, 1e-2, 1.5e-2),
                                                                (jnp.float32, 2, 2e-6, 2e-6)])
def test_attention_and_its_gradients_multiply_row_major_operands(dtype, seed, out_bound, grad_bound):
    """On a CPU the teacher-forced attention and its gradients multiply row-major operands (16-bit
    cotangents rounded to bfloat16) in the dtype this machine's XLA multiplies a plain batched
    product of the inputs' dtype; the results stay within the dtype's rounding of JAX's own float32
    attention under the mask."""
    q, k, v, g = (jnp.asarray(a, dtype) for a in jax.random.normal(jax.random.key(seed), (4, 2, 14, 2, 8)))
    plain = compiled_products(lambda a, b: jnp.matmul(a, b, preferred_element_type=jnp.float32),
                              jnp.zeros((2, 2, 14, 8), dtype), jnp.zeros((2, 2, 8, 14), dtype))
    products = compiled_products(_attention_vjp, q, k, v, g)
    # 3 runs × (2 forward + 4 backward), less the 1×1 run's, which XLA turns into elementwise work
    assert len(products) == 12 and set(products) == {(plain[0][0], "3", "2")}
    out, grads = _attention_vjp(q, k, v, g)
    want, want_grads = _masked_attention_vjp(*(a.astype(jnp.float32) for a in (q, k, v, g)))
    assert out.dtype == dtype and all(d.dtype == dtype for d in grads)
    for ours, ref, bound in [(out, want, out_bound)] + [(d, w, grad_bound) for d, w in zip(grads, want_grads)]:
        ours, ref = np.asarray(ours, np.float32), np.asarray(ref)
        assert np.abs(ours - ref).max() <= bound * np.abs(ref).max()


# -- label dropout, drop path, remat, dtype -----------------------------------------------------------------
def _inputs(cfg, seed=0):
    rng = np.random.default_rng(seed)
    label = jnp.asarray(rng.integers(0, cfg.num_classes, 3))
    return label, jnp.asarray(rng.normal(size=(3, cfg.seq_len - 1, cfg.Cvae)), jnp.float32)


def _model(cfg, sd):
    return convert.var_from_official(sd, cfg)


def test_label_dropout_with_key(tiny_var):
    cfg = tiny_var(cond_drop_rate=1.0)
    model = _model(cfg, random_official_weights(cfg, seed=1))
    label, x = _inputs(cfg)
    dropped = model(label, x, key=jax.random.key(0))
    uncond = model(jnp.full_like(label, cfg.num_classes), x)
    # Same computation on the same values; only the no-op drop-path division by 1.0 differs.
    np.testing.assert_allclose(np.asarray(dropped), np.asarray(uncond), rtol=0, atol=1e-6)
    cond = model(label, x)  # without a key nothing is dropped
    assert np.abs(np.asarray(cond) - np.asarray(uncond)).max() > 1e-2


def test_no_key_is_deterministic_and_ignores_drop_path(tiny_var):
    cfg = tiny_var(cond_drop_rate=0.5, drop_path_rate=0.5, depth=3)
    sd = random_official_weights(cfg, seed=2)
    model = _model(cfg, sd)
    label, x = _inputs(cfg)
    a, b = np.asarray(model(label, x)), np.asarray(model(label, x))
    np.testing.assert_array_equal(a, b)
    plain = _model(dataclasses.replace(cfg, cond_drop_rate=0.0, drop_path_rate=0.0), sd)
    np.testing.assert_array_equal(a, np.asarray(plain(label, x)))
    # With a key, drop path (rates 0, 0.25, 0.5 over the 3 blocks) and label dropout are active,
    # and the same key gives the same output.
    k = jax.random.key(3)
    trained = np.asarray(model(label, x, key=k))
    assert np.abs(trained - a).max() > 1e-3
    np.testing.assert_array_equal(trained, np.asarray(model(label, x, key=k)))


def _loss_and_grads(model, label, x, target):
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    @jax.jit
    def run(params, rest):
        def loss_fn(p):
            logits = nnx.merge(graphdef, p, rest)(label, x)
            logp = jax.nn.log_softmax(logits)
            return -jnp.mean(jnp.take_along_axis(logp, target[..., None], -1)), logits

        return jax.value_and_grad(loss_fn, has_aux=True)(params)

    (loss, logits), grads = run(params, rest)
    return logits, jax.tree.leaves(grads)


def test_remat_policies_agree(tiny_var):
    cfg = tiny_var(attn_l2_norm=True)
    sd = random_official_weights(cfg, seed=3)
    label, x = _inputs(cfg)
    target = jnp.asarray(np.random.default_rng(4).integers(0, cfg.vocab_size, (3, cfg.seq_len)))
    base_logits, base_grads = _loss_and_grads(_model(cfg, sd), label, x, target)
    for policy in ("full", "dots_with_no_batch_dims_saveable"):
        logits, grads = _loss_and_grads(_model(dataclasses.replace(cfg, remat=policy), sd), label, x, target)
        # Rematerialisation recomputes the same float32 operations; only fusion order may differ.
        np.testing.assert_allclose(np.asarray(logits), np.asarray(base_logits), rtol=0, atol=1e-6, err_msg=policy)
        assert len(grads) == len(base_grads)
        for g, g0 in zip(grads, base_grads):
            np.testing.assert_allclose(np.asarray(g), np.asarray(g0), rtol=0, atol=1e-5, err_msg=policy)
    assert max(float(jnp.abs(g).max()) for g in base_grads) > 1e-3  # the gradients are not trivially zero


def test_bfloat16_compute_is_close_to_float32(tiny_var):
    cfg = tiny_var(attn_l2_norm=True)
    sd = random_official_weights(cfg, seed=5)
    label, x = _inputs(cfg)
    f32 = np.asarray(_model(cfg, sd)(label, x))
    bf16 = np.asarray(_model(dataclasses.replace(cfg, dtype="bfloat16"), sd)(label, x))
    assert bf16.dtype == np.float32 and np.isfinite(bf16).all()
    err, spread = np.abs(bf16 - f32), f32.std()
    # bfloat16 keeps 8 mantissa bits (2^-9 ≈ 2e-3 relative rounding of every matmul input). With these
    # order-one random weights, two blocks and the head, measured over 12 seeds the error is 0.3-0.7% of
    # the logits' std in RMS and at most 6% in the worst element, while a wrong computation (e.g. other
    # labels) moves the logits by about 60% of the std in RMS. Bounds: 2% RMS, 15% worst element.
    assert np.sqrt(np.mean(err ** 2)) <= 2e-2 * spread
    assert err.max() <= 0.15 * spread
    assert err.max() > 0  # the bfloat16 path really ran in lower precision


@pytest.mark.parametrize("width", [8, 32])  # narrower and wider than the input: either operand transposed
def test_bfloat16_gradients_are_bfloat16_products(width):
    """A 16-bit dense product's gradients multiply 16-bit operands (the cotangent rounded to bfloat16,
    as torch.autocast's would be), not a float32 cotangent by a converted kernel."""
    rng = np.random.default_rng(6)
    x = jnp.asarray(rng.normal(size=(2, 5, 16)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(16, width)), jnp.float32)
    g = jnp.asarray(rng.normal(size=(2, 5, width)), jnp.float32)

    def f(x, kernel):
        return dense(x, kernel, None, jnp.bfloat16)

    jaxpr = jax.make_jaxpr(lambda x, k: jax.vjp(f, x, k)[1](g))(x, kernel)
    dots = [e for e in _equations(jaxpr.jaxpr) if e.primitive.name == "dot_general"]
    assert len(dots) == 3 and all(v.aval.dtype == jnp.bfloat16 for e in dots for v in e.invars)
    dx, dk = jax.vjp(f, x, kernel)[1](g)
    as64 = lambda a: np.asarray(jnp.asarray(a, jnp.bfloat16), np.float64)  # noqa: E731
    want_dx = as64(g) @ as64(kernel).T
    want_dk = as64(x).reshape(-1, 16).T @ as64(g).reshape(-1, width)
    # Exact products of the rounded operands, accumulated in float32, then rounded to bfloat16
    # (the operands' dtype) and back: within 2^-8 relative of each element.
    np.testing.assert_allclose(np.asarray(dx), want_dx, rtol=2 ** -8, atol=1e-6)
    np.testing.assert_allclose(np.asarray(dk), want_dk, rtol=2 ** -8, atol=1e-6)


@pytest.mark.parametrize("width", [8, 32])
def test_float32_kernel_gradients_multiply_row_major_operands(width):
    """On a CPU a float32 dense product's kernel gradient multiplies row-major operands, as the
    forward product does (a transposed float32 operand goes to a kernel half as fast), and the
    gradients are float32's."""
    rng = np.random.default_rng(7)
    x = jnp.asarray(rng.normal(size=(2, 5, 16)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(16, width)), jnp.float32)
    g = jnp.asarray(rng.normal(size=(2, 5, width)), jnp.float32)

    def grads(x, kernel):
        return jax.vjp(lambda x, k: dense(x, k, None), x, kernel)[1](g)

    forward = compiled_products(lambda x, k: dense(x, k, None), x, kernel)
    backward = compiled_products(grads, x, kernel)
    assert forward == [("f32/f32", "1", "0")]
    # the kernel's gradient is a row-major product; x's, ȳ·kernelᵀ, contracts ȳ's rows as they lie
    # (XLA may fold kernelᵀ into it or copy it); none contracts the left operand's first axis, as
    # JAX's own xᵀ·ȳ does
    assert len(backward) == 2 and ("f32/f32", "1", "0") in backward and all(lhs == "1" for _, lhs, _ in backward)
    dx, dk = grads(x, kernel)
    as64 = lambda a: np.asarray(a, np.float64)  # noqa: E731
    # float32 sums of 16 or 10 order-one products
    np.testing.assert_allclose(np.asarray(dx), as64(g) @ as64(kernel).T, rtol=0, atol=1e-5)
    want_dk = as64(x).reshape(-1, 16).T @ as64(g).reshape(-1, width)
    np.testing.assert_allclose(np.asarray(dk), want_dk, rtol=0, atol=1e-5)


def _equations(jaxpr):
    for e in jaxpr.eqns:
        yield e
        for sub in jax.extend.core.jaxprs_in_params(e.params):
            yield from _equations(sub)


def test_remat_keeps_the_bfloat16_weight_products(tiny_var):
    """The policies that keep products keep the 16-bit ones too (a custom_vjp, kept by name): the
    backward of dots_saveable multiplies no more than without rematerialisation, full remat more."""
    sd = random_official_weights(tiny_var(), seed=7)
    label, x = _inputs(tiny_var())
    target = jnp.zeros((3, tiny_var().seq_len), jnp.int32)

    def products(policy):
        model = _model(tiny_var(dtype="bfloat16", remat=policy), sd)
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)

        def loss(p):
            logp = jax.nn.log_softmax(nnx.merge(graphdef, p, rest)(label, x))
            return -jnp.mean(jnp.take_along_axis(logp, target[..., None], -1))

        return jax.jit(jax.grad(loss)).lower(params).as_text().count("stablehlo.dot_general")

    none = products("none")
    assert products("dots_saveable") == none < products("full")


# -- bad inputs ---------------------------------------------------------------------------------------------
def test_var_config_heads_must_divide_width():
    with pytest.raises(ValueError, match="divisible"):
        VARConfig(embed_dim=100, num_heads=3)


def test_var_wrong_token_shape(tiny_var):
    model = abstract_model(VAR, tiny_var())  # the shape check comes before any computation
    with pytest.raises(ValueError, match=r"\(2, 13, 8\)") as info:
        model(jnp.zeros((2,), jnp.int32), jnp.zeros((2, 14, 8)))
    assert "(2, 14, 8)" in str(info.value)


def test_vqvae_config_group_norm_width():
    with pytest.raises(ValueError, match="multiple of 32"):
        VQVAEConfig(ch=40)


@pytest.mark.parametrize("cls", [VARConfig, VQVAEConfig])
def test_from_dict_unknown_field(cls):
    with pytest.raises(ValueError, match="not_a_field") as info:
        cls.from_dict({"vocab_size": 16, "not_a_field": 1, "also_unknown": 2})
    assert "also_unknown" in str(info.value)


def test_vqvae_wrong_image_size(tiny_vae):
    model = abstract_model(VQVAE, tiny_vae())  # the shape check comes before any computation
    with pytest.raises(ValueError, match=r"\(B, 8, 8, 3\)") as info:
        model.encode_latent(jnp.zeros((1, 16, 16, 3)))
    assert "(1, 16, 16, 3)" in str(info.value)


def test_quantizer_last_scale_must_be_the_latent(tiny_vae):
    model = abstract_model(VQVAE, tiny_vae())
    f = jnp.zeros((1, 4, 4, 8))
    with pytest.raises(ValueError) as info:
        model.quantize.encode(f, patch_nums=(1, 2, 3))
    assert "(3, 3)" in str(info.value) and "(4, 4)" in str(info.value)


def test_var_first_scale_larger_than_one(tiny_var):
    """With patch_nums[0] > 1 the official model starts with pn0² start tokens (pos_start (1, pn0², C))."""
    cfg = tiny_var(patch_nums=(2, 3))
    sd = random_official_weights(cfg, seed=0)
    assert sd["pos_start"].shape == (1, 4, cfg.embed_dim)
    model = _model(cfg, sd)
    label = np.array([1, 3])
    x = np.random.default_rng(0).standard_normal((2, 13 - 4, cfg.Cvae)).astype(np.float32)
    logits = model(jnp.asarray(label), jnp.asarray(x))
    np.testing.assert_allclose(logits, reference_var_logits(sd, cfg, label, x), atol=1e-4)


# -- configuration files ------------------------------------------------------------------------------------
def test_load_config_override():
    config = load_config("var_d16", ["--config.var.depth=2"])
    assert config.var.depth == 2
    assert load_config("var_d16").var.depth == 16  # the file itself is unchanged


def test_load_config_unknown_key():
    with pytest.raises(KeyError, match="no_such_key"):
        load_config("var_d16", ["--config.var.no_such_key=1"])


def test_load_config_unknown_name():
    with pytest.raises(FileNotFoundError, match="var_d99") as info:
        load_config("var_d99")
    for name in ("var_d16", "var_d36s_512", "vqvae_f16"):
        assert name in str(info.value)
