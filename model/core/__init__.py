"""What every part of the model shares: the network and its backbones, checkpoints, image loading and transforms."""
