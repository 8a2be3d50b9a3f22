"""VAR-d16 at 256 px (`var_d16.pth`), with the released tokenizer, and its README training recipe:
batch 768, 200 epochs, tblr 1e-4 (peak lr 3e-4), init_adaln_gamma 1e-3, end lr 0.1× the peak."""
from var_jax.config import released_recipe, released_var


def get_config():
    return released_recipe(released_var(depth=16, init_adaln_gamma=1e-3), batch_size=768, epochs=200, tblr=1e-4,
                           end_lr_ratio=0.1)
