"""Interop: our models in other tools' formats, and theirs in ours.

    hf          to and from transformers' GPT2LMHeadModel; generate() settings for HF models
    hf_folders  Hugging Face model folders on disk and the Hub: load (checked first) and save (whole or nothing)
    gguf        one GGUF file for llama.cpp's gpt2 architecture (llama.cpp, Ollama, LM Studio)
    llama_cpp   llama.cpp itself, through llama-cpp-python: the peer of the tests and bench.py
"""
