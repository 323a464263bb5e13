"""The model code: the U-Net (``unet``), the training losses (``feature_loss``) and the
degradations that make training pairs (``crappify``)."""
