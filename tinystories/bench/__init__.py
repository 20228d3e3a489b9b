"""bench.py: throughput side by side with peers, interleaved in one run.

    harness       BenchConfig, resolved settings, and the interleaved timing every section uses
    training, evaluation, generation, data, cpu_inference, serving
                  one module per section
    run           the sections asked for into one report, and the report as a table
"""
