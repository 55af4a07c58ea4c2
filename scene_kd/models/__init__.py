"""The networks. Students (sparse U-Nets) by name from here; the frozen 2D teachers by name from
`scene_kd.models.teachers` (`build_teacher`, `TEACHERS`); heads in `heads`, `concept`."""

from scene_kd.models.students import STUDENTS, build_student
from scene_kd.models.unet import SparseUNet

__all__ = ["STUDENTS", "SparseUNet", "build_student"]
