"""Small benchmark folders in each benchmark's real released file format, with generated images."""
