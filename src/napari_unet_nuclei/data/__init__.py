"""Sample and public data: the synthetic sample, the Kromp download, the public collections and splits."""
