"""The OpenAI-compatible gateway: auth, validation, routing to engine deployments by handle."""
