"""tuneforge: a Kubernetes-native fine-tuning, batch-inference and serving platform."""

__version__ = "0.1.0"
