"""Mapping scenes with a trained run: class maps (``--config-name=predict``) and encoder embeddings
(``--config-name=embed``) of GeoTIFFs of any size, streamed window by window."""
