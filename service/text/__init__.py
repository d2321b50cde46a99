"""The text embedder: 80-template ensembles, CLIP tokenizer, text cache, batching, caps and deadlines."""
