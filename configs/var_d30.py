"""VAR-d30 at 256 px (`var_d30.pth`), with the released tokenizer, and its README training recipe:
batch 1024, 350 epochs, tblr 8e-5 (peak lr 3.2e-4), init_adaln_gamma 1e-5, end lr 0.01× the peak,
weight decay rising from 0.05 to 0.08."""
from var_jax.config import released_recipe, released_var


def get_config():
    return released_recipe(released_var(depth=30, init_adaln_gamma=1e-5), batch_size=1024, epochs=350, tblr=8e-5,
                           end_lr_ratio=0.01, wd_end=0.08)
