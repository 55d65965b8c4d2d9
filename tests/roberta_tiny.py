"""The RoBERTa runner's tiny setting shared by its tests: 300 Bible verses, a 1-layer 32-wide encoder."""

TINY = """\
name: tiny
corpus: {source: bible, max_train_lines: 300, max_eval_lines: 40}
tokenizer: {vocab_size: 200}
model:
  arch: roberta_base
  args: {encoder_layers: 1, encoder_embed_dim: 32, encoder_ffn_embed_dim: 64, encoder_attention_heads: 2,
         max_positions: 32}
train: {epochs: 2, batch_size: 16, max_sentences: 16, tokens_per_sample: 32, warmup_updates: 5,
        total_num_update: 100, sample_break_mode: none, threads: 1}
lawa: {k: 2}
"""
