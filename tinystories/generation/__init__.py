"""Generation: from a checkpoint's model to tokens and text.

    engine.Engine                 continuous batching; the one path every generating command decodes through
    requests                      GenerationRequest in; TokenEvents and a SequenceResult out; per-sequence seeds
    sampling                      SamplingConfig and the token pickers (temperature, top-k, top-p)
    window                        the sliding-window rule past block_size, shared by the engine and beam search
    beams                         beam search (the paper's evaluation decoding)
    text_stream.Utf8Stream        streamed text that never splits a character
    decoders.decoding_model       the model a decoder runs, in a decoding weight format (float32, float16, int8)
    weight_formats, cpu_kernels   those formats' linear layers, the one-token step decoder, and its C++ kernels
"""
