"""The demo on the embedded emoji (`python -m var_jax.demo --config configs/demo_emoji.py`): the
digits demo's VAR on the tokens of configs/vqvae_emoji.py, nine Unicode categories as classes.
The categories are semantic (a frog and a tree are both 'Animals & Nature') and unbalanced, so the
judge's agreement is reported without a goal."""
from var_jax.config import load_config

TOKENIZER_CONFIG = "vqvae_emoji"


def get_config():
    config = load_config("demo_digits")
    tokenizer = load_config(TOKENIZER_CONFIG)
    config.img_size = tokenizer.img_size
    config.vae = tokenizer.vae.to_dict()
    config.var.update(vocab_size=tokenizer.vae.vocab_size, Cvae=tokenizer.vae.z_channels, num_classes=9,
                      patch_nums=tuple(tokenizer.vae.v_patch_nums))
    config.data.name = tokenizer.data.name
    config.eval.sample_classes = list(range(9))
    config.demo.update(tokenizer_config=TOKENIZER_CONFIG, goal=0.0)  # 0: no goal, the agreement is only reported
    return config
