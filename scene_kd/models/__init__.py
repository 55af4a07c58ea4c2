"""Students (sparse U-Nets) and, later, teachers and heads."""

from scene_kd.models.students import STUDENTS, build_student
from scene_kd.models.unet import SparseUNet

__all__ = ["STUDENTS", "SparseUNet", "build_student"]
