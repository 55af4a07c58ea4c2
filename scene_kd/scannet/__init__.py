"""ScanNet's raw formats (`.sens`, meshes, annotations, label tsv, splits), read and written, and
preprocessing into processed scenes. Nothing here imports `scene_kd.synthetic`, which builds on these
writers to make synthetic scans."""
