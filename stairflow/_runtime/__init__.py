"""The Trio runtime: executes the sans-I/O core with tasks, waits and cancel scopes."""
