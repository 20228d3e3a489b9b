"""What the TinyStories scripts share: tokenizer, checkpoints, data, training, sampling, evaluation, HF interop."""
