"""The three kinds of Serve deployment: Ingress (HTTP API), AudioEncoder (wav2vec2), Sampler (GPU stage)."""
