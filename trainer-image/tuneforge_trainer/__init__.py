"""Entry point of the tuneforge trainer image."""
