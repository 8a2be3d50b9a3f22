"""VAR-d20 at 256 px (`var_d20.pth`), with the released tokenizer."""
from var_jax.config import released_var


def get_config():
    return released_var(depth=20, init_adaln_gamma=1e-3)
