"""Checkpoints for other codebases: Pointcept's SpUNet-v1m1 (spconv 2.x layout) and MinkowskiEngine.

- `spconv_layout`: kernels between MinkowskiEngine's layout (scene_kd's) and spconv 2.x's;
- `pointcept`: SpUNet-v1m1 state_dicts between scene_kd and Pointcept, both ways;
- `minkowski_layout`: the MinkowskiEngine checkpoint of a MinkUNet / Res16UNet student;
- `export`: `export_checkpoint`, behind tools/export_checkpoint.py.
Importing a Pointcept checkpoint (`model.init`) goes through `scene_kd.finetune.init_weights`.
Nothing is imported here, so that `init_weights` can import `pointcept` without a cycle.
"""
