"""VAR-d24 at 256 px (`var_d24.pth`), with the released tokenizer."""
from var_jax.config import released_var


def get_config():
    return released_var(depth=24, init_adaln_gamma=1e-4)
