"""`neptune2://`, `neptune3://` as sources: the Neptune APIs read through the clients
(source2.py / source3.py open them; reader2.py / reader3.py hold the SDK calls)."""
