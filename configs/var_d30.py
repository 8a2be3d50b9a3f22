"""VAR-d30 at 256 px (`var_d30.pth`), with the released tokenizer."""
from var_jax.config import released_var


def get_config():
    return released_var(depth=30, init_adaln_gamma=1e-5)
