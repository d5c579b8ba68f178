"""Layer 2, networks: the backbone registry and its public building blocks, the UNet decoder, the
temporal UNet, shared TF reductions. Imports core and io."""
