"""The HTTP server of `stairflow serve`: graphs as OpenAI-compatible chat models."""
