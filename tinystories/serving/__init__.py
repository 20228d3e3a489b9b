"""Serving: serve.py's OpenAI-compatible server over the engine.

    app.create_app / serve        FastAPI routes that only translate between HTTP and the service
    service                       ServerConfig; admission, draining and the sequences in flight; choices' text
    openai_protocol               checking a completions request; response, stream-chunk and error objects
    server_process                serve.py in a child process, for the tests and bench.py
    playground/                   the page served at /
"""
