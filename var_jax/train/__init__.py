"""Training: the one run loop (``loop``) and the two trainers that plug into it.

Shared: ``loop`` (resume, hooks, checkpoints, SIGTERM, the non-finite-step guard, export),
``optim`` (AdamW, schedules, clipping), ``checkpointing`` (Orbax, resumable), ``metrics`` (JSON
lines + TensorBoard), ``preemption``.  VAR: ``var_trainer``, ``var_step``, ``var_schedule``.
Tokenizer: ``tokenizer_trainer``, ``tokenizer_eval``, ``lpips``, ``discriminator``, ``codebook``.
The losses themselves are :mod:`var_jax.objectives`.
"""
