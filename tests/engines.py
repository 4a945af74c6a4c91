"""Settings shared by the tests that start generation engines on the tiny test models."""

# vLLM on CPU wants block_size 32 and eager mode; 1 GiB of KV cache is plenty for 512 tokens.
TINY_ENGINE = dict(device="cpu", seed=0, max_model_len=512, max_num_seqs=64, cpu_kvcache_gib=1, enforce_eager=True, block_size=32)
