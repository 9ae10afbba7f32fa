"""MedMAE method code: data preparation and transforms, the masked-autoencoder ViT and its loss, downstream heads."""
