"""Inference: BeingHPolicy (prefix KV cache + expert-only flow steps), websocket server and client."""
