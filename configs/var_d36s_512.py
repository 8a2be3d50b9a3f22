"""VAR-d36-s at 512 px (`var_d36.pth`): shared AdaLN, the 512 patch schedule, the released tokenizer,
and its README training recipe: batch 768, 350 epochs, tblr 8e-5 (peak lr 2.4e-4),
init_adaln_gamma 5e-6, end lr 0.01× the peak, weight decay rising from 0.05 to 0.08."""
from var_jax.config import released_recipe, released_var


def get_config():
    return released_recipe(released_var(depth=36, init_adaln_gamma=5e-6, img_size=512, shared_aln=True),
                           batch_size=768, epochs=350, tblr=8e-5, end_lr_ratio=0.01, wd_end=0.08)
