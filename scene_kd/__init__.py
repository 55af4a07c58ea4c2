"""scene_kd: 3D scene pretraining by distilling 2D image networks into sparse-convolution U-Nets."""

__version__ = "0.1.0"
