"""Contrastive training: the options, the losses, the epoch loop and the ``imgsim train`` command."""
