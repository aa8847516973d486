"""Few-shot defect classification: backbones, methods, episodic training and evaluation."""
