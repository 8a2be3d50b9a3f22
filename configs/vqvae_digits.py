"""A tokenizer for the embedded digits: 32×32 images, 4× downsampling (an 8×8 latent), scales
1, 2, 3, 4, 6, 8.  Sized to train on a 2-core laptop CPU in a few minutes (held-out PSNR above
20 dB with most of the codebook in use at the last scale).

`var-jax train-tokenizer --config configs/vqvae_digits.py --workdir outputs/tok_digits` writes the
trained tokenizer to outputs/tok_digits/tokenizer/ (what the VAR demo loads).
"""
from var_jax.config import VQVAEConfig, tokenizer_training


def get_config():
    config = tokenizer_training()
    config.img_size = 32
    config.vae = VQVAEConfig(vocab_size=512, z_channels=16, ch=32, ch_mult=(1, 1, 2), num_res_blocks=1,
                             using_sa=False, v_patch_nums=(1, 2, 3, 4, 6, 8)).to_dict()
    config.data.name = "digits"
    # Small batches: on a CPU, 8 images per step reach a given PSNR in far less time than 16 (the
    # same PSNR after the same number of steps here, at ~2.5× the steps per second).
    config.train.update(steps=250, batch_size=8, lr=2e-3, b1=0.9, b2=0.99, lr_schedule="cosine", warmup_steps=20,
                        grad_clip=1.0, log_every=25, ckpt_every=125)
    # L2 next to L1 is what PSNR measures (+1 dB at 200 steps). LPIPS (VGG16) would cost several
    # times the tokenizer itself at this size on a CPU, and the adversarial loss trades PSNR for
    # sharpness: both off here.
    config.loss.update(l1=1.0, l2=1.0, perceptual_weight=0.0, disc_weight=0.0, disc_layers=2, disc_ch=32)
    # Step 0 seeds the codebook from the data; later re-seeds revive codes that fell out of use.
    config.codebook.update(reseed_every=25, reseed_until=200)
    # Held-out PSNR and codebook usage once, at the end.  Held-out LPIPS (64 images) would add loading
    # and compiling VGG16 to the run (measured on a busy machine: as long as ~150 training steps).
    config.eval.update(every=250, num_images=256, batch_size=64, lpips_images=0)
    return config
