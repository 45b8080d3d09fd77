"""OCR engines: `mindee` (the Mindee API v2 client) and `local` (embedded Tesseract)."""
