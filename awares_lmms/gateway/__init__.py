"""``awares-serve``: an OpenAI-compatible gateway that runs the AwaRes two-turn protocol server-side.

Any OpenAI client sends one image and a question to ``/v1/chat/completions``; the gateway sends the
low-resolution view, reads the model's crop request, cuts the crops from the full image and asks turn 2
on the upstream's prefix cache (or on the in-process hf engine's KV cache), and replies with a standard
chat completion plus an ``awares`` object carrying the accounting. docs/serving.md is the guide.

- ``chat_request``: the OpenAI request body read into a protocol request, every refusal an ``APIError``;
- ``chat_reply``: completions, stream chunks and the ``awares`` extension in the OpenAI schema;
- ``fetch``: an allow-listed image URL, bounded in size and time;
- ``metrics``: the Prometheus counters and histograms behind ``/metrics``;
- ``app``: the FastAPI application (admission, deadline, auth, logging);
- ``awares_serve``: the ``awares-serve`` command.
"""
