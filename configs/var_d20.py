"""VAR-d20 at 256 px (`var_d20.pth`), with the released tokenizer, and its README training recipe:
batch 768, 250 epochs, tblr 1e-4 (peak lr 3e-4), init_adaln_gamma 1e-3, end lr 0.1× the peak."""
from var_jax.config import released_recipe, released_var


def get_config():
    return released_recipe(released_var(depth=20, init_adaln_gamma=1e-3), batch_size=768, epochs=250, tblr=1e-4,
                           end_lr_ratio=0.1)
