"""A scaling-law sweep on the embedded digits (`var-jax scaling-sweep`): VARs of several depths,
each trained briefly on the same token maps, then the power-law fits of their held-out test loss
and token error against parameters and training compute (the paper's Figures 5 and 6, in small).

    var-jax scaling-sweep --config configs/scaling_digits.py --workdir outputs/scaling_digits

The training recipe is the demo's (configs/demo_digits.py) with shorter runs; ``sweep`` says what
varies.  Each model is sized by the paper's rule scaled down: width = ``width_per_depth``·depth
(the paper: 64·d) and heads of ``head_dim`` channels (the paper: d heads of 64).  Every model
trains ``sweep.steps`` steps of ``train.batch_size`` images, so the larger ones also cost more
compute, as in the paper's sweep.  The tokenizer is ``tokenizer`` when it is set, otherwise one
trained from ``sweep.tokenizer_config`` in WORKDIR/tokenizer_run; the ``vae`` section, ``img_size``
and the VAR's vocab_size, Cvae and patch_nums are taken from the tokenizer used.  About 13 minutes
on 2 CPU cores: 2.5 for the tokenizer, 1 for the token maps, 7.5 for the four VARs.
"""
from var_jax.config import small_var_on_tokenizer

TOKENIZER_CONFIG = "vqvae_digits"


def get_config():
    # depth, embed_dim and num_heads are set per model from the sweep section
    config = small_var_on_tokenizer(TOKENIZER_CONFIG, num_classes=10, depth=1, embed_dim=32, num_heads=1)
    # train.steps stays 0: the steps per model are sweep.steps.  The warm-up is the official default,
    # 2% of each run, so that every model follows the same schedule shape.
    config.train.update(batch_size=32, compute_dtype="float32", tblr=4e-3, warmup_epochs=-1.0, end_lr_ratio=0.1,
                        log_every=50, ckpt_every=1000, keep_checkpoints=1)
    # Validation once, after training, on all 500 held-out digits (none are in the token maps).
    config.eval.update(every=-1, sample_every=-1, num_images=500, batch_size=100, sample_classes=list(range(10)),
                       sample_per_class=8, sample_cfg=3.0, sample_top_k=0, sample_top_p=0.0)
    config.sweep = {
        "depths": (1, 2, 3, 4),
        "width_per_depth": 32,       # embed_dim = width_per_depth · depth
        "head_dim": 32,              # num_heads = embed_dim / head_dim (here: depth heads)
        "steps": 200,                # training steps of every model
        "crops": 2,                  # random crops tokenized per training image (written once, shared)
        "tokenizer_config": TOKENIZER_CONFIG,  # trained into WORKDIR/tokenizer_run when `tokenizer` is ""
        "tokenizer_overrides": (),   # key=value overrides of that config, e.g. ("train.steps=100",)
    }
    return config
