"""Networks and their numerics: the U-Net, the model wrapper, normalisation, devices and precision."""
