"""Blocks of real architectures, one family per module, each an ordinary ``nn.Module``.

Write ``modelfactory.modules.<module>.<Block>`` as a ``_target_`` (a checkpoint stores
that path, so these never move)::

    attention      MultiHeadAttention: separate or fused q/k/v, causal, grouped-query
                   (n_kv_head), padding masks, dropout, on scaled_dot_product_attention
    position       RotaryEmbedding (rope_theta)
    feed_forward   GatedMLP: SwiGLU, GeGLU
    embeddings     TokenEmbedding (token + position + segment), PatchEmbedding (ViT)
    shapes         Transpose, SelectToken, MeanPool
    resnet         BasicBlock

Like torchtune's modules, a block receives its built submodules (projections, position
embeddings, activations) where a user may swap them, and the config holds the numbers.
Submodules are named as the reference family names them (``q_proj``, ``gate_proj``), so
that a conversion file stays short. ``docs/zoo.md`` documents them with the zoo.

This package imports none of them: ``import modelfactory.modules.attention``.
"""
