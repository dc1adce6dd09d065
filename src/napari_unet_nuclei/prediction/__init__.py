"""Prediction: tiled and streamed inference, nuclei as objects, sizes, volumes, measurements, uncertainty, annotation ranking."""
