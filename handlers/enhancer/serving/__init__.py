"""The doors to the engine: the TorchServe and Triton adapters."""
