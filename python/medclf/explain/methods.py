"""The heat-map methods medclf offers, by name (no torch here: `medclf --help` lists them)."""

CAM_METHODS = ("gradcam", "gradcam++", "scorecam", "eigencam", "layercam")  # pytorch-grad-cam
GRADIENT_METHODS = ("ig", "saliency", "occlusion")  # Captum
METHODS = CAM_METHODS + GRADIENT_METHODS
