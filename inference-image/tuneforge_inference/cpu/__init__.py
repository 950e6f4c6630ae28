"""tuneforge's CPU engine: transformers + peft behind vLLM's OpenAI-compatible API."""
