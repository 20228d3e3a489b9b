"""The library behind the scripts, in layers; each layer imports only from the layers below it
(tests/test_import_graph.py enforces the order, docs/architecture.md explains it):

    model/          the network (Config, presets, Model, KV caches); imports nothing of the library
    shared helpers  errors, cli (flags from dataclasses), checks, files (atomic writes), paths, hardware (device,
                    training dtype), memory (does it fit), tokenizer, checkpoint, quickstart
    data/           stories -> token files -> training batches
    training/       the loop, its settings, what a restart carries, torchrun
    generation/     sampling, the engine (the one generation path), beam search, decoding weight formats, CPU kernels
    serving/        the OpenAI-compatible HTTP server and its playground page
    interop/        Hugging Face, GGUF, llama.cpp
    evaluation/     exact metrics, text metrics, the models measured, the LLM judge
    bench/          bench.py's harness and one module per section
"""
