"""The released multi-scale tokenizer (`vae_ch160v4096z32.pth`) at 256 px."""
import ml_collections

from var_jax.config import vqvae_f16


def get_config():
    return ml_collections.ConfigDict({"img_size": 256, "vae": vqvae_f16(256).to_dict()})
