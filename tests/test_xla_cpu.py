"""Convolutions on XLA's own CPU kernels, products and reductions on YNNPACK: the flag reaches the
compiled program, and a user's own setting or the switch is left alone."""
import os
import subprocess
import sys

from var_jax import xla_cpu

# Compiles a convolution, a product and a column sum after asking for the flag, then prints which of
# the three the compiled CPU program hands to YNNPACK (an ``ynn_fusion`` wrapping the op).
_PROGRAM = """
from var_jax import xla_cpu
xla_cpu.prefer_eigen_convolutions()
import jax, jax.numpy as jnp
f = jax.jit(lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                                      dimension_numbers=("NHWC", "HWIO", "NHWC")) @ w[0, 0])
text = f.lower(jnp.ones((1, 16, 16, 32)), jnp.ones((3, 3, 32, 32))).compile().as_text()
text += jax.jit(lambda x: x.sum(0)).lower(jnp.ones((256, 32))).compile().as_text()
ynn = [line for line in text.splitlines() if "%ynn_fusion" in line and "fusion(" in line]
print(*(any(op in line for line in ynn) for op in ("conv_general_dilated", "dot_general", "reduce_sum")))
"""


def _in_ynnpack(env_changes: dict) -> tuple[str, str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", xla_cpu.SWITCH)}
    env.update(env_changes, JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", _PROGRAM], env=env, capture_output=True, text=True, check=True,
                         timeout=300)
    return tuple(out.stdout.split())


def test_convolutions_leave_ynnpack_and_products_and_reductions_stay():
    if xla_cpu.jaxlib_release() not in xla_cpu.MEASURED_JAXLIB:  # another jaxlib: left as it is
        assert not xla_cpu.wanted()
        return
    assert _in_ynnpack({xla_cpu.SWITCH: "0"}) == ("True", "True", "True")  # jaxlib's default: all three
    assert _in_ynnpack({}) == ("False", "True", "True")


def test_a_users_setting_or_the_switch_is_kept(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", f"--xla_cpu_use_thunk_runtime=true {xla_cpu.FLAG}=")
    xla_cpu.prefer_eigen_convolutions()
    assert os.environ["XLA_FLAGS"] == f"--xla_cpu_use_thunk_runtime=true {xla_cpu.FLAG}="
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_use_thunk_runtime=true")
    monkeypatch.setenv(xla_cpu.SWITCH, "0")
    xla_cpu.prefer_eigen_convolutions()
    assert os.environ["XLA_FLAGS"] == "--xla_cpu_use_thunk_runtime=true"
    monkeypatch.delenv(xla_cpu.SWITCH)
    if xla_cpu.wanted():
        xla_cpu.prefer_eigen_convolutions()
        assert os.environ["XLA_FLAGS"] == f"--xla_cpu_use_thunk_runtime=true {xla_cpu.PRODUCTS_AND_REDUCTIONS}"
