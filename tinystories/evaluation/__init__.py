"""Evaluation: what evaluate.py measures.

    metrics       the exact loss of a model on a token stream; offline measures of generated text
    subjects      the models measured: our checkpoints or Hugging Face causal LMs, scored and sampled alike
    beginnings    story beginnings for the judge's completions
    judge         the paper's LLM-graded completions: asking the judge, with retries and concurrency
    judge_protocol  the grading prompt, and a reply's bytes checked into grades (or the reason it is unusable)
    judge_cache   the cache of gradings, each entry checked as strictly as a reply
    judge_report  the means with their confidence intervals, and the per-grading records
"""
