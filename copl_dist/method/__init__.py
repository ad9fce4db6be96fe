"""The paper's math, pure (numpy / torch in and out): HAS, IOCNet, losses, augmentation, localization, projection, metrics, the training engine. No Ray, no MLflow."""
