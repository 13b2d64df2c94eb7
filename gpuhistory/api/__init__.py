"""Flask app: the JSON API and health endpoints."""
