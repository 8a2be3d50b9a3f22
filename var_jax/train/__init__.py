"""Training: the tokenizer trainer and the pieces every trainer shares.

Shared: ``optim`` (AdamW, schedules, clipping), ``checkpointing`` (Orbax, resumable),
``metrics`` (JSON lines + TensorBoard).  Tokenizer-specific: ``losses``, ``lpips``,
``discriminator``, ``codebook`` (usage statistics, dead-code re-seeding), ``tokenizer_eval`` and
``tokenizer_trainer``.
"""
