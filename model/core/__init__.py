"""What every part of the model shares: the network and its backbones, checkpoints, image loading and transforms,
the device and core count, atomic file writes. Imports nothing from the other sub-packages."""
