"""Entry point of the tuneforge inference image."""
