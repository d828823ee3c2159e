"""BAGEL's image-generation path in plain torch: the Qwen2 mixture-of-transformers LLM, the latent
connectors and the FLUX VAE. Module and parameter names follow the official ``Bagel`` class, so the
published ``ema.safetensors`` loads unchanged."""
