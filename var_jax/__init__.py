"""var-jax: Visual AutoRegressive modeling (next-scale prediction) in JAX and Flax NNX."""
from var_jax.models.var import VAR, VARConfig
from var_jax.models.vqvae import VQVAE, VQVAEConfig

__version__ = "0.1.0"
__all__ = ["VAR", "VARConfig", "VQVAE", "VQVAEConfig", "from_pretrained", "load_pretrained", "save_pretrained"]


def __getattr__(name):
    # Checkpoint I/O pulls in orbax (and the Hub client); import it only when asked for.
    if name in ("load_pretrained", "save_pretrained"):
        from var_jax import checkpoint
        return getattr(checkpoint, name)
    if name == "from_pretrained":
        from var_jax import hub
        return hub.from_pretrained
    raise AttributeError(f"module 'var_jax' has no attribute {name!r}")
