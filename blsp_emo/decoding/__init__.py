"""Turning the LLM's logits into reply tokens: sampling (`generation`), the lean per-token step
(`decode_step`), several replies decoded as one batch (`batching`) and the KV cache kept across
turns (`prefix_cache`)."""
