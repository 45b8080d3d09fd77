"""ocrwatchd: a watch-folder OCR daemon (Mindee API v2 or embedded Tesseract)."""

__version__ = "0.1.0"
