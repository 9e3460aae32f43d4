"""VAE-GAN clustering of particle images: a shift- and rotation-invariant encoder and critic, trained adversarially."""
