"""Files in and out: safe readers, model files, the built-in models, datasets, zarr, exports, pixel sizes."""
