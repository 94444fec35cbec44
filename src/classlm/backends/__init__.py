"""Where class logits come from when the model runs elsewhere: :mod:`classlm.backends.openai` (any
OpenAI-compatible server that returns logprobs: vLLM, llama.cpp's server, hosted APIs)."""
