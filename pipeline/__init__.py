"""The inception-parity pipeline: options, graph and command-line entry points."""
