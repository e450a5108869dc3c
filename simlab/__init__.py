"""simlab: predict whether two images show the same scene, and explore why."""

__version__ = "0.1.0"
