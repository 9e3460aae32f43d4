"""CryoGAN and Multi-CryoGAN: likelihood-free reconstruction with the physics simulator as the WGAN generator."""
