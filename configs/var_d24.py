"""VAR-d24 at 256 px (`var_d24.pth`), with the released tokenizer, and its README training recipe:
batch 768, 350 epochs, tblr 8e-5 (peak lr 2.4e-4), init_adaln_gamma 1e-4, end lr 0.01× the peak."""
from var_jax.config import released_recipe, released_var


def get_config():
    return released_recipe(released_var(depth=24, init_adaln_gamma=1e-4), batch_size=768, epochs=350, tblr=8e-5,
                           end_lr_ratio=0.01)
