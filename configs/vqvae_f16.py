"""The released multi-scale tokenizer (`vae_ch160v4096z32.pth`) at 256 px, with a VQGAN-style
training recipe (L1 + VQ + LPIPS + a PatchGAN switched on late) on ImageNet."""
from var_jax.config import tokenizer_training, vqvae_f16


def get_config():
    config = tokenizer_training()
    config.img_size = 256
    config.vae = vqvae_f16(256).to_dict()
    config.data.update(name="imagenet", num_threads=16)
    config.train.update(steps=500_000, batch_size=256, compute_dtype="bfloat16", lr=4e-4, lr_schedule="lin0",
                        warmup_steps=5_000, b1=0.5, b2=0.9, grad_clip=2.0, log_every=100, ckpt_every=5_000,
                        keep_checkpoints=3)
    config.loss.update(l1=1.0, perceptual_weight=1.0, disc_weight=0.75, disc_start=100_000, disc_lr=4e-4)
    config.codebook.update(reseed_every=1_000, reseed_until=100_000)
    config.eval.update(every=5_000, num_images=1_024, batch_size=64)
    return config
