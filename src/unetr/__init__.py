"""unetr: UNETR (Hatamizadeh et al., WACV 2022) for 3D medical image segmentation."""

__version__ = "0.1.0"
