"""`neptune:PATH`: Neptune offline data read from disk (source.py; reader2.py for the 2.x
client's JSON queues, reader3.py for the 3.x client's sqlite files)."""
