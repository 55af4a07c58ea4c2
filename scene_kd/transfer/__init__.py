"""The transfer experiment: a 2D teacher trained on the frames' 2D labels, a student pretrained from
it on unlabelled scans, and finetunes with limited 3D labels beside the same finetunes from scratch
(`benchmarks/transfer_synthetic.py`, `tools/demo.py`)."""
