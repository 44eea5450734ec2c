"""Using a trained model: search, classification and export helpers built on the inference methods of every ALBEF model."""
