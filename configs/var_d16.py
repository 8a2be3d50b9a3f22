"""VAR-d16 at 256 px (`var_d16.pth`), with the released tokenizer."""
from var_jax.config import released_var


def get_config():
    return released_var(depth=16, init_adaln_gamma=1e-3)
