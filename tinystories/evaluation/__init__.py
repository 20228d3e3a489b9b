"""Evaluation: what evaluate.py measures.

    metrics       the exact loss of a model on a token stream; offline measures of generated text
    subjects      the models measured: our checkpoints or Hugging Face causal LMs, scored and sampled alike
    beginnings    story beginnings for the judge's completions
    judge         the paper's LLM-graded completions: grades, the cache, the report
"""
