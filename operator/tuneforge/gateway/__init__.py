"""The OpenAI-compatible gateway: the OpenAI REST API over tuneforge's resources and store."""
