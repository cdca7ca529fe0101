"""Managed model servers: start a config's `launch` command, wait until it answers, stop it at
the end; and the llama-cpp-python wrapper of the built-in local model."""
