"""Backends: how llm nodes talk to models. One protocol (`Backend`), several peers."""
