"""The sans-I/O scheduling core: pure state machines, no trio, no I/O."""
