"""Interop: our models in other tools' formats, and theirs in ours.

    hf          to and from transformers' GPT2LMHeadModel; model folders; generate() settings for HF models
    gguf        one GGUF file for llama.cpp's gpt2 architecture (llama.cpp, Ollama, LM Studio)
    llama_cpp   llama.cpp itself, through llama-cpp-python: the peer of the tests and bench.py
"""
