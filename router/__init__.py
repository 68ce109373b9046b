"""Router: OpenAI-compatible endpoint with confidence routing and live student switching."""
