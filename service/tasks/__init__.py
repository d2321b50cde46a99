"""Tasks: plain blocking functions over a cached image entry (classify, text-segment, prompt-segment, refine)."""
