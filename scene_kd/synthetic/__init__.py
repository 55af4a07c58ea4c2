"""Synthetic ScanNet: procedural rooms with ground truth, rendered and written in every raw ScanNet
format by the writers of `scene_kd.scannet` (which never imports this package).

Modules, in the order the data flows: `geometry` (primitives meshed into triangles), `catalog` (raw
categories and materials), `furniture` (class-specific shapes), `room` (`generate_room`: a furnished
room with labels, instances, segments and boxes), `render` (camera walk and RGB-D frames) and `scans`
(`write_synthetic_scannet`: whole scan sets on disk). See docs/synthetic_data.md.
"""

from scene_kd.synthetic.room import SyntheticRoom, generate_room
from scene_kd.synthetic.scans import scene_room, write_synthetic_scannet

__all__ = ["SyntheticRoom", "generate_room", "scene_room", "write_synthetic_scannet"]
