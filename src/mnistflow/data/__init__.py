"""The data: which datasets exist and their shapes, getting their raw files, and preprocessing
them into the uint8 splits and test-set variants every later stage reads."""
