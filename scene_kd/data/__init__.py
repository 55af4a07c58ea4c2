"""Data for pretraining and finetuning. `scenes` is the one reader of processed scene directories
(manifests, splits, subset files, arrays, input features); `pretrain_dataset`, `seg_dataset` and
`det_dataset` are sibling datasets on top of it. Nothing is imported here, so importing a
submodule loads only what it needs."""
