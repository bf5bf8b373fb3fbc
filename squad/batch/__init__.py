"""Batch correction: ``squad batch`` as a streaming Ray Data pipeline, and the file mode of
``squad correct --input``."""
