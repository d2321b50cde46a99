"""The image store: admission, decode gate, content-hash cache tiers (memory, Redis) and the batched encoder."""
