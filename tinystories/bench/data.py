"""The data section: megabytes of story text per second, our tokenize_stories against bare tiktoken."""
from __future__ import annotations

import itertools

import numpy as np
import torch

from tinystories.bench.harness import OURS_DATA, BenchConfig, Contender, Figure, Settings, compared, interleave
from tinystories.tokenizer import EOT_ID, get_tokenizer


def benchmark_stories(config: BenchConfig) -> list[str]:
    if config.data_path is None:
        from tinystories.data.synthetic import synthetic_stories

        return list(synthetic_stories("train", config.data_stories))
    from tinystories.data import read_stories

    return list(read_stories(config.data_path))


def data_figures(config: BenchConfig, settings: Settings, rounds: int) -> list[Figure]:
    """Megabytes of story text per second: our tokenize_stories against bare tiktoken, on the same threads."""
    from tinystories.data.pipeline import tokenize_stories

    stories = benchmark_stories(config)
    megabytes = sum(len(story.encode("utf-8")) for story in stories) / 1e6
    encoding = get_tokenizer()
    workers = settings.num_workers
    ours_ids = np.concatenate(list(tokenize_stories(stories, workers)))
    bare_ids = [ids + [EOT_ID] for ids in encoding.encode_ordinary_batch(stories, num_threads=workers)]
    if not np.array_equal(ours_ids, np.fromiter(itertools.chain.from_iterable(bare_ids), dtype=np.int64)):
        raise RuntimeError("tokenize_stories and tiktoken disagree on the benchmark stories")

    def ours() -> None:
        for _ in tokenize_stories(stories, workers):
            pass

    def bare() -> None:
        encoding.encode_ordinary_batch(stories, num_threads=workers)

    bare_name = "bare tiktoken encode_ordinary_batch"
    rates, _ = interleave([Contender(OURS_DATA, ours, megabytes), Contender(bare_name, bare, megabytes)], rounds,
                          torch.device("cpu"), "data")
    return compared("data", "MB/s", rates, bare_name, "tiktoken")
