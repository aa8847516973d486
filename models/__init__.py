"""Models: preprocessing, the STM simulator, UNet segmentation and few-shot classification."""
