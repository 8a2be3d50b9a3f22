"""VAR-d36-s at 512 px (`var_d36.pth`): shared AdaLN, the 512 patch schedule, the released tokenizer."""
from var_jax.config import released_var


def get_config():
    return released_var(depth=36, init_adaln_gamma=5e-6, img_size=512, shared_aln=True)
