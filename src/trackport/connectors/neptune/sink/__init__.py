"""`neptune2://`, `neptune3://` as destinations: sink.py writes runs through client2.py
(`neptune` 1.x) or client3.py (`neptune-scale`)."""
