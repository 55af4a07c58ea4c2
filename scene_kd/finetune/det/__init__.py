"""3D object-detection finetuning (docs/detection.md): `model` (the student U-Net with an FCAF3D-style
head, and its builders), `assign` (which voxels learn which box), `losses`, `postprocess` (decoding
and NMS), `schema` (the config) and `run` (`run_finetune_det`, `evaluate_checkpoint`). Box geometry
is `scene_kd.box_geometry`; the evaluation protocol is `scene_kd.eval.detection`."""
